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
# The stand-in takes its signatures and field names from tests/fixtures/vllm_api.json, read with
# ast from the vLLM release the gpu extra and the p3-vllm image pin (tests/fixtures/extract_vllm_api.py):
# a call with a keyword, a field or a class path that release does not have fails here.

VLLM_API = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "vllm_api.json")))


def _signature(spec):
    """An inspect.Signature with the fixture's parameters: bind() accepts exactly vLLM's calls."""
    import inspect

    P = inspect.Parameter
    params = [P(name, P.POSITIONAL_OR_KEYWORD, **({} if name in spec["positional_required"] else {"default": None}))
              for name in spec["positional"]]
    params += [P(name, P.KEYWORD_ONLY, **({} if name in spec["keyword_only_required"] else {"default": None}))
               for name in spec["keyword_only"]]
    if spec["var_keyword"]:
        params.append(P("kwargs", P.VAR_KEYWORD))
    return inspect.Signature(params)


def _record(name, values):
    """An output object with only the named vLLM fields (reading any other attribute fails)."""
    assert set(values) <= set(VLLM_API[name]), (name, set(values) - set(VLLM_API[name]))
    return types.SimpleNamespace(**values)


def stand_in_vllm(calls, monkeypatch):
    """A module shaped like the pinned vllm: LLM, SamplingParams and vllm.lora.request.LoRARequest
    with that release's signatures, recording what they get."""
    mod = types.ModuleType("vllm_standin")

    class SamplingParams:
        def __init__(self, **kw):
            assert set(kw) <= set(VLLM_API["SamplingParams"]), set(kw) - set(VLLM_API["SamplingParams"])
            self.kw = kw

    class LoRARequest:  # a msgspec.Struct: positional arguments fill the fields in order
        def __init__(self, *args, **kw):
            names = VLLM_API["LoRARequest"]
            values = {**dict(zip(names, args)), **kw}
            assert len(args) <= len(names) and set(values) <= set(names) and {"lora_name", "lora_int_id"} <= set(values)
            assert values["lora_int_id"] >= 1  # vllm/lora/request.py __post_init__
            self.args = args

    class LLM:
        def __init__(self, *args, **kw):
            bound = _signature(VLLM_API["LLM.__init__"]).bind(*args, **kw)
            engine_args = bound.arguments.get("kwargs", {})  # LLM passes the rest on to EngineArgs(**kwargs)
            assert set(engine_args) <= set(VLLM_API["EngineArgs"]), set(engine_args) - set(VLLM_API["EngineArgs"])
            assert kw.get("max_lora_rank", 16) in VLLM_API["MaxLoRARanks"]
            calls.append(("LLM", kw))

        def generate(self, *args, **kw):
            bound = _signature(VLLM_API["LLM.generate"]).bind(*args, **kw).arguments
            requests, params, lora_request = bound["prompts"], bound["sampling_params"], bound.get("lora_request")
            assert isinstance(params, SamplingParams) and (lora_request is None or isinstance(lora_request, LoRARequest))
            assert all(set(r) <= set(VLLM_API["TokensPrompt"]) and "prompt_token_ids" in r for r in requests)
            calls.append(("generate", requests, params.kw, lora_request))
            outs = []
            for req in requests:
                ids = req["prompt_token_ids"]
                n = params.kw.get("n", 1)
                # position 0 has no log-prob (None); then the prompt token's own entry first, then the top-k
                # (vllm/logprobs.py append_logprobs_for_next_position; prompt_logprobs=0 gives k = 0)
                lps = [None] + [{t: _record("Logprob", dict(logprob=-0.5 - 0.01 * i)), -1: _record("Logprob", dict(
                    logprob=-9.0))} for i, t in enumerate(ids[1:])]
                outs.append(_record("RequestOutput", dict(
                    prompt_logprobs=lps,
                    outputs=[_record("CompletionOutput", dict(text=f"sample{j} of {len(ids)}")) for j in range(n)])))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    for name in VLLM_API["top_level"]:
        assert name != "LoRARequest"  # else the stand-in must export it too
    request = types.ModuleType("vllm_standin.lora.request")
    request.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm_standin.lora", types.ModuleType("vllm_standin.lora"))
    monkeypatch.setitem(sys.modules, "vllm_standin.lora.request", request)
    return mod


def test_the_vllm_api_fixture_is_the_pinned_release():
    import re

    root = os.path.dirname(os.path.dirname(__file__))
    version = VLLM_API["source"]["version"]
    dockerfile = open(os.path.join(root, "images", "p3-vllm.Dockerfile")).read()
    assert f"FROM vllm/vllm-openai:v{version}\n" in dockerfile
    pyproject = open(os.path.join(root, "pyproject.toml")).read()
    lower, upper = re.search(r'"vllm>=([\d.]+),<([\d.]+)"', pyproject).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lower) <= as_tuple(version) < as_tuple(upper)

    from p3.backends.vllm import LORA_RANKS

    assert list(LORA_RANKS) == VLLM_API["MaxLoRARanks"]


def test_vllm_requests_for_generation_and_prompt_logprobs(tiny_model_dir, monkeypatch):
    from p3.backends.vllm import VLLMBackend

    calls = []
    b = VLLMBackend(tiny_model_dir, tensor_parallel_size=2, gpu_memory_utilization=0.5, max_len=256, seed=7,
                    vllm_module=stand_in_vllm(calls, monkeypatch))
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


def test_vllm_serves_an_adapter_dir_as_base_plus_lora_request(tiny_model_dir, tmp_path, monkeypatch):
    from p3.backends.vllm import VLLMBackend

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_model_dir, "r": 24}))
    calls = []
    b = VLLMBackend(str(adapter), vllm_module=stand_in_vllm(calls, monkeypatch))
    kw = calls[0][1]
    assert kw["model"] == tiny_model_dir and kw["enable_lora"] is True and kw["max_lora_rank"] == 32
    b.generate(["ab\n"], n=2, temperature=1.0)
    assert calls[1][3].args == ("p3-adapter", 1, str(adapter))
    b.close()
    on_adapter = tmp_path / "a2"
    on_adapter.mkdir()
    (on_adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(adapter), "r": 8}))
    with pytest.raises(ValueError, match="itself an adapter"):
        VLLMBackend(str(on_adapter), vllm_module=stand_in_vllm([], monkeypatch))
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_model_dir, "r": 600}))
    with pytest.raises(ValueError, match="rank 600 is above vLLM's largest max_lora_rank 512"):
        VLLMBackend(str(adapter), vllm_module=stand_in_vllm([], monkeypatch))


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
