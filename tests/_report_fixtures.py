"""A realistic P3 run folder for the report tests: fabricated difficulty, the real selector.

Three epochs of the files a pipeline run leaves: problems table, and per epoch the
difficulty table, selection table, selection report JSON and evaluation metrics JSON. Difficulty follows the level and drops a little for trained problems, as a
learning policy's would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from p3 import contracts, storage
from p3.records import EvaluationResults
from p3.selection import SelectConfig, select_ids

TYPES = ["Algebra", "Counting & Probability", "Geometry", "Number Theory", "Prealgebra"]


def make_run(root: Path, n: int = 240, k: int = 48, epochs: int = 3, dim: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ids = [f"p{i:04d}" for i in range(n)]
    levels = rng.integers(1, 6, size=n)
    types = rng.integers(0, len(TYPES), size=n)
    problems = pa.table({
        "id": ids, "task": ["math"] * n, "prompt": [f"What is {i}+1?" for i in range(n)],
        "solution": [f"{i}+1={i + 1}\n\\boxed{{{i + 1}}}" for i in range(n)],
        "answer": [str(i + 1) for i in range(n)], "tests": [None] * n, "starter_code": [None] * n,
        "meta": [json.dumps({"level": int(lv), "type": TYPES[t]}) for lv, t in zip(levels, types)],
    }, schema=contracts.PROBLEMS)
    storage.write_table(problems, root / "problems.parquet")
    centers = rng.normal(size=(len(TYPES), dim))
    emb = (centers[types] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    diff = np.clip(0.5 + 0.08 * (levels - 3) + 0.05 * rng.normal(size=n), 0, 1)
    for e in range(epochs):
        d = root / f"epoch_{e}"
        d.mkdir(parents=True, exist_ok=True)
        storage.write_table(pa.table({
            "id": ids, "epoch": [e] * n, "difficulty": diff, "likelihood": 1 - diff,
            "pass_rate": [None] * n, "n_rollouts": [0] * n}, schema=contracts.DIFFICULTY), d / "difficulty.parquet")
        # the selection and its report are what the selector writes
        sel = select_ids(ids, diff, emb, SelectConfig(strategy="p3", epoch=e, epochs=epochs, budget=k, seed=seed),
                         levels=[int(lv) for lv in levels], types=[TYPES[t] for t in types])
        storage.write_table(pa.table({
            "id": sel.ids, "rank": np.arange(len(sel.ids)), "round": sel.round,
            "difficulty": sel.difficulty, "epoch": [e] * len(sel.ids)}, schema=contracts.SELECTION), d / "selection.parquet")
        storage.write_json(sel.report, d / "selection_report.json")
        picks = np.array([ids.index(i) for i in sel.ids])
        acc_by_level = {str(lv): round(float(max(0.0, 0.9 - 0.15 * lv + 0.05 * e)), 3) for lv in range(1, 6)}
        result = EvaluationResults(
            model=f"model_e{e}", problems="test.parquet", epoch=e, n=1, k=1, temperature=0.0, n_problems=100,
            accuracy=round(0.3 + 0.05 * e, 3), pass_at_k=round(0.3 + 0.05 * e, 3), seconds=1.0,
            by_level={k: {"accuracy": v, "n_problems": 20} for k, v in acc_by_level.items()})
        storage.write_json(result.to_json(), d / "metrics.json")
        # The policy learns: trained problems get easier, everything a little easier.
        trained = np.zeros(n, dtype=bool)
        trained[picks] = True
        diff = np.clip(diff - 0.01 - 0.04 * trained + 0.01 * rng.normal(size=n), 0, 1)
    return root
