"""Every model step reads problems through p3.problems.load_problems: bad rows stop it at once,
with file, row and field, before any model is loaded."""

import pyarrow as pa
import pytest

from p3 import contracts, storage
from p3.contracts import ContractError


def _bad_table(path):
    rows = [
        {"id": "a", "task": "math", "prompt": "1+1?", "solution": "1+1=2\n\\boxed{2}", "answer": "2",
         "tests": None, "starter_code": None, "meta": "{}"},
        {"id": "b", "task": "math", "prompt": "   ", "solution": "x", "answer": "1",
         "tests": None, "starter_code": None, "meta": "{}"},
    ]
    storage.write_table(pa.Table.from_pylist(rows, schema=contracts.PROBLEMS), path)
    return path


def _configs(p, tmp):
    from p3.score import ScoreConfig, score
    from p3.embed import EmbedConfig, embed
    from p3.evaluate import EvaluateConfig, evaluate
    from p3.tiny import TinyConfig, build_tiny_model
    from p3.train import TrainConfig, train

    missing = str(tmp / "no-model")
    return {
        "score": (score, ScoreConfig(problems=p, model=missing, out=str(tmp / "d.parquet"))),
        "embed": (embed, EmbedConfig(problems=p, out=str(tmp / "e.parquet"))),
        "train": (train, TrainConfig(problems=p, selection=str(tmp / "s.parquet"), model=missing, out=str(tmp / "m"))),
        "evaluate": (evaluate, EvaluateConfig(problems=p, model=missing, out=str(tmp / "e.json"))),
        "model bootstrap": (build_tiny_model, TinyConfig(out=str(tmp / "tiny"), train_on=p, steps=1)),
    }


@pytest.mark.parametrize("step", ["score", "embed", "train", "evaluate", "model bootstrap"])
def test_step_names_the_bad_row_and_writes_nothing(tmp_path, step):
    p = _bad_table(str(tmp_path / "problems.parquet"))
    func, cfg = _configs(p, tmp_path)[step]
    with pytest.raises(ContractError) as err:
        func(cfg)
    assert (err.value.path, err.value.row, err.value.field) == (p, 2, "prompt")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["problems.parquet"]
