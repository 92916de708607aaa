"""QLoRA (4-bit NF4 base + LoRA) on the CPU, with the real bitsandbytes (>= 0.48 quantizes on
the CPU): the loss falls, the adapter is saved, the merged model is the trained model and loads
in `p3 score` / `p3 evaluate`, and a second epoch trains on top of the first as the pipeline
chains them (the trainer component's ``model`` input is the previous epoch's output dir)."""

import json
import logging
import os

import pytest
import torch

from _fx_models import write_selection as _selection

from p3 import contracts, storage
from p3.cli import main

QUANT = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
             bnb_4bit_compute_dtype=torch.float32)  # what p3.train.prepare_model uses on a CPU


def p3(*args):
    assert main(list(args)) == 0, args


def _loss(model, rows, tok):
    from p3.train import collate, encode_sft

    with torch.no_grad():
        return model(**collate([f for f in encode_sft(rows, tok, "plain", 512) if f], tok.pad_token_id)).loss.item()


def _four_bit(path):
    """The base as QLoRA trains on it: NF4 weights, float32 compute, on the CPU."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(**QUANT),
                                                device_map={"": "cpu"})


def test_qlora_auto_stays_off_on_a_cpu_and_on_uses_bitsandbytes_there():
    from p3.train import TrainConfig, can_quantize_4bit, use_qlora

    cfg = dict(problems="p", selection="s", model="m", out="o", device="cpu")
    assert can_quantize_4bit("cpu")  # bitsandbytes is installed by `make install` (the qlora extra)
    assert use_qlora(TrainConfig(**cfg, qlora="on"))
    assert not use_qlora(TrainConfig(**cfg))  # auto: 4-bit on a GPU only (see docs/models.md)
    assert not use_qlora(TrainConfig(**cfg, qlora="on", full=True))


@pytest.mark.slow
def test_qlora_on_cpu_learns_saves_the_adapter_and_merges_into_the_trained_model(
        tiny_model_dir, mini_math, tmp_path, caplog):
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    from peft import PeftModel

    from p3.backends import load_causal_lm

    rows = contracts.read(mini_math["train"], contracts.PROBLEMS).to_pylist()[:16]
    sel = _selection(str(tmp_path / "s.parquet"), [r["id"] for r in rows])
    out = str(tmp_path / "q")
    with caplog.at_level(logging.INFO, logger="p3.train"):
        p3("train", "--problems", mini_math["train"], "--selection", sel, "--model", tiny_model_dir, "--out", out,
           "--qlora", "on", "--device", "cpu", "--lora", "8,16,0.0", "--lr", "5e-3", "--batch-size", "4",
           "--max-steps", "40")
    assert "steps=40" in caplog.text and "mode=qlora" in caplog.text
    adapter_conf = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert adapter_conf["r"] == 8 and adapter_conf["base_model_name_or_path"] == os.path.abspath(tiny_model_dir)
    assert os.path.exists(os.path.join(out, "adapter", "adapter_model.safetensors"))

    merged, tok = load_causal_lm(out, "cpu")
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # a full-precision model, no 4-bit layer
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())

    # The loss on the training rows, before (the 4-bit base: the adapter starts at zero) and after 40 steps
    # (the merged model), both with the base's NF4 weights, so only the training differs.
    four_bit = _four_bit(tiny_model_dir).train()  # train mode: bitsandbytes' exact float32 dequantise-matmul
    before, after = _loss(four_bit, rows, tok), _loss(merged, rows, tok)
    print(f"qlora loss on the 16 training rows: before={before:.4f} after 40 steps={after:.4f}")
    assert after < before - 0.02, (before, after)

    # What is compared, on a batch of two prompts, all logits:
    #   merged model (saved dir)  vs  the trained model: 4-bit base + the saved adapter, unmerged,
    #   and vs the same adapter unmerged on the dequantised base (float32 nn.Linear weights).
    # (The 4-bit model runs in train mode with dropout 0: in eval mode on AVX512-BF16 CPUs
    # bitsandbytes switches to a bfloat16 inference kernel, which rounds at ~1e-2.)
    ids = tok(["What is 4 + 4?\n4 + 4 = 8", "Compute 12 - 5.\n12 - 5 = 7"], return_tensors="pt",
              padding=True)["input_ids"]
    dequantised, _ = load_causal_lm(tiny_model_dir, "cpu")
    weights = dict(dequantised.named_parameters())
    with torch.no_grad():
        for name, module in four_bit.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weights[name + ".weight"].copy_(bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state))
    full_precision, _ = load_causal_lm(tiny_model_dir, "cpu")
    trained = PeftModel.from_pretrained(four_bit, os.path.join(out, "adapter")).train()
    on_dequantised = PeftModel.from_pretrained(dequantised, os.path.join(out, "adapter")).eval()
    on_full_precision = PeftModel.from_pretrained(full_precision, os.path.join(out, "adapter")).eval()
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
        gap = {name: (m(input_ids=ids).logits - logits).abs().max().item()
               for name, m in [("trained", trained), ("dequantised", on_dequantised),
                               ("full_precision", on_full_precision)]}
    print(f"max |logit gap| vs merged: {gap}")
    assert gap["trained"] < 1e-3 and gap["dequantised"] < 1e-3, gap
    # merging into the original base (what p3 did before) is a different model: the NF4 rounding
    assert gap["full_precision"] > 1e-2, gap


@pytest.mark.slow
def test_a_qlora_model_scores_evaluates_and_trains_a_second_epoch(tiny_model_dir, mini_math, tmp_path):
    ids = storage.read_table(mini_math["train"]).column("id").to_pylist()
    d = str(tmp_path)
    qlora = ["--qlora", "on", "--device", "cpu", "--lora", "8,16,0.0", "--lr", "5e-3", "--batch-size", "4",
             "--max-steps", "3"]
    p3("train", "--problems", mini_math["train"], "--selection", _selection(f"{d}/s0.parquet", ids[:8]),
       "--model", tiny_model_dir, "--out", f"{d}/m1", *qlora)
    p3("score", "--problems", mini_math["train"], "--model", f"{d}/m1", "--out", f"{d}/difficulty.parquet",
       "--epoch", "1")
    diff = contracts.read(f"{d}/difficulty.parquet", contracts.DIFFICULTY)
    assert diff.num_rows == len(ids)
    contracts.check_unit_interval(diff.column("difficulty").to_pylist(), "difficulty", "difficulty")
    p3("evaluate", "--problems", mini_math["test"], "--model", f"{d}/m1", "--out", f"{d}/eval.json",
       "--max-new-tokens", "16", "--epoch", "1")
    assert storage.read_json(f"{d}/eval.json")["n_problems"] == 20

    # epoch 2 as the pipeline runs it: the trainer's model input is epoch 1's output dir
    p3("train", "--problems", mini_math["train"], "--selection", _selection(f"{d}/s1.parquet", ids[8:16], epoch=1),
       "--model", f"{d}/m1", "--out", f"{d}/m2", *qlora)
    conf = json.load(open(f"{d}/m2/adapter/adapter_config.json"))
    assert conf["base_model_name_or_path"] == os.path.abspath(f"{d}/m1")
    assert json.load(open(f"{d}/m2/trainer_state.json"))["global_step"] == 3
    from p3.backends import load_causal_lm

    m1, tok = load_causal_lm(f"{d}/m1", "cpu")
    m2, _ = load_causal_lm(f"{d}/m2", "cpu")
    x = tok("What is 4 + 4?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(m1(input_ids=x).logits, m2(input_ids=x).logits, atol=1e-4)
