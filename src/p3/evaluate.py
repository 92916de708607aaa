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

from p3 import prompts, storage
from p3.backends import BACKENDS, opened
from p3.data import load_problems
from p3.difficulty import backend_options, grade_workers, join_grades, rollouts_table
from p3.logs import get_logger, step

log = get_logger("evaluate")


@dataclass
class EvaluateConfig:
    problems: str = field(metadata={"help": "test problems table"})
    model: str = field(metadata={"help": "model dir, adapter dir, hub name or s3:// URI"})
    out: str = field(metadata={"help": "output evaluation JSON"})
    n: int = field(default=1, metadata={"help": "samples per problem"})
    k: int = field(default=1, metadata={"help": "k of pass@k (k <= n)"})
    temperature: Optional[float] = field(default=None, metadata={"help": "sampling temperature (default 0 = greedy when n=1, else 0.8)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    max_new_tokens: int = field(default=512, metadata={"help": "generation length limit"})
    backend: str = field(default="hf", metadata={"help": "inference engine", "choices": list(BACKENDS)})
    template: str = field(default="plain", metadata={"help": "prompt template", "choices": list(prompts.TEMPLATES)})
    batch_size: int = field(default=64, metadata={"help": "prompts per generate batch (hf)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda (hf)"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    max_len: int = field(default=2048, metadata={"help": "truncate prompts to this many tokens"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    epoch: Optional[int] = field(default=None, metadata={"help": "epoch recorded in the JSON"})
    completions_out: Optional[str] = field(default=None, metadata={"help": "also write the graded samples (rollouts table)"})
    grade_timeout: float = field(default=10.0, metadata={"help": "seconds per graded completion"})
    grade_workers: int = field(default=0, metadata={"help": "grading processes (0 = all cores)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per model"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: fraction of GPU memory to use"})


def summarize(rows: list[dict], passed: dict[str, list[bool]], scores: dict[str, list[float]], n: int, k: int) -> dict:
    """accuracy (mean sample score) and pass@k (mean over problems) for a set of rows."""
    from p3.verify.grade import pass_at_k

    acc = float(np.mean([s for r in rows for s in scores[r["id"]]])) if rows else 0.0
    pk = float(np.mean([pass_at_k(n, sum(passed[r["id"]]), k) for r in rows])) if rows else 0.0
    return {"n_problems": len(rows), "accuracy": acc, "pass_at_k": pk}


def grouped(rows: list[dict], passed, scores, n: int, k: int) -> dict[str, dict]:
    """``by_level`` / ``by_type`` / ``by_difficulty``: the summary per value of each group key."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        for key, value in prompts.problem_group_keys(r).items():
            groups.setdefault(key, {}).setdefault(value, []).append(r)
    return {
        f"by_{key}": {v: summarize(rs, passed, scores, n, k) for v, rs in sorted(vals.items(), key=lambda kv: _natural(kv[0]))}
        for key, vals in groups.items()
    }


def _natural(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def evaluate(cfg: EvaluateConfig) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.problems``; write and return the results dict."""
    from p3.verify.grade import grade_completions

    if cfg.n < 1 or not 1 <= cfg.k <= cfg.n:
        raise ValueError(f"need n >= 1 and 1 <= k <= n, got n={cfg.n} k={cfg.k}")
    temperature = cfg.temperature if cfg.temperature is not None else (0.0 if cfg.n == 1 else 0.8)
    problems = load_problems(cfg.problems)
    rows = prompts.rows(problems)
    start = time.perf_counter()
    with opened(cfg.backend, cfg.model, **backend_options(cfg)) as backend, step(log, "generate") as counts:
        texts = [prompts.prompt_text(r, cfg.template, backend.tokenizer) for r in rows]
        samples = backend.generate(texts, n=cfg.n, temperature=temperature, max_new_tokens=cfg.max_new_tokens,
                                   seed=cfg.seed, top_p=cfg.top_p, add_special_tokens=prompts.add_special_tokens(cfg.template))
        counts.update(problems=len(rows), samples=len(rows) * cfg.n)
    completions = [{"id": r["id"], "sample": j, "completion": c} for r, outs in zip(rows, samples) for j, c in enumerate(outs)]
    with step(log, "grade") as counts:
        graded = grade_completions(problems, completions, timeout=cfg.grade_timeout,
                                       math_timeout=cfg.grade_timeout, workers=grade_workers(cfg))
        records = join_grades(completions, graded)
        counts.update(samples=len(records), passed=sum(r["passed"] for r in records))
    passed: dict[str, list[bool]] = {r["id"]: [] for r in rows}
    scores: dict[str, list[float]] = {r["id"]: [] for r in rows}
    for rec in records:
        passed[rec["id"]].append(rec["passed"])
        scores[rec["id"]].append(rec["score"])
    result = {
        "model": cfg.model, "problems": cfg.problems, "epoch": cfg.epoch, "n": cfg.n, "k": cfg.k,
        "temperature": temperature, **summarize(rows, passed, scores, cfg.n, cfg.k),
        **grouped(rows, passed, scores, cfg.n, cfg.k), "seconds": round(time.perf_counter() - start, 2),
    }
    if cfg.completions_out:
        storage.write_table(rollouts_table(records), cfg.completions_out)
    storage.write_json(result, cfg.out)
    log.info(f"accuracy={result['accuracy']:.4f} pass@{cfg.k}={result['pass_at_k']:.4f} on {len(rows)} problems")
    return result
