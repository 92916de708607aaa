"""A tiny run of bench/learning_efficiency.py: every code path of the benchmark, on a toy size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from _scripts import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning_efficiency.py"


def _load_bench():
    return load_script("bench/learning_efficiency.py")


TIMING = ("score_s", "select_s", "train_s", "eval_s")


def _rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(path))]


@pytest.mark.slow
def test_bench_tiny_run_has_fair_arms_paired_stats_and_the_control(tmp_path):
    bench = _load_bench()
    out = tmp_path / "results"
    got = bench.main(["--quick-tiny", "--out", str(out), "--work", str(tmp_path / "w"), "--cache", str(tmp_path / "c")])
    rows = _rows(out / "learning_efficiency.csv")
    trained = [r for r in rows if r["arm"] != "warm"]
    # 4 arms × 2 fine-tune seeds on the main pool + 3 arms × 2 on the control, 2 epochs each; 2 warm rows
    assert len(trained) == (4 * 2 + 3 * 2) * 2 and sum(r["arm"] == "warm" for r in rows) == 2
    # the same optimiser steps for every arm, every epoch (budget 16 / batch 8), whatever was selected
    assert {int(r["steps"]) for r in trained} == {2}
    assert {int(r["selected"]) for r in trained} == {16}
    # the oracle takes the frontier level first; random does not
    oracle = [float(r["sel_L4"]) for r in trained if r["arm"] == "oracle"]
    assert min(oracle) >= 0.5 > max(float(r["sel_L4"]) for r in trained if r["arm"] == "random" and r["pool"] == "main")
    # the primary metric of the warm and the final model (--eval-each-epoch: every epoch)
    assert all(0.0 < float(r["answer_lik"]) < 1.0 for r in rows if r["epoch"] in ("0", "2"))
    assert all(r["answer_lik"] == "" for r in rows if r["epoch"] == "1")
    # greedy accuracy of the warm model and of the final models of the greedy fine-tune seeds (default: 0)
    assert all(r["accuracy"] != "" for r in rows if r["pool"] == "main" and r["epoch"] in ("0", "2")
               and r.get("ft_seed") in ("0", "", None))
    assert all(r["accuracy"] == "" for r in rows if r.get("ft_seed") == "1")
    v = got["verdicts"]
    assert {"resolution", "p3", "p3-paper", "control p3", "control p3-paper"} <= set(v)
    assert v["p3"]["lo"] <= v["p3"]["mean"] <= v["p3"]["hi"] and v["p3"]["n"] == 2
    md = (out / "learning_efficiency.md").read_text()
    assert "## Negative control" in md and "must reach ≥ 5" in md and "--quick-tiny" in md
    assert (out / "learning_efficiency.png").read_bytes().startswith(b"\x89PNG")
    settings = json.loads((out / "learning_efficiency.json").read_text())["settings"]
    assert settings["budget"] == 16 and settings["seeds"] == [0]
    # a report from work files alone (a stopped run, or runs of other seeds merged) gives the same verdicts
    again = bench.main(["--quick-tiny", "--report-only", "--work", str(tmp_path / "w"), "--also-work",
                        str(tmp_path / "w"), "--out", str(tmp_path / "again")])
    assert again["verdicts"] == got["verdicts"]
    assert "report of the finished cells only" in (tmp_path / "again" / "learning_efficiency.md").read_text()


@pytest.mark.slow
def test_bench_same_command_twice_gives_identical_rows(tmp_path, monkeypatch):
    """Everything is seeded (data, warm-up, selection, training order; scoring and greedy
    decoding are deterministic), so two runs, warm-up included, agree row for row. Every
    epoch runs through the pipeline's epoch flow (p3.epoch.epoch_flow), not a copy of it."""
    from p3 import epoch

    flows, real = [], epoch.epoch_flow

    def flow(steps, e, *args):
        flows.append((type(steps).__name__, e))
        return real(steps, e, *args)

    monkeypatch.setattr(epoch, "epoch_flow", flow)
    bench = _load_bench()
    args = ["--quick-tiny", "--arms", "random", "p3", "--no-control", "--ft-seeds", "0"]  # --quick-tiny: --jobs 1
    for run in ("a", "b"):
        bench.main([*args, "--out", str(tmp_path / run), "--work", str(tmp_path / f"w{run}"),
                    "--cache", str(tmp_path / f"c{run}")])
    a, b = _rows(tmp_path / "a" / "learning_efficiency.csv"), _rows(tmp_path / "b" / "learning_efficiency.csv")
    assert len(a) == 5 and a == b
    assert flows == [("InProcessSteps", e) for _ in ("a", "b") for _arm in ("random", "p3") for e in (0, 1)]


SUBJECTS = ["Prealgebra", "Algebra", "Number Theory", "Counting & Probability", "Geometry", "Intermediate Algebra",
            "Precalculus"]


@pytest.mark.slow
def test_math_coverage_script_on_a_small_math_format_file(tmp_path):
    """bench/math_coverage.py end to end on a fabricated file in MATH's raw schema."""

    mod = load_script("bench/math_coverage.py")
    src = tmp_path / "math.jsonl"
    with open(src, "w") as fh:
        for i in range(70):
            subject, level = SUBJECTS[i % 7], i % 5 + 1
            fh.write(json.dumps({"problem": f"{subject} question {i}: compute {i} plus {level} in a {subject.lower()} way.",
                                 "level": f"Level {level}", "type": subject,
                                 "solution": f"We add.\n$${i}+{level}=\\boxed{{{i + level}}}$$"}) + "\n")
    got = mod.main(["--source", str(src), "--budgets", "0.2", "14", "--random-draws", "3", "--work",
                    str(tmp_path / "work"), "--out", str(tmp_path / "cov")])
    assert got["pool"] == 70
    r = got["results"][0]
    assert r["k"] == 14 and sum(r["dpp"]["type_counts"]) == 14 and sum(r["dpp"]["level_counts"]) == 14
    assert r["pool"]["type"] == [10.0] * 7 and r["pool"]["level"] == [14.0] * 5
    assert 0 < r["dpp"]["type_covered"] <= 7 and 0 <= r["random"]["type_entropy"] <= 1
    md = (tmp_path / "cov.md").read_text()
    assert "| 14 | dpp |" in md and "| 14 | random |" in md and "Intermediate Algebra" in md
