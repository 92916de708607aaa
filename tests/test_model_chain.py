"""The whole chain score -> embed -> select -> train -> evaluate from the CLI, on mini-MATH with
the tiny model, each step's output checked against its contract."""

import os

import pytest

from p3 import contracts, storage
from p3.cli import main


def p3(*args):
    """One `p3` command through the real CLI entry point (in-process: no 9x torch import)."""
    assert main(list(args)) == 0, args


@pytest.mark.slow
def test_score_embed_select_train_evaluate_from_the_cli(tmp_path):
    d = str(tmp_path)
    p3("data", "synth", "--out", f"{d}/train.parquet", "--n", "150", "--seed", "0", "--split", "train")
    p3("data", "synth", "--out", f"{d}/test.parquet", "--n", "30", "--seed", "1", "--split", "test")
    p3("model", "bootstrap", "--out", f"{d}/m0", "--train-on", f"{d}/train.parquet", "--steps", "40")

    p3("score", "--problems", f"{d}/train.parquet", "--model", f"{d}/m0", "--out", f"{d}/difficulty.parquet",
       "--epoch", "0")
    diff = contracts.read(f"{d}/difficulty.parquet", contracts.DIFFICULTY)
    assert diff.num_rows == 150
    contracts.check_unit_interval(diff.column("difficulty").to_pylist(), "difficulty", "difficulty")

    p3("embed", "--problems", f"{d}/train.parquet", "--out", f"{d}/embeddings.parquet")
    ids, matrix = contracts.read_embeddings(f"{d}/embeddings.parquet")
    assert ids == diff.column("id").to_pylist() and matrix.shape == (150, 384)

    p3("select", "--problems", f"{d}/train.parquet", "--difficulty", f"{d}/difficulty.parquet",
       "--embeddings", f"{d}/embeddings.parquet", "--strategy", "p3", "--budget", "40", "--epochs", "3",
       "--out", f"{d}/selection.parquet")
    sel = contracts.read(f"{d}/selection.parquet", contracts.SELECTION)
    assert 0 < sel.num_rows <= 40 and set(sel.column("id").to_pylist()) <= set(ids)

    p3("train", "--problems", f"{d}/train.parquet", "--selection", f"{d}/selection.parquet", "--model", f"{d}/m0",
       "--out", f"{d}/m1", "--lora", "8,16,0.0", "--lr", "3e-3", "--batch-size", "8")
    assert os.path.exists(f"{d}/m1/config.json") and os.path.exists(f"{d}/m1/adapter/adapter_config.json")

    p3("evaluate", "--problems", f"{d}/test.parquet", "--model", f"{d}/m1", "--out", f"{d}/eval.json",
       "--max-new-tokens", "96", "--epoch", "0")
    result = storage.read_json(f"{d}/eval.json")
    assert result["n_problems"] == 30 and 0.0 <= result["accuracy"] <= 1.0 and result["by_level"]

    # the trained model is the next epoch's policy: it scores like any model dir
    p3("score", "--problems", f"{d}/train.parquet", "--model", f"{d}/m1", "--out", f"{d}/difficulty1.parquet",
       "--epoch", "1")
    assert contracts.read(f"{d}/difficulty1.parquet", contracts.DIFFICULTY).column("epoch").to_pylist() == [1] * 150
