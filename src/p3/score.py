"""Policy-driven difficulty (docs/design.md §1.1): likelihood, rollout or hybrid.

``likelihood`` (the paper's): the reference solution's non-empty lines are the steps
a_1..a_K; p(a_k) = exp(mean log-prob of a_k's tokens given everything before it);
difficulty = 1 - mean_k p(a_k). A causal model gives every p(a_k) from ONE forward pass
over prefix + solution; a step's tokens are those whose characters lie inside its line
(the "\\n" separators belong to no step). :func:`per_step_likelihood` is the paper
code's K-pass form, kept as the reference the fast path is tested and benchmarked against.

``rollout``: sample n completions, grade each with the task verifier
(:func:`p3.verify.grade.grade_completions`), difficulty = 1 - mean score; the graded
samples are written as the rollouts table. ``hybrid`` = w * likelihood + (1-w) * rollout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa

from p3 import checks, contracts, outputs, prompts
from p3.backends import TokenScores, opened
from p3.problems import load_problems
from p3.generation import GenerationConfig
from p3.verify.answers import last_boxed
from p3.logs import get_logger, step

log = get_logger("score")
MODES = ("likelihood", "rollout", "hybrid")
SPANS = ("solution", "answer")


@dataclass
class ScoreConfig:
    problems: str = field(metadata={"io": "in", "help": "problems table to score"})
    model: str = field(metadata={"io": "in", "help": "current policy: model dir, adapter dir, hub name or s3:// URI"})
    out: str = field(metadata={"io": "out", "help": "output difficulty table"})
    mode: str = field(default="likelihood", metadata={"help": "difficulty measure", "choices": list(MODES)})
    difficulty_span: str = field(
        default="solution",
        metadata={"help": "likelihood over: solution = every step's tokens (the paper's); answer = only each step's "
                          "result (after its last '=', inside \\boxed{} when boxed; else the final boxed answer), given "
                          "everything before it (MATH)", "choices": list(SPANS)},
    )
    epoch: int = field(default=0, metadata={"min": 0, "help": "epoch recorded in the table"})
    batch_size: int = field(default=8, metadata={"min": 1, "max": 1 << 16, "help": "texts per forward / generate batch (hf; raise it on a GPU)"})
    n: int = field(default=8, metadata={"min": 1, "max": 100_000, "help": "rollouts per problem (rollout, hybrid)"})
    temperature: float = field(default=1.0, metadata={"min": 0.0, "help": "sampling temperature for rollouts"})
    weight: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0, "help": "hybrid: weight of the likelihood difficulty"})
    rollouts_out: Optional[str] = field(default=None, metadata={"io": "out", "help": "rollouts table (default <out stem>.rollouts.parquet)"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "inference settings"})

    def __post_init__(self) -> None:
        checks.validate(self)


def step_probabilities(scores: TokenScores, spans: list[tuple[int, int]]) -> list[float]:
    """p(step) = exp(mean log-prob of the tokens inside the step's span), per step.

    Steps cut off by truncation (no scored token) are left out. A step whose every token
    also covers a separator (a BPE merge like ".\\n") falls back to the overlapping tokens.
    """
    starts, ends = scores.offsets[:, 0], scores.offsets[:, 1]
    scored = np.isfinite(scores.logprobs) & (ends > starts)
    probs = []
    for s, e in spans:
        inside = scored & (starts >= s) & (ends <= e)
        if not inside.any():
            inside = scored & (starts < e) & (ends > s)
        if inside.any():
            probs.append(math.exp(float(scores.logprobs[inside].mean())))
    return probs


def answer_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The answer-bearing part of each step: what follows the step's last ``=``, inside
    ``\\boxed{…}`` when the step boxes it. Steps without ``=`` have none; when no step has
    one, the final boxed answer alone (None of either: an empty list)."""
    out = []
    for s, e in spans:
        line = text[s:e]
        eq = line.rfind("=")
        if eq < 0:
            continue
        start = s + eq + 1
        inner = last_boxed(text[start:e])
        if inner is not None and inner:
            start = text.index(inner, text.index("\\boxed", start))
            out.append((start, start + len(inner)))
            continue
        seg = text[start:e]
        lead = len(seg) - len(seg.lstrip())
        if seg.strip():
            out.append((start + lead, start + lead + len(seg.strip())))
    if not out and spans:
        inner = last_boxed(text[spans[0][0]:])
        if inner:
            begin = text.index(inner, text.rfind("\\boxed"))
            out.append((begin, begin + len(inner)))
    return out


def likelihoods(backend, rows: list[dict], template: str, path: str = "problems",
                span: str = "solution") -> list[float]:
    """Mean step probability per row, from one forward pass per row (batched).

    ``span="answer"``: each step is cut to its answer-bearing part (:func:`answer_spans`:
    the result after the step's ``=``), each given everything before it: what the policy
    gets right or wrong, without the copied and formatting characters that dominate the
    whole solution's likelihood.
    """
    texts, spans = [], []
    for i, row in enumerate(rows):
        text, sp = prompts.scored_text(row, template, backend.tokenizer)
        if not sp:
            raise contracts.ContractError(path, "solution", "has no non-empty line: likelihood needs a reference solution", row=i + 1)
        if span == "answer":
            sp = answer_spans(text, sp)
            if not sp:
                raise contracts.ContractError(path, "solution", "has no step result (after '=') and no \\boxed{} "
                                              "answer: --difficulty-span answer needs one", row=i + 1)
        texts.append(text)
        spans.append(sp)
    out = []
    for i, (scores, sp) in enumerate(zip(backend.token_logprobs(texts, prompts.add_special_tokens(template)), spans)):
        probs = step_probabilities(scores, sp)
        if not probs:
            raise ValueError(f"{path}, row {i + 1}: no solution token within --max-len; raise --max-len")
        out.append(float(np.mean(probs)))
    return out


def per_step_likelihood(model, tok, row: dict, template: str = "plain") -> float:
    """The paper code's K-pass reference: one forward per step over prefix + steps[:k+1]."""
    import torch

    text, spans = prompts.scored_text(row, template, tok)
    probs = []
    for s, e in spans:
        enc = tok(text[:e], add_special_tokens=prompts.add_special_tokens(template), return_offsets_mapping=True,
                  return_tensors="pt")
        with torch.inference_mode():
            logits = model(input_ids=enc["input_ids"].to(model.device), use_cache=False).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(1, enc["input_ids"][0, 1:, None].to(logits.device))[:, 0]
        offsets = enc["offset_mapping"][0, 1:]
        inside = (offsets[:, 0] >= s) & (offsets[:, 1] <= e) & (offsets[:, 1] > offsets[:, 0])
        probs.append(math.exp(lp[inside.to(lp.device)].mean().item()))
    return float(np.mean(probs))


def rollouts(backend, problems: pa.Table, rows: list[dict], cfg: ScoreConfig) -> tuple[list[float], pa.Table]:
    """Sample cfg.n completions per row, grade them; (pass rate per row, rollouts table)."""
    records = sample_and_grade(backend, problems, rows, cfg.generation, cfg.n, cfg.temperature)
    score_by_id: dict[str, list[float]] = {}
    for rec in records:
        score_by_id.setdefault(rec["id"], []).append(rec["score"])
    return [float(np.mean(score_by_id[r["id"]])) for r in rows], rollouts_table(records)


def sample_and_grade(backend, problems: pa.Table, rows: list[dict], gen: GenerationConfig, n: int,
                     temperature: float) -> list[dict]:
    """n completions per row, graded: one record (id, sample, completion, score, status,
    passed) per completion. Shared by rollout scoring and evaluation."""
    from p3.verify.grade import grade_completions, shared_sandbox

    if any(r["task"] == "apps" for r in rows):  # refuse weak isolation before generating, not after
        shared_sandbox(gen.workers(), allow_weak_isolation=gen.allow_weak_isolation)
    texts = [prompts.prompt_text(r, gen.template, backend.tokenizer) for r in rows]
    samples = backend.generate(texts, n=n, temperature=temperature, max_new_tokens=gen.max_new_tokens,
                               seed=gen.seed, top_p=gen.top_p, add_special_tokens=prompts.add_special_tokens(gen.template))
    completions = [{"id": r["id"], "sample": j, "completion": c} for r, outs in zip(rows, samples) for j, c in enumerate(outs)]
    graded = grade_completions(problems, completions, timeout=gen.grade_timeout, math_timeout=gen.grade_timeout,
                               workers=gen.workers(), allow_weak_isolation=gen.allow_weak_isolation)
    # grade_completions returns one row per completion, in order
    return [{**c, "score": float(g["score"]), "status": g["status"], "passed": bool(g["passed"]),
             "isolation": g["isolation"]} for c, g in zip(completions, graded, strict=True)]


def rollouts_table(records: list[dict]) -> pa.Table:
    """Graded samples as the rollouts (audit) table."""
    return pa.Table.from_pylist([{k: r[k] for k in contracts.ROLLOUTS.names} for r in records], schema=contracts.ROLLOUTS)


def isolation_used(levels: list) -> Optional[str]:
    """The sandbox level(s) graded programs ran at, for logs and metrics; None when no
    program ran (MATH)."""
    used = sorted({lv for lv in levels if lv})
    return ",".join(used) if used else None


def default_rollouts_path(out: str) -> str:
    stem = out[: -len(".parquet")] if out.endswith(".parquet") else out
    return stem + ".rollouts.parquet"


def score(cfg: ScoreConfig) -> None:
    """Score every problem with the current policy and write the difficulty table."""
    checks.validate(cfg)  # again: a config may have been changed since it was made
    problems = load_problems(cfg.problems)
    rows = prompts.rows(problems)
    n = len(rows)
    lik: list[Optional[float]] = [None] * n
    pass_rate: list[Optional[float]] = [None] * n
    rollout_table = None
    gen = cfg.generation
    with opened(gen.backend, cfg.model, **gen.backend_options(cfg.batch_size)) as backend:
        if cfg.mode in ("likelihood", "hybrid"):
            with step(log, "likelihood") as counts:
                lik = likelihoods(backend, rows, gen.template, cfg.problems, cfg.difficulty_span)
                counts.update(problems=n, mean=round(float(np.mean(lik)), 4) if n else None)
        if cfg.mode in ("rollout", "hybrid"):
            with step(log, "rollouts") as counts:
                pass_rate, rollout_table = rollouts(backend, problems, rows, cfg)
                counts.update(problems=n, samples=rollout_table.num_rows,
                              pass_rate=round(float(np.mean(pass_rate)), 4) if n else None,
                              isolation=isolation_used(rollout_table.column("isolation").to_pylist()))
    if cfg.mode == "likelihood":
        diff = [1.0 - x for x in lik]
    elif cfg.mode == "rollout":
        diff = [1.0 - x for x in pass_rate]
    else:
        diff = [cfg.weight * (1.0 - a) + (1.0 - cfg.weight) * (1.0 - b) for a, b in zip(lik, pass_rate)]
    diff = [min(1.0, max(0.0, d)) for d in diff]  # float noise only; both parts are in [0, 1]
    table = pa.table({
        "id": [r["id"] for r in rows], "epoch": [cfg.epoch] * n, "difficulty": diff, "likelihood": lik,
        "pass_rate": pass_rate, "n_rollouts": [cfg.n if rollout_table is not None else 0] * n,
    }, schema=contracts.DIFFICULTY)
    with outputs.Commit() as commit:  # the rollouts first, the difficulty table (primary) last
        if rollout_table is not None:
            commit.table(rollout_table, cfg.rollouts_out or default_rollouts_path(cfg.out))
        commit.table(table, cfg.out)
    log.info(f"wrote {cfg.out}: {n} problems, mean difficulty {np.mean(diff) if n else float('nan'):.4f}")

