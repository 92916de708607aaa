"""Model fixtures (owned by the model-backend area): mini-MATH tables and the tiny model,
built once per test session and shared by every model test."""

import pytest


def write_selection(path, ids, epoch=0):
    """A selection table naming ``ids`` in rank order (what `p3 select` writes), at ``path``."""
    import pyarrow as pa

    from p3 import contracts, storage

    storage.write_table(pa.table({"id": ids, "rank": list(range(len(ids))), "round": [0] * len(ids),
                                  "difficulty": [0.5] * len(ids), "epoch": [epoch] * len(ids)},
                                 schema=contracts.SELECTION), path)
    return path


@pytest.fixture(scope="session")
def mini_math(tmp_path_factory):
    """Paths of a small mini-MATH train table (60 problems, levels 1-5) and test table (20)."""
    from p3 import minimath, storage

    root = tmp_path_factory.mktemp("mini_math")
    paths = {"train": str(root / "train.parquet"), "test": str(root / "test.parquet")}
    storage.write_table(minimath.synth_problems(60, "1-5", seed=0, split="train"), paths["train"])
    storage.write_table(minimath.synth_problems(20, "1-5", seed=1, split="test"), paths["test"])
    return paths


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, mini_math):
    """The tiny char-level Llama, briefly warmed up on mini-MATH (a real model dir on disk)."""
    from p3.tiny import TinyConfig, build_tiny_model

    out = str(tmp_path_factory.mktemp("tiny") / "model")
    build_tiny_model(TinyConfig(out=out, train_on=mini_math["train"], steps=30, hidden=64, batch_size=16, seed=0))
    return out
