"""A tiny run of bench/learning_efficiency.py: every code path of the benchmark, on a toy size."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning_efficiency.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("learning_efficiency", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_bench_smoke_run_writes_table_plots_and_report(tmp_path):
    bench = _load_bench()
    out, work = tmp_path / "results", tmp_path / "work"
    got = bench.main(["--seeds", "0", "--arms", "random", "full", "static", "p3", "--epochs", "2", "--pool", "40",
                      "--test", "10", "--warmup-problems", "20", "--warmup-steps", "4", "--budget", "0.25",
                      "--max-new-tokens", "24", "--jobs", "1", "--out", str(out), "--work", str(work)])
    rows = list(csv.DictReader(open(out / "learning_efficiency.csv")))
    assert len(rows) == 4 * 3  # arms × (warm-up + 2 epochs)
    by = {(r["arm"], int(r["epoch"])): r for r in rows}
    # equal budget per epoch for every arm but full, which trains on the whole pool
    assert [int(by[("random", e)]["examples_trained"]) for e in range(3)] == [0, 10, 20]
    assert int(by[("p3", 2)]["examples_trained"]) == int(by[("static", 2)]["examples_trained"]) == 20
    assert int(by[("full", 2)]["examples_trained"]) == 80
    # every arm starts from the same warm-up model
    assert len({by[(a, 0)]["accuracy"] for a in ("random", "full", "static", "p3")}) == 1
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    # p3 paces: epoch 0 keeps only the easier part of the pool eligible
    assert int(by[("p3", 1)]["eligible"]) < 40 and float(by[("p3", 1)]["threshold"]) > 0
    md = (out / "learning_efficiency.md").read_text()
    assert "| arm | acc e0 | acc e1 | acc e2 |" in md and "## What each arm selected" in md
    assert "python bench/learning_efficiency.py --seeds 0" in md
    # the training schedule is recorded with the results (every arm trains under the same one)
    settings = json.loads((out / "learning_efficiency.json").read_text())["settings"]
    assert settings["scheduler"] == "cosine" and settings["passes"] == 1.0 and settings["batch_size"] == 8
    assert "cosine schedule within each epoch" in md and "one pass over the selection per epoch" in md
    for png in ("learning_efficiency.png", "learning_efficiency_selection.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    page = (out / "learning_efficiency_p3_seed0_report.html").read_text()
    assert '<section id="epoch-0">' in page and '<section id="epoch-1">' in page
    assert set(got["final"]) == {"random", "full", "static", "p3"}


SUBJECTS = ["Prealgebra", "Algebra", "Number Theory", "Counting & Probability", "Geometry", "Intermediate Algebra",
            "Precalculus"]


@pytest.mark.slow
def test_math_coverage_script_on_a_small_math_format_file(tmp_path):
    """bench/math_coverage.py end to end on a fabricated file in MATH's raw schema."""

    spec = importlib.util.spec_from_file_location("math_coverage", BENCH.parent / "math_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
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
