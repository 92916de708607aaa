"""The backend interface: hf on the tiny model, and the vllm adapter's requests (stand-in engine)."""

import json
import os
import sys
import types

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from p3.backends import opened

    with opened("hf", tiny_model_dir, device="cpu", batch_size=3) as backend:
        yield backend


def test_token_logprobs_match_a_plain_forward(hf):
    texts = ["What is 1 + 1?\n1 + 1 = 2", "Hi", "Solve for x: 2x = 4.\nx = 2"]
    got = hf.token_logprobs(texts)
    for text, scores in zip(texts, got):
        ids = hf.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(hf.model(input_ids=ids).logits[0, :-1], -1)
        want = lp.gather(1, ids[0, 1:, None])[:, 0].numpy()
        assert np.isnan(scores.logprobs[0]) and np.allclose(scores.logprobs[1:], want, atol=1e-5)
        assert [text[s:e] for s, e in scores.offsets[1:]] == list(text)


def test_batched_greedy_generation_equals_one_at_a_time(hf):
    prompts = ["What is 2 + 2?\n", "Solve for x: 3x + 1 = 10.\n", "Ann has 3 pens.\n", "What is 9 * 9 + 1?\n"]
    batched = hf.generate(prompts, n=2, temperature=0.0, max_new_tokens=24)
    alone = [hf.generate([p], n=1, temperature=0.0, max_new_tokens=24)[0][0] for p in prompts]
    assert [b[0] for b in batched] == alone  # left padding does not change the answer
    assert all(b[0] == b[1] for b in batched)  # greedy n=2 is two copies


def test_sampling_is_reproducible_per_seed(hf):
    prompts = ["What is 2 + 2?\n", "What is 7 - 3?\n"]
    a = hf.generate(prompts, n=4, temperature=1.5, max_new_tokens=16, seed=3)
    b = hf.generate(prompts, n=4, temperature=1.5, max_new_tokens=16, seed=3)
    c = hf.generate(prompts, n=4, temperature=1.5, max_new_tokens=16, seed=4)
    assert a == b and a != c and all(len(x) == 4 for x in a)


def test_unknown_backend_and_missing_vllm_say_what_to_do(tiny_model_dir, monkeypatch):
    from p3.backends import get_backend

    with pytest.raises(ValueError, match="hf, vllm"):
        get_backend("tgi", tiny_model_dir)
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even if installed
    with pytest.raises(RuntimeError, match=r"pip install 'p3-kubeflow\[gpu\]'"):
        get_backend("vllm", tiny_model_dir)


# ---- vllm adapter, against a stand-in engine that records requests (vllm needs a GPU) ----

class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


def stand_in_vllm(calls):
    """A module shaped like vllm: LLM, SamplingParams, LoRARequest, recording what it gets."""
    mod = types.SimpleNamespace()

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.args = (name, int_id, path)

    class LLM:
        def __init__(self, **kw):
            calls.append(("LLM", kw))

        def generate(self, requests, params, lora_request=None, use_tqdm=True):
            calls.append(("generate", requests, params.kw, lora_request))
            outs = []
            for req in requests:
                ids = req["prompt_token_ids"]
                n = params.kw.get("n", 1)
                outs.append(types.SimpleNamespace(
                    prompt_logprobs=[None] + [{t: _Logprob(-0.5 - 0.01 * i), -1: _Logprob(-9.0)} for i, t in enumerate(ids[1:])],
                    outputs=[types.SimpleNamespace(text=f"sample{j} of {len(ids)}") for j in range(n)],
                ))
            return outs

    mod.LLM, mod.SamplingParams, mod.LoRARequest = LLM, SamplingParams, LoRARequest
    return mod


