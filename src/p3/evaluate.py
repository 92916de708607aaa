"""Held-out evaluation: generate, grade with the task verifier, report accuracy and pass@k.

Greedy decoding when n = 1 (temperature 0); with n > 1 samples at ``--temperature``
(default 0.8) and reports the unbiased pass@k estimator per problem, averaged.
Results are given overall and per group: MATH level and type, APPS difficulty
(from each problem's meta JSON).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from p3 import checks, outputs, prompts
from p3.backends import opened
from p3.problems import load_problems, meta_by_id
from p3.score import isolation_used, rollouts_table, sample_and_grade
from p3.generation import GenerationConfig
from p3.logs import get_logger, step
from p3.records import EvaluationResults
from p3.rundata import natural_key
from p3.sandbox import MODES
from p3.verify.grade import mean_pass_at_k

log = get_logger("evaluate")


@dataclass
class EvaluateConfig:
    problems: str = field(metadata={"io": "in", "help": "test problems table"})
    model: str = field(metadata={"io": "in", "help": "model dir, adapter dir, hub name or s3:// URI"})
    out: str = field(metadata={"io": "out", "help": "output evaluation JSON"})
    n: int = field(default=1, metadata={"min": 1, "max": 100_000, "help": "samples per problem"})
    k: int = field(default=1, metadata={"min": 1, "le_field": "n", "help": "k of pass@k (k <= n)"})
    temperature: Optional[float] = field(default=None, metadata={"min": 0.0, "help": "sampling temperature (default 0 = greedy when n=1, else 0.8)"})
    batch_size: int = field(default=64, metadata={"min": 1, "max": 1 << 16, "help": "prompts per generate batch (hf)"})
    epoch: Optional[int] = field(default=None, metadata={"min": 0, "help": "epoch recorded in the JSON"})
    completions_out: Optional[str] = field(default=None, metadata={"io": "out", "help": "also write the graded samples (rollouts table)"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "inference settings"})

    def __post_init__(self) -> None:
        checks.validate(self)


def summarize(records: list[dict], k: int) -> dict:
    """accuracy (mean sample score) and pass@k (mean over problems) of graded records."""
    return {"n_problems": len({r["id"] for r in records}),
            "accuracy": float(np.mean([r["score"] for r in records])) if records else 0.0,
            "pass_at_k": mean_pass_at_k(records, k)}


def grouped(records: list[dict], metas: dict[str, dict], k: int) -> dict[str, dict]:
    """``by_level`` / ``by_type`` / ``by_difficulty``: the summary per value of each group key."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        meta = metas[r["id"]]
        for key in ("level", "type", "difficulty"):
            if meta.get(key) not in (None, ""):
                groups.setdefault(key, {}).setdefault(str(meta[key]), []).append(r)
    return {f"by_{key}": {v: summarize(rs, k) for v, rs in sorted(vals.items(), key=lambda kv: natural_key(kv[0]))}
            for key, vals in groups.items()}


def isolation_record(levels: list) -> dict:
    """``isolation`` (the level programs ran at) and, for the Metrics artifact, which takes
    numbers only, ``sandbox_isolation``: 2 bwrap, 1 unshare, 0 none (the weakest used).
    Nothing when no program ran (MATH)."""
    used = isolation_used(levels)
    if used is None:
        return {}
    return {"isolation": used, "sandbox_isolation": min(MODES[lv] for lv in used.split(","))}


def evaluate(cfg: EvaluateConfig) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.problems``; write and return the results (a
    :class:`p3.records.EvaluationResults`, version 1, as its JSON dict)."""
    checks.validate(cfg)  # again: a config may have been changed since it was made
    temperature = cfg.temperature if cfg.temperature is not None else (0.0 if cfg.n == 1 else 0.8)
    problems = load_problems(cfg.problems)
    rows = prompts.rows(problems)
    start = time.perf_counter()
    gen = cfg.generation
    with opened(gen.backend, cfg.model, **gen.backend_options(cfg.batch_size)) as backend, \
            step(log, "generate and grade") as counts:
        records = sample_and_grade(backend, problems, rows, gen, cfg.n, temperature)
        counts.update(problems=len(rows), samples=len(records), passed=sum(r["passed"] for r in records))
    result = EvaluationResults(
        model=cfg.model, problems=cfg.problems, epoch=cfg.epoch, n=cfg.n, k=cfg.k, temperature=temperature,
        **summarize(records, cfg.k), **grouped(records, meta_by_id(problems), cfg.k),
        seconds=round(time.perf_counter() - start, 2), **isolation_record([r["isolation"] for r in records]),
    ).to_json()
    with outputs.Commit() as commit:  # the graded samples first, the results (primary) last
        if cfg.completions_out:
            commit.table(rollouts_table(records), cfg.completions_out)
        commit.json(result, cfg.out)
    log.info(f"accuracy={result['accuracy']:.4f} pass@{cfg.k}={result['pass_at_k']:.4f} on {len(rows)} problems"
             + (f", programs graded at sandbox isolation {result['isolation']}" if result["isolation"] else ""))
    return result
