"""The tiny offline model: a normal transformers model dir with a character-level tokenizer."""

import json

import pytest
import torch

from p3 import contracts, storage


def test_tokenizer_is_character_level_with_exact_offsets():
    from p3.tiny import build_tokenizer

    tok = build_tokenizer(["Größe ≤ 3"])
    text = "Größe ≤ 3\n  x=1"
    enc = tok(text, return_offsets_mapping=True)
    assert enc["input_ids"][0] == tok.bos_token_id  # BOS first, offsets (0, 0)
    assert [text[s:e] for s, e in enc["offset_mapping"][1:]] == list(text)
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
    assert tok.unk_token_id not in enc["input_ids"]  # data characters are in the vocabulary
    assert tok("☃")["input_ids"][1] == tok.unk_token_id  # unseen characters are not


def test_tiny_model_dir_loads_with_auto_classes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert (tok.pad_token_id, tok.eos_token_id) == (model.config.pad_token_id, model.config.eos_token_id)
    chat = tok.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True)
    assert chat == "user: 1+1?\nassistant:\n"
    ids = tok("What is 2 + 3?\n", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


@pytest.mark.slow
def test_warm_up_lowers_the_loss_on_the_training_text(tmp_path, mini_math, tiny_model_dir):
    from p3.backends import load_causal_lm
    from p3.tiny import TinyConfig, build_tiny_model
    from p3.train import collate, encode_sft

    cold = str(tmp_path / "cold")
    build_tiny_model(TinyConfig(out=cold, train_on=mini_math["train"], steps=0, hidden=64, seed=0))
    rows = contracts.read(mini_math["train"], contracts.PROBLEMS).to_pylist()
    losses = {}
    for name, path in (("cold", cold), ("warm", tiny_model_dir)):
        model, tok = load_causal_lm(path, "cpu")
        batch = collate([f for f in encode_sft(rows, tok, "plain", 512) if f], tok.pad_token_id)
        with torch.no_grad():
            losses[name] = model(**batch).loss.item()
    assert losses["warm"] < 0.7 * losses["cold"], losses


def test_bad_problems_table_is_a_contract_error(tmp_path):
    import pyarrow as pa

    from p3.tiny import TinyConfig, build_tiny_model

    bad = str(tmp_path / "bad.parquet")
    storage.write_table(pa.table({"id": ["a"], "prompt": ["x"]}), bad)
    with pytest.raises(contracts.ContractError, match="missing column"):
        build_tiny_model(TinyConfig(out=str(tmp_path / "m"), train_on=bad, steps=1))
    assert not (tmp_path / "m").exists()


def test_cli_builds_a_model_dir(tmp_path):
    from p3.cli import main

    out = tmp_path / "m"
    assert main(["model", "bootstrap", "--out", str(out), "--layers", "1", "--hidden", "32", "--heads", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 32
    assert (out / "tokenizer.json").exists()