def test_vllm_requests_for_generation_and_prompt_logprobs(tiny_model_dir):
    from p3.backends.vllm import VLLMBackend

    calls = []
    b = VLLMBackend(tiny_model_dir, tensor_parallel_size=2, gpu_memory_utilization=0.5, max_len=256, seed=7,
                    vllm_module=stand_in_vllm(calls))
    assert calls[0] == ("LLM", dict(model=tiny_model_dir, tensor_parallel_size=2, gpu_memory_utilization=0.5,
                                    dtype="auto", max_model_len=256, seed=7))
    out = b.generate(["ab\n", "abc\n"], n=8, temperature=0.7, max_new_tokens=32, seed=5)
    _, requests, params, lora = calls[1]
    assert params == dict(n=8, temperature=0.7, top_p=1.0, max_tokens=32, seed=5) and lora is None
    assert requests[0]["prompt_token_ids"] == b.tokenizer("ab\n")["input_ids"]  # BOS + 3 characters
    assert out[1] == [f"sample{j} of 5" for j in range(8)]

    greedy = b.generate(["ab\n"], n=3, temperature=0.0, max_new_tokens=16)
    assert calls[2][2]["n"] == 1 and greedy == [["sample0 of 4"] * 3]

    b.generate(["q" * 300 + "END\n"], max_new_tokens=56)  # longer than the context: keep the end
    assert calls[3][1][0]["prompt_token_ids"] == b.tokenizer("q" * 300 + "END\n")["input_ids"][-200:]

    scores = b.token_logprobs(["xyz"])
    assert calls[4][2] == dict(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    assert np.isnan(scores[0].logprobs[0]) and np.allclose(scores[0].logprobs[1:], [-0.5, -0.51, -0.52])
    assert scores[0].offsets.tolist() == [[0, 0], [0, 1], [1, 2], [2, 3]]


def test_vllm_serves_an_adapter_dir_as_base_plus_lora_request(tiny_model_dir, tmp_path):
    from p3.backends.vllm import VLLMBackend

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_model_dir, "r": 24}))
    calls = []
    b = VLLMBackend(str(adapter), vllm_module=stand_in_vllm(calls))
    kw = calls[0][1]
    assert kw["model"] == tiny_model_dir and kw["enable_lora"] is True and kw["max_lora_rank"] == 32
    b.generate(["ab\n"], n=2, temperature=1.0)
    assert calls[1][3].args == ("p3-adapter", 1, str(adapter))
    b.close()
    on_adapter = tmp_path / "a2"
    on_adapter.mkdir()
    (on_adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(adapter), "r": 8}))
    with pytest.raises(ValueError, match="itself an adapter"):
        VLLMBackend(str(on_adapter), vllm_module=stand_in_vllm([]))


@pytest.mark.slow
def test_load_causal_lm_reads_adapter_dirs_and_s3(tiny_model_dir, tmp_path, s3_tmp):
    from peft import LoraConfig, get_peft_model

    from p3 import storage
    from p3.backends import load_causal_lm

    base, tok = load_causal_lm(tiny_model_dir, "cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    adapter = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter)
    assert not os.path.exists(os.path.join(adapter, "config.json"))
    ids = tok("What is 1 + 2?\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
    merged, _ = load_causal_lm(adapter, "cpu")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-5)
    storage.upload_dir(adapter, f"{s3_tmp}/adapter")
    remote, _ = load_causal_lm(f"{s3_tmp}/adapter", "cpu")
    with torch.no_grad():
        assert torch.allclose(remote(input_ids=ids).logits, want, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_causal_lm(str(tmp_path / "nothing-here"), "cpu")


def test_an_adapter_on_an_adapter_loads_as_both_applied(tiny_model_dir, tmp_path):
    """What `p3 train --no-merge` leaves when an epoch starts from the last epoch's adapter."""
    from peft import LoraConfig, get_peft_model

    from p3.backends import load_causal_lm

    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    base, tok = load_causal_lm(tiny_model_dir, "cpu")
    first = str(tmp_path / "a1")
    get_peft_model(base, LoraConfig(**lora)).save_pretrained(first)
    one, _ = load_causal_lm(first, "cpu")  # merged
    torch.manual_seed(1)
    two = get_peft_model(one, LoraConfig(**lora))
    second = str(tmp_path / "a2")
    two.save_pretrained(second)
    with open(os.path.join(second, "adapter_config.json")) as fh:
        cfg = json.load(fh)
    cfg["base_model_name_or_path"] = first  # as the trainer records it: the adapter it started from
    with open(os.path.join(second, "adapter_config.json"), "w") as fh:
        json.dump(cfg, fh)
    ids = tok("What is 1 + 2?\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = two(input_ids=ids).logits
        got, _ = load_causal_lm(second, "cpu")
        assert torch.allclose(got(input_ids=ids).logits, want, atol=1e-5)
