"""One epoch's dataflow is defined once (p3.epoch.epoch_flow) and both executors run it.

The pipeline builder (unrolled and per-epoch) and the in-process runner (the learning-efficiency
benchmark) each pass their own steps object to the flow. The executor tests below replace
``p3.epoch.epoch_flow`` with a variant that records its calls and drops what the previous
epoch left: an executor that wires its epochs through the flow changes with it, one with its
own copy of the wiring does not.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from p3 import epoch
from p3.epoch import InProcessSteps, epoch_loop
from p3.score import ScoreConfig
from p3.selection import SelectConfig
from p3.train import TrainConfig

STEPS = ["score_and_embed", "select", "train", "evaluate", "report"]


class Recorder:
    """A steps object whose outputs name the step and epoch that made them (``select1.selection``)."""

    def __init__(self, scored: bool = True):
        self.calls: list[tuple] = []
        self.scored = scored

    def score_and_embed(self, e, policy):
        self.calls.append(("score_and_embed", e, policy))
        return (f"score{e}.difficulty" if self.scored else None), f"score{e}.embeddings"

    def select(self, e, difficulty, embeddings, previous, previous_difficulty):
        self.calls.append(("select", e, difficulty, embeddings, previous, previous_difficulty))
        return f"select{e}.selection", f"select{e}.report"

    def train(self, e, policy, selection):
        self.calls.append(("train", e, policy, selection))
        return f"train{e}.model"

    def evaluate(self, e, model):
        self.calls.append(("evaluate", e, model))
        return f"evaluate{e}.results"

    def report(self, e, difficulty, selection, selection_report, evaluation, previous_run):
        self.calls.append(("report", e, difficulty, selection, selection_report, evaluation, previous_run))
        return f"report{e}.run", f"report{e}"


def test_the_flow_runs_the_steps_in_order_and_wires_each_epoch_to_the_one_before():
    steps = Recorder()
    outs = list(epoch_loop(steps, 3, "base"))
    assert [c[0] for c in steps.calls] == STEPS * 3
    assert [c[1] for c in steps.calls] == [e for e in range(3) for _ in STEPS]
    by = {(c[0], c[1]): c[2:] for c in steps.calls}
    # epoch 0 starts from the given policy with nothing before it
    assert by["score_and_embed", 0] == ("base",)
    assert by["select", 0] == ("score0.difficulty", "score0.embeddings", None, None)
    assert by["train", 0] == ("base", "select0.selection")
    assert by["report", 0] == ("score0.difficulty", "select0.selection", "select0.report", "evaluate0.results", None)
    for e in (1, 2):
        # the model epoch e-1 trained scores and is trained further; the selector gets this epoch's
        # difficulty and embeddings and the previous epoch's selection and difficulty
        assert by["score_and_embed", e] == (f"train{e - 1}.model",)
        assert by["select", e] == (f"score{e}.difficulty", f"score{e}.embeddings",
                                   f"select{e - 1}.selection", f"score{e - 1}.difficulty")
        assert by["train", e] == (f"train{e - 1}.model", f"select{e}.selection")
        assert by["evaluate", e] == (f"train{e}.model",)
        assert by["report", e][-1] == f"report{e - 1}.run"
    assert [o.policy for o in outs] == ["train0.model", "train1.model", "train2.model"]
    assert outs[-1].report == "report2"
    assert outs[-1].previous == ("select2.selection", "score2.difficulty", "report2.run")


def test_an_unscored_epoch_hands_no_difficulty_to_the_next():
    steps = Recorder(scored=False)
    list(epoch_loop(steps, 2, "base"))
    select1 = next(c for c in steps.calls if c[:2] == ("select", 1))
    assert select1[2:] == (None, "score1.embeddings", "select0.selection", None)


def _dropping_previous(monkeypatch) -> list[tuple]:
    """Replace the flow by one that records (steps type, epoch) and forgets the previous epoch."""
    real, seen = epoch.epoch_flow, []

    def flow(steps, e, policy, previous=None):
        seen.append((type(steps).__name__, e if isinstance(e, int) else "k"))
        return real(steps, e, policy, None)

    monkeypatch.setattr(epoch, "epoch_flow", flow)
    return seen


def _tasks(pipeline, path: Path) -> dict[str, dict]:
    from kfp import compiler

    compiler.Compiler().compile(pipeline, str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {t["taskInfo"]["name"]: t for dag in dags for t in dag["tasks"].values()}


def _previous_inputs(tasks: dict[str, dict], e) -> set[str]:
    return ({"previous", "previous_difficulty"} & set(tasks[f"epoch {e}: select"]["inputs"].get("artifacts", {}))
            | {"previous_run"} & set(tasks[f"epoch {e}: report"]["inputs"].get("artifacts", {})))


def test_the_pipeline_builders_wire_their_epochs_through_the_flow(monkeypatch, tmp_path):
    from p3.kfp.builder import BuildOptions, build
    from p3.kfp.per_epoch import build_per_epoch

    wired = {"previous", "previous_difficulty", "previous_run"}
    opts = BuildOptions(task="math", epochs=2)
    assert _previous_inputs(_tasks(build(opts).pipeline, tmp_path / "a.yaml"), 1) == wired
    assert _previous_inputs(_tasks(build_per_epoch(opts).pipeline, tmp_path / "b.yaml"), "k") == wired
    seen = _dropping_previous(monkeypatch)
    assert _previous_inputs(_tasks(build(opts).pipeline, tmp_path / "c.yaml"), 1) == set()
    assert _previous_inputs(_tasks(build_per_epoch(opts).pipeline, tmp_path / "d.yaml"), "k") == set()
    assert seen == [("PipelineSteps", 0), ("PipelineSteps", 1), ("PipelineSteps", 0), ("PipelineSteps", "k")]


def test_the_in_process_runner_wires_its_epochs_through_the_flow(monkeypatch, tmp_path):
    """InProcessSteps with the library steps recording their configs: which files each step is
    given is the runner's wiring (the steps themselves are tested in their own files, and run
    for real through this runner in tests/test_learning_efficiency.py)."""
    got: dict[str, list] = {"score": [], "select": [], "train": []}
    monkeypatch.setattr(epoch, "score", lambda cfg: got["score"].append(cfg))
    monkeypatch.setattr(epoch, "train", lambda cfg: got["train"].append(cfg))

    def run(scored: bool):
        for v in got.values():
            v.clear()
        steps = InProcessSteps(str(tmp_path), ScoreConfig(problems="p", model="", out="") if scored else None,
                               SelectConfig(problems="p", embeddings="x.parquet", budget=4),
                               TrainConfig(problems="p", selection="", model="", out=""),
                               selector=got["select"].append)
        outs = list(epoch_loop(steps, 2, "warm"))
        assert set(steps.seconds) == {0, 1} and set(steps.seconds[1]) == {"score_s", "select_s", "train_s"}
        return outs

    outs = run(scored=True)
    e0, e1 = epoch.epoch_files(str(tmp_path), 0), epoch.epoch_files(str(tmp_path), 1)
    assert [c.model for c in got["score"]] == ["warm", e0.model] and got["score"][1].out == e1.difficulty
    s1 = got["select"][1]
    assert (s1.epoch, s1.difficulty, s1.embeddings, s1.out, s1.report, s1.previous, s1.previous_difficulty) == (
        1, e1.difficulty, "x.parquet", e1.selection, e1.report, e0.selection, e0.difficulty)
    assert [(c.model, c.selection, c.out) for c in got["train"]] == [("warm", e0.selection, e0.model),
                                                                     (e0.model, e1.selection, e1.model)]
    assert outs[1].policy == e1.model and outs[1].report is None
    run(scored=False)
    assert got["score"] == [] and got["select"][1].difficulty is None and got["select"][1].previous_difficulty is None

    seen = _dropping_previous(monkeypatch)
    run(scored=True)
    assert seen == [("InProcessSteps", 0), ("InProcessSteps", 1)]
    assert got["select"][1].previous is None and got["select"][1].previous_difficulty is None


def _selector_inputs(folder: Path, n: int = 90, dim: int = 8) -> tuple[str, str, list[str]]:
    """Problems and embeddings tables for the real selector."""
    import json

    import numpy as np
    import pyarrow as pa

    from p3 import contracts, storage

    rng = np.random.default_rng(5)
    ids = [f"p{i:03d}" for i in range(n)]
    problems = pa.table({
        "id": ids, "task": ["math"] * n, "prompt": [f"What is {i}+1?" for i in range(n)],
        "solution": [f"\\boxed{{{i + 1}}}" for i in range(n)], "answer": [str(i + 1) for i in range(n)],
        "tests": [None] * n, "starter_code": [None] * n,
        "meta": [json.dumps({"level": 1 + i % 5, "type": "Algebra", "source": "test"}) for i in range(n)],
    }, schema=contracts.PROBLEMS)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    embeddings = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)},
                          schema=contracts.embeddings_schema(dim))
    paths = str(folder / "problems.parquet"), str(folder / "embeddings.parquet")
    storage.write_table(problems, paths[0])
    storage.write_table(embeddings, paths[1])
    return paths[0], paths[1], ids


def test_the_in_process_runner_feeds_the_real_selector_the_previous_epoch(monkeypatch, tmp_path):
    """The real `p3 select` (strategy p3, momentum pacing, cross-epoch diversity) run by
    InProcessSteps for two epochs: epoch 1's report says momentum moved its pacing and its DPP
    was conditioned on epoch 0's picks, epoch 0's says neither (it has no previous epoch). Scoring
    writes a difficulty table of the contract's schema (what the policy would measure is not
    what this checks) and training is skipped; with the flow's previous-epoch wiring dropped,
    epoch 1 reports neither, so the check reads what the selector actually got."""
    import json

    import numpy as np
    import pyarrow as pa

    from p3 import contracts, storage

    problems, embeddings, ids = _selector_inputs(tmp_path)

    def score(cfg):  # each epoch's policy finds the problems a little easier
        d = np.linspace(0.05, 0.95, len(ids)) * (1.0 - 0.2 * cfg.epoch)
        storage.write_table(pa.table({"id": ids, "epoch": [cfg.epoch] * len(ids), "difficulty": d, "likelihood": 1 - d,
                                      "pass_rate": [None] * len(ids), "n_rollouts": [0] * len(ids)},
                                     schema=contracts.DIFFICULTY), cfg.out)

    monkeypatch.setattr(epoch, "score", score)
    monkeypatch.setattr(epoch, "train", lambda cfg: None)
    select_cfg = SelectConfig(problems=problems, embeddings=embeddings, strategy="p3", budget=12, epochs=2,
                              pacing_mode="momentum", diversity_weight=1.0, diversity_previous=4)

    def reports(folder: Path) -> list[dict]:
        steps = InProcessSteps(str(folder), ScoreConfig(problems=problems, model="", out=""), select_cfg,
                               TrainConfig(problems=problems, selection="", model="", out=""))
        outs = list(epoch_loop(steps, 2, "warm"))
        return [json.loads(Path(o.difficulty).with_name("selection_report.json").read_text()) for o in outs]

    first, second = reports(tmp_path / "wired")
    assert (first["pacing"]["momentum_applied"], first["dpp"]["conditioned_on"]) == (False, 0)
    assert (second["pacing"]["momentum_applied"], second["dpp"]["conditioned_on"]) == (True, 4)
    _dropping_previous(monkeypatch)
    _, dropped = reports(tmp_path / "dropped")
    assert (dropped["pacing"]["momentum_applied"], dropped["dpp"]["conditioned_on"]) == (False, 0)
