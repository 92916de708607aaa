"""SFT trainer: prompt masking, LoRA/full outputs that reload, resume, bad selections."""

import json
import logging
import os

import pytest
import torch

from _fx_models import write_selection as _selection

from p3 import contracts, storage


def test_prompt_is_masked_out_of_the_labels(tiny_model_dir):
    from p3.backends import load_tokenizer
    from p3.train import encode_sft

    tok = load_tokenizer(tiny_model_dir)
    row = {"prompt": "What is 1 + 2?", "solution": "1 + 2 = 3\n\nSo \\boxed{3}"}
    (f,) = encode_sft([row], tok, "plain", 512)
    learned = [t for t, y in zip(f["input_ids"], f["labels"]) if y != -100]
    assert learned == tok("1 + 2 = 3\nSo \\boxed{3}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert f["labels"][: len("What is 1 + 2?\n") + 1] == [-100] * (len("What is 1 + 2?\n") + 1)  # BOS + prompt + "\n"
    assert encode_sft([row], tok, "plain", 10) == [None]  # the target does not fit: nothing to learn


@pytest.mark.slow
def test_lora_training_saves_a_merged_model_the_adapter_and_state(tiny_model_dir, mini_math, tmp_path):
    from p3.backends import load_causal_lm
    from p3.train import TrainConfig, train

    ids = storage.read_table(mini_math["train"]).column("id").to_pylist()[:16]
    out = str(tmp_path / "model")
    train(TrainConfig(problems=mini_math["train"], selection=_selection(str(tmp_path / "s.parquet"), ids),
                      model=tiny_model_dir, out=out, lora="8,16,0.0", lr=5e-3, batch_size=4, max_steps=3))
    state = json.loads(open(os.path.join(out, "trainer_state.json")).read())
    assert state["global_step"] == 3
    adapter_conf = json.loads(open(os.path.join(out, "adapter", "adapter_config.json")).read())
    assert adapter_conf["base_model_name_or_path"] == os.path.abspath(tiny_model_dir) and adapter_conf["r"] == 8
    assert not os.path.exists(out + ".ckpt")  # checkpoints are cleaned up after success

    merged, tok = load_causal_lm(out, "cpu")
    via_adapter, _ = load_causal_lm(os.path.join(out, "adapter"), "cpu")
    base, _ = load_causal_lm(tiny_model_dir, "cpu")
    ids_ = tok("What is 4 + 4?\n4 + 4 = 8", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b, c = (m(input_ids=ids_).logits for m in (merged, via_adapter, base))
    assert torch.allclose(a, b, atol=1e-4)  # merged dir == base + adapter
    assert not torch.allclose(a, c, atol=1e-4)  # and training changed the policy


@pytest.mark.slow
def test_full_training_lowers_the_loss_and_resume_continues(tiny_model_dir, mini_math, tmp_path, caplog):
    from safetensors.torch import load_file

    from p3.train import TrainConfig, collate, encode_sft, train

    rows = contracts.read(mini_math["train"], contracts.PROBLEMS).to_pylist()[:8]
    sel = _selection(str(tmp_path / "s.parquet"), [r["id"] for r in rows])
    common = dict(problems=mini_math["train"], selection=sel, model=tiny_model_dir, full=True, lr=3e-3,
                  batch_size=8, save_steps=2, scheduler="constant", checkpoint_dir=str(tmp_path / "ckpt"))
    out = str(tmp_path / "m")
    train(TrainConfig(out=out, max_steps=4, keep_checkpoints=True, **common))
    assert json.load(open(os.path.join(out, "trainer_state.json")))["global_step"] == 4
    assert not os.path.exists(os.path.join(out, "adapter"))
    assert any(d.startswith("checkpoint-") for d in os.listdir(tmp_path / "ckpt"))

    # an "interrupted" run: the checkpoint at step 4 is resumed and training goes on to step 8;
    # the result equals an uninterrupted 8-step run (optimizer state, RNG and data order restored)
    out2, straight = str(tmp_path / "m2"), str(tmp_path / "straight")
    with caplog.at_level(logging.INFO, logger="p3.train"):
        train(TrainConfig(out=out2, max_steps=8, resume=True, **common))
    assert "steps=8" in caplog.text and "resumed=True" in caplog.text
    train(TrainConfig(out=straight, max_steps=8, **dict(common, checkpoint_dir=str(tmp_path / "ckpt2"))))
    a, b = load_file(os.path.join(out2, "model.safetensors")), load_file(os.path.join(straight, "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    from p3.backends import load_causal_lm

    losses = []
    for path in (tiny_model_dir, out2):
        model, tok = load_causal_lm(path, "cpu")
        with torch.no_grad():
            losses.append(model(**collate([f for f in encode_sft(rows, tok, "plain", 512) if f], tok.pad_token_id)).loss.item())
    assert losses[1] < losses[0]


def test_selection_naming_an_unknown_problem_is_a_contract_error(tiny_model_dir, mini_math, tmp_path):
    from p3.train import TrainConfig, train

    sel = _selection(str(tmp_path / "s.parquet"), ["no-such-id"])
    with pytest.raises(contracts.ContractError, match="row 1, field 'id'.*no-such-id"):
        train(TrainConfig(problems=mini_math["train"], selection=sel, model=tiny_model_dir, out=str(tmp_path / "m")))
    with pytest.raises(ValueError, match="r,alpha,dropout"):
        from p3.train import parse_lora

        parse_lora("64,16")


@pytest.mark.slow
def test_s3_output_mirrors_checkpoints_so_a_fresh_pod_resumes(tiny_model_dir, mini_math, tmp_path, s3_tmp, caplog):
    import shutil

    from p3.train import TrainConfig, checkpoint_dir, train

    ids = storage.read_table(mini_math["train"]).column("id").to_pylist()[:8]
    sel = _selection(str(tmp_path / "s.parquet"), ids)
    common = dict(problems=mini_math["train"], selection=sel, model=tiny_model_dir, full=True, batch_size=8,
                  save_steps=1, out=f"{s3_tmp}/model")
    train(TrainConfig(max_steps=2, keep_checkpoints=True, **common))
    fs, inner = storage.filesystem(f"{s3_tmp}/model.ckpt")
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(inner)] == ["checkpoint-2"]
    shutil.rmtree(checkpoint_dir(TrainConfig(**common, max_steps=4)))  # a new pod: local disk is empty

    with caplog.at_level(logging.INFO, logger="p3.train"):
        train(TrainConfig(max_steps=4, resume=True, **common))
    assert "resumed=True" in caplog.text
    assert storage.read_json(f"{s3_tmp}/model/trainer_state.json")["global_step"] == 4
    assert not storage.exists(f"{s3_tmp}/model.ckpt")  # cleaned up after success


@pytest.mark.slow
def test_same_selection_and_seed_give_the_same_lora_model(tiny_model_dir, mini_math, tmp_path):
    # The LoRA weights are drawn before the Trainer seeds; train() must seed first.
    from p3.backends import load_causal_lm
    from p3.train import TrainConfig, train

    ids = storage.read_table(mini_math["train"]).column("id").to_pylist()[:8]
    sel = _selection(str(tmp_path / "s.parquet"), ids)
    outs = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1234 + ord(name))  # a different global RNG state before each run
        out = str(tmp_path / name)
        train(TrainConfig(problems=mini_math["train"], selection=sel, model=tiny_model_dir, out=out,
                          lora="8,16,0.0", lr=5e-3, batch_size=4, max_steps=1, seed=3))
        outs.append(load_causal_lm(out, "cpu")[0].state_dict())
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_resume_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    # The Trainer writes trainer_state.json last; a kill during a save leaves a newer folder
    # without it, which transformers' get_last_checkpoint (highest number) would pick.
    from transformers.trainer_utils import get_last_checkpoint

    from p3.train import last_complete_checkpoint

    assert last_complete_checkpoint(str(tmp_path / "none")) is None
    for step, whole in ((5, True), (10, False)):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        if whole:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-10")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-5")
