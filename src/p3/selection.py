"""This epoch's training subset: one interface over the strategies the project compares.

Strategies (``--strategy``):

- ``random``  k problems uniformly at random (seeded by ``seed`` and ``epoch``);
- ``full``    every problem, in table order (the budget is ignored);
- ``spl``     self-paced only: k at random among the eligible (see :mod:`p3.pacing`);
- ``dpp``     diversity only: the DPP (:mod:`p3.dpp`) over the whole pool;
- ``p3``      SPL then DPP: the DPP over the eligible problems (the paper's method);
- ``static``  a curriculum on the dataset's own label: pacing on meta ``level``
              (scaled to [0, 1]; meta ``difficulty`` when there is no level), k at
              random among the eligible, ranked easiest level first.

Quality for the DPP (``quality``): ``difficulty`` (paper default: among eligible items
harder ones are worth more), ``easiness`` (1 − difficulty), ``uniform`` (1) or
``learnability`` (4 p (1 − p) with p = 1 − difficulty: with rollout difficulty p is the
pass rate, and problems the policy solves sometimes are worth most; mastered and
out-of-reach ones least).

Uniform reserve (``reserve``): that fraction of the budget is drawn uniformly at random
from the pool's remaining problems after the strategy has picked the rest, so no region
of the pool is starved by a wrong difficulty signal. Reserve picks come last in rank
order and are counted in the report (``reserve``).

Entry points: :func:`select` (``p3 select`` and the KFP component: files in, files out)
and :func:`select_ids` (in memory: ids, arrays and a config in, a
:class:`Selection` out; it reads and writes nothing).

Report JSON (``--report``; also the dict ``select`` returns): a
:class:`p3.records.SelectionReport` (``version`` 1; readers accept exactly these keys). Keys:

- ``strategy``, ``epoch``, ``epochs``, ``budget``, ``seed``, ``quality``, ``reserve``
  (problems drawn by the uniform reserve)
- ``pool`` (problems considered), ``eligible`` (after pacing; = pool for random, full
  and dpp), ``selected``; ``budget_exceeds_eligible`` (bool: fewer eligible than the
  budget, so all were selected); ``notes`` (list of sentences, e.g. that one)
- ``percentile``, ``threshold`` (upper pacing percentile and its difficulty value),
  ``lower_percentile``, ``lower_threshold`` (band mode) — null when no pacing applies
- ``pacing``: {mode, shape, start, end, lower_start, lower_end, momentum_alpha,
  momentum_applied}
- ``difficulty``: {pool, eligible, selected} each {n, mean, std, min, p25, median, p75,
  max, hist: {edges (0, 0.025, …, 1), counts}} (null values when there is no difficulty)
- ``rounds`` (number of DPP rounds; 0 without DPP), ``round_sizes`` (picks per round)
- ``dpp``: null, or {greedy_picks, fill_picks (zero-quality items added to fill k),
  objective_logdet (Σ log of the greedy gains = Σ_rounds log det L_round[picks]),
  precision, device, full_flushes, seconds, eps, in_place (the screen shared the
  embeddings' memory instead of copying them), conditioned_on (previous picks used),
  condition_weight}
- ``logdet``, ``mean_cosine``: diversity of the selection — log det(I + S) and mean
  pairwise cosine, S the cosine Gram of the embeddings standardised over the eligible
  pool and L2-normalised (:mod:`p3.similarity`); null without embeddings
- ``diversity``: {k, draws, selected: {logdet, mean_cosine}, random: {logdet,
  mean_cosine}} with ``random`` the mean over ``draws`` seeded random draws of the same
  size from the eligible pool (the run report shows these numbers; it does not recompute them)
- ``coverage``: {level: {pool, eligible, selected}, type: {…}} value → count from meta
- ``seconds``: wall time of the selection
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from p3 import checks, contracts, outputs, pacing
from p3.contracts import ContractError
from p3.problems import load_problems, problem_meta
from p3.dpp import dpp_select
from p3.logs import get_logger, step
from p3.records import SelectionReport
from p3.similarity import diversity_vs_random

log = get_logger("select")

STRATEGIES = ("random", "full", "spl", "dpp", "p3", "static")
QUALITIES = ("difficulty", "easiness", "uniform", "learnability")
NEEDS_DIFFICULTY = ("spl", "dpp", "p3")
NEEDS_EMBEDDINGS = ("dpp", "p3")
# Difficulty histograms of the report: the run report draws the eligible set from them.
HIST_BINS = 40


@dataclass
class SelectConfig:
    problems: Optional[str] = field(default=None, metadata={"io": "in", "help": "problems table (.parquet, local or s3://); required by `select`"})
    out: Optional[str] = field(default=None, metadata={"io": "out", "help": "output selection table (.parquet); required by `select`"})
    difficulty: Optional[str] = field(default=None, metadata={"io": "in", "help": "this epoch's difficulty table (needed by spl, dpp, p3)"})
    embeddings: Optional[str] = field(default=None, metadata={"io": "in", "help": "embeddings table (needed by dpp, p3)"})
    strategy: str = field(default="p3", metadata={"help": "selection strategy", "choices": list(STRATEGIES)})
    epoch: int = field(default=0, metadata={"min": 0, "lt_field": "epochs", "help": "this epoch, 0-based"})
    epochs: int = field(default=5, metadata={"min": 1, "max": 10_000, "help": "number of epochs E of the pacing schedule"})
    budget: int = field(default=10000, metadata={"min": 1, "help": "problems to select (paper: 10,000 per epoch on MATH)"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed of the random strategies and the random diversity baseline"})
    report: Optional[str] = field(default=None, metadata={"io": "out", "help": "write the selection report JSON here"})
    previous: Optional[str] = field(default=None, metadata={"io": "in", "help": "previous epoch's selection table (cross-epoch diversity)"})
    previous_difficulty: Optional[str] = field(
        default=None, metadata={"io": "in", "help": "previous epoch's difficulty table (momentum pacing)"}
    )
    pacing_start: float = field(default=45.0, metadata={"min": 0.0, "max": 100.0, "help": "pacing percentile at epoch 0"})
    pacing_end: float = field(default=95.0, metadata={"min": 0.0, "max": 100.0, "help": "pacing percentile approached at the last epoch (pct(e) = start + e·(end−start)/E)"})
    pacing_shape: str = field(default="linear", metadata={"help": "pacing schedule shape", "choices": list(pacing.SHAPES)})
    pacing_mode: str = field(
        default="threshold",
        metadata={"help": "threshold: d ≤ pct; band: lower ≤ d ≤ pct; momentum: d + α(d − d_prev) ≤ pct", "choices": list(pacing.MODES)},
    )
    pacing_lower_start: float = field(default=0.0, metadata={"min": 0.0, "max": 100.0, "help": "band mode: lower percentile at epoch 0"})
    pacing_lower_end: float = field(default=50.0, metadata={"min": 0.0, "max": 100.0, "help": "band mode: lower percentile approached at the last epoch"})
    momentum_alpha: float = field(default=0.1, metadata={"min": 0.0, "help": "momentum mode: α in d + α(d − d_prev)"})
    quality: str = field(default="difficulty", metadata={"help": "DPP item quality q (learnability: 4p(1-p), p = 1 - difficulty)", "choices": list(QUALITIES)})
    reserve: float = field(
        default=0.0,
        metadata={"min": 0.0, "max": 0.9, "help": "fraction of the budget picked uniformly at random from the rest of the pool after the strategy's picks (0 = off)"},
    )
    eps: float = field(default=1e-10, metadata={"min": 0.0, "help": "DPP greedy stops a round when the best residual is below eps"})
    diversity_weight: float = field(
        default=0.0,
        metadata={"min": 0.0, "max": 1.0, "help": "cross-epoch diversity: weight w in [0,1] of conditioning on the previous picks (0 = off, 1 = exact conditional DPP)"},
    )
    diversity_previous: int = field(
        default=64, metadata={"min": 0, "help": "cross-epoch diversity: condition on this many first previous picks (≤ embedding dim)"}
    )
    precision: str = field(
        default="auto", metadata={"help": "DPP screening precision (auto: float64 up to 2^21 matrix entries, else float32 screening with exact float64 decisions)", "choices": ["auto", "float64", "float32"]}
    )
    device: str = field(default="auto", metadata={"help": "DPP device: auto (CUDA when present, else cpu), cpu (torch's CPU kernels for big float32 screens, else numpy), numpy, cuda, cuda:N"})

    def __post_init__(self) -> None:
        checks.validate(self)


@dataclass
class Selection:
    """The picks in rank order, their DPP round and difficulty, and the report dict."""

    ids: list
    round: np.ndarray
    difficulty: np.ndarray
    report: dict


def select(cfg: SelectConfig) -> dict:
    """``p3 select``: read the inputs, select, write the selection and report; return the report."""
    if not cfg.problems or not cfg.out:
        raise ValueError("--problems and --out are required")
    _check_config(cfg)  # before reading any table; select_ids checks again for its own callers
    with step(log, "select") as counts:
        problems = load_problems(cfg.problems)
        ids = problems.column("id").to_pylist()
        levels, types = _labels(problems)
        del problems  # at N=1M its strings are ~100 MB that the selection never reads
        diff = _difficulty_for(cfg.difficulty, ids) if cfg.difficulty else None
        if diff is None and cfg.strategy in NEEDS_DIFFICULTY:
            raise ValueError(f"strategy {cfg.strategy!r} needs --difficulty")
        emb = None
        if cfg.embeddings and (cfg.strategy in NEEDS_EMBEDDINGS or cfg.report):
            emb = _embeddings_for(cfg.embeddings, ids)
        if emb is None and cfg.strategy in NEEDS_EMBEDDINGS:
            raise ValueError(f"strategy {cfg.strategy!r} needs --embeddings")
        # the previous epoch's tables are read only by the settings that use them
        prev_ids = _previous_ids(cfg.previous) if cfg.previous and _uses_previous_picks(cfg) else None
        prev_diff = (_difficulty_for(cfg.previous_difficulty, ids, allow_missing=True)
                     if cfg.previous_difficulty and _uses_previous_difficulty(cfg) else None)
        # Arrow's allocator keeps the pages the readers freed (~100 MB per 200k rows of
        # embeddings read); hand them back before the DPP allocates its screen
        pa.default_memory_pool().release_unused()
        sel = select_ids(
            ids, diff, emb, cfg,
            levels=levels, types=types,
            previous_ids=prev_ids, previous_difficulty=prev_diff, static_source=cfg.problems,
            embeddings_in_place=True,  # the matrix was read for this selection alone
        )
        table = pa.table(
            {
                "id": pa.array(sel.ids, pa.string()),
                "rank": pa.array(np.arange(len(sel.ids)), pa.int64()),
                "round": pa.array(sel.round, pa.int64()),
                "difficulty": pa.array(sel.difficulty, pa.float64()),
                "epoch": pa.array(np.full(len(sel.ids), cfg.epoch), pa.int64()),
            },
            schema=contracts.SELECTION,
        )
        with outputs.Commit() as commit:  # the report first, the selection (primary) last
            if cfg.report:
                commit.json(sel.report, cfg.report)
            commit.table(table, cfg.out)
        counts.update(strategy=cfg.strategy, pool=sel.report["pool"], eligible=sel.report["eligible"], selected=len(sel.ids))
    return sel.report


def select_ids(
    ids: Sequence[str],
    difficulty: Optional[np.ndarray],
    embeddings: Optional[np.ndarray],
    cfg: SelectConfig,
    levels: Optional[Sequence] = None,
    types: Optional[Sequence] = None,
    previous_ids: Optional[Sequence[str]] = None,
    previous_difficulty: Optional[np.ndarray] = None,
    static_source: str = "problems",
    embeddings_in_place: bool = False,
) -> Selection:
    """Select in memory. ``difficulty`` (N,) in [0,1] or None; ``embeddings`` (N, d) or
    None; ``levels``/``types`` per item (meta labels, for ``static`` and coverage);
    ``previous_ids`` the last epoch's selection in rank order (cross-epoch diversity);
    ``previous_difficulty`` (N,) with NaN where unknown (momentum pacing);
    ``embeddings_in_place``: the DPP may reorder the rows of ``embeddings`` in place while
    it runs instead of copying them (they are put back; see :func:`p3.dpp.dpp_select`)."""
    _check_config(cfg)
    start = time.perf_counter()
    n = len(ids)
    ids = list(ids)
    d = None if difficulty is None else np.asarray(difficulty, dtype=np.float64)
    X = None if embeddings is None else np.asarray(embeddings)
    if d is not None and len(d) != n or X is not None and len(X) != n:
        raise ValueError("ids, difficulty and embeddings must have the same length")
    notes: list[str] = []
    pace = None
    label = None
    if cfg.strategy == "static":
        label = _static_difficulty(levels, static_source)
    paced = {"spl": d, "p3": d, "static": label}.get(cfg.strategy)
    if paced is not None:
        pace = pacing.eligible(
            paced, cfg.epoch, cfg.epochs, cfg.pacing_start, cfg.pacing_end, cfg.pacing_shape,
            cfg.pacing_mode, cfg.pacing_lower_start, cfg.pacing_lower_end, cfg.momentum_alpha,
            previous=previous_difficulty if _uses_previous_difficulty(cfg) else None,
        )
        pool_mask = pace.eligible
    else:
        pool_mask = np.ones(n, dtype=bool)
    eligible_idx = np.flatnonzero(pool_mask)
    n_reserve = 0 if cfg.strategy == "full" else min(n, int(round(cfg.reserve * cfg.budget)))
    k = n if cfg.strategy == "full" else min(cfg.budget - n_reserve, len(eligible_idx))
    if cfg.strategy == "full" and cfg.budget < n:
        notes.append(f"strategy full ignores the budget ({cfg.budget}): all {n} problems selected")
    if cfg.strategy != "full" and len(eligible_idx) < cfg.budget:
        notes.append(f"only {len(eligible_idx)} eligible problems for a budget of {cfg.budget}: all of them selected")
    rng = np.random.default_rng([cfg.seed, cfg.epoch])
    rounds = np.zeros(0, dtype=np.int64)
    result = cond = None
    if cfg.strategy == "full":
        chosen = np.arange(n)
    elif cfg.strategy in ("random", "spl"):
        chosen = rng.permutation(eligible_idx)[:k]
    elif cfg.strategy == "static":
        picked = rng.permutation(eligible_idx)[:k]
        chosen = picked[np.argsort(label[picked], kind="stable")]
    else:  # dpp, p3
        q = _quality(d[eligible_idx], cfg.quality)
        cond = _condition_rows(ids, X, previous_ids, cfg)
        result = dpp_select(
            X, q, k, eps=cfg.eps, precision=cfg.precision, device=cfg.device,
            condition_on=cond, condition_weight=cfg.diversity_weight,
            rows=None if len(eligible_idx) == n else eligible_idx,  # the eligible rows, not a copy of them
            in_place=embeddings_in_place,
        )
        chosen = eligible_idx[result.order]
        rounds = result.rounds
        if result.n_fill:
            notes.append(f"{result.n_fill} zero-quality problems added last to fill the budget")
    if not len(rounds):
        rounds = np.zeros(len(chosen), dtype=np.int64)
    reserved = 0
    if n_reserve:
        rest = np.setdiff1d(np.arange(n), chosen)
        extra = np.random.default_rng([cfg.seed, cfg.epoch, 1]).permutation(rest)[:n_reserve]
        chosen, reserved = np.concatenate([chosen, extra]).astype(np.int64), len(extra)
        rounds = np.concatenate([rounds, np.zeros(len(extra), dtype=np.int64)])
        notes.append(f"{len(extra)} problems of the budget drawn uniformly at random (reserve {cfg.reserve:g})")
    sel_diff = d[chosen] if d is not None else (label[chosen] if label is not None else np.full(len(chosen), np.nan))
    report = _report(cfg, ids, d, X, pool_mask, chosen, pace, result, 0 if cond is None else len(cond),
                     levels, types, notes, rng, reserved)
    report["seconds"] = round(time.perf_counter() - start, 3)
    report = SelectionReport(**report).to_json()  # the record's keys, exactly, and its version
    for note in notes:
        log.info(note)
    return Selection([ids[i] for i in chosen], np.asarray(rounds, dtype=np.int64), sel_diff, report)


# -- pieces -----------------------------------------------------------------------------
def _check_config(cfg: SelectConfig) -> None:
    checks.validate(cfg)  # again: a config may have been changed since it was made


def _quality(d: np.ndarray, kind: str) -> np.ndarray:
    if kind == "difficulty":
        return d.copy()
    if kind == "easiness":
        return 1.0 - d
    if kind == "learnability":
        return 4.0 * d * (1.0 - d)
    return np.ones_like(d)


def _uses_previous_picks(cfg) -> bool:
    """Cross-epoch diversity: the DPP strategies condition on the previous picks."""
    return cfg.strategy in NEEDS_EMBEDDINGS and cfg.diversity_weight > 0


def _uses_previous_difficulty(cfg) -> bool:
    """Momentum pacing of the policy's difficulty (not of a static label)."""
    return cfg.pacing_mode == "momentum" and cfg.strategy in ("spl", "p3")


def _condition_rows(ids, X, previous_ids, cfg) -> Optional[np.ndarray]:
    if not _uses_previous_picks(cfg) or not previous_ids:
        return None
    index = {pid: i for i, pid in enumerate(ids)}
    rows = [index[p] for p in previous_ids if p in index][: min(cfg.diversity_previous, X.shape[1])]
    return X[rows] if rows else None


def _static_difficulty(levels, source: str) -> np.ndarray:
    if levels is None:
        raise ValueError("strategy static needs meta levels")
    values = []
    for row, lv in enumerate(levels):
        try:
            values.append(float(lv))
        except (TypeError, ValueError):
            raise ContractError(source, "meta", f"strategy static needs a numeric 'level' (or 'difficulty'), got {lv!r}", row=row + 1) from None
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min() if len(v) else 0.0
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


def _labels(table: pa.Table) -> tuple[list, list]:
    """Each row's meta level and type; a dataset's own ``difficulty`` label stands in for
    a missing level. Only the two labels are kept, not the parsed meta dicts."""
    levels, types = [], []
    for m in problem_meta(table):
        levels.append(m.get("level") if m.get("level") is not None else m.get("difficulty"))
        types.append(m.get("type"))
    return levels, types


def _difficulty_for(path: str, ids: Sequence[str], allow_missing: bool = False) -> np.ndarray:
    table = contracts.read(path, contracts.DIFFICULTY)
    values = table.column("difficulty").to_pylist()
    contracts.check_unit_interval(values, path, "difficulty")
    by_id = dict(zip(table.column("id").to_pylist(), values))
    out = np.full(len(ids), np.nan)
    for row, pid in enumerate(ids):
        v = by_id.get(pid)
        if v is None:
            if allow_missing:
                continue
            raise ContractError(path, "id", f"no difficulty for problem {pid!r} (problems row {row + 1})")
        out[row] = v
    return out


def _embeddings_for(path: str, ids: Sequence[str]) -> np.ndarray:
    emb_ids, matrix = contracts.read_embeddings(path)
    index = {pid: i for i, pid in enumerate(emb_ids)}
    rows = np.empty(len(ids), dtype=np.int64)
    for row, pid in enumerate(ids):
        i = index.get(pid)
        if i is None:
            raise ContractError(path, "id", f"no embedding for problem {pid!r} (problems row {row + 1})")
        rows[row] = i
    return matrix if np.array_equal(rows, np.arange(len(matrix))) else matrix[rows]


def _previous_ids(path: str) -> list[str]:
    table = contracts.read(path, contracts.SELECTION)
    order = np.argsort(np.asarray(table.column("rank").to_pylist()), kind="stable")
    ids = table.column("id").to_pylist()
    return [ids[i] for i in order]


# -- report -----------------------------------------------------------------------------
def _report(cfg, ids, d, X, pool_mask, chosen, pace, result, n_conditioned, levels, types, notes, rng,
            reserved: int = 0) -> dict:
    n = len(ids)
    elig = np.flatnonzero(pool_mask)
    rep: dict = {
        "strategy": cfg.strategy,
        "epoch": cfg.epoch,
        "epochs": cfg.epochs,
        "budget": cfg.budget,
        "seed": cfg.seed,
        "quality": cfg.quality,
        "reserve": int(reserved),
        "pool": n,
        "eligible": int(len(elig)),
        "selected": int(len(chosen)),
        "budget_exceeds_eligible": bool(cfg.strategy != "full" and len(elig) < cfg.budget),
        "notes": notes,
        "percentile": pace.percentile if pace else None,
        "threshold": pace.threshold if pace else None,
        "lower_percentile": pace.lower_percentile if pace else None,
        "lower_threshold": pace.lower_threshold if pace else None,
        "pacing": {
            "mode": cfg.pacing_mode, "shape": cfg.pacing_shape, "start": cfg.pacing_start, "end": cfg.pacing_end,
            "lower_start": cfg.pacing_lower_start, "lower_end": cfg.pacing_lower_end,
            "momentum_alpha": cfg.momentum_alpha,
            "momentum_applied": bool(pace is not None and pace.momentum_applied),
        },
        "difficulty": {
            "pool": _stats(d), "eligible": _stats(None if d is None else d[elig]),
            "selected": _stats(None if d is None else d[chosen]),
        },
        "rounds": int(result.n_rounds) if result else 0,
        "round_sizes": list(result.round_sizes) if result else [],
        "dpp": None,
        "logdet": None,
        "mean_cosine": None,
        "diversity": None,
        "coverage": {},
    }
    if result is not None:
        rep["dpp"] = {
            "greedy_picks": result.n_greedy, "fill_picks": result.n_fill,
            "objective_logdet": _num(result.logdet), "precision": result.precision, "device": result.device,
            "full_flushes": result.flushes, "seconds": round(result.seconds, 3), "eps": cfg.eps,
            "in_place": result.in_place,
            "conditioned_on": int(n_conditioned), "condition_weight": cfg.diversity_weight,
        }
    if X is not None and len(chosen) >= 2:
        # every strategy picks from the eligible pool: the baseline draws from it too
        rep["diversity"] = _clean_diversity(diversity_vs_random(X, elig, chosen, rng))
        rep["logdet"] = rep["diversity"]["selected"]["logdet"]
        rep["mean_cosine"] = rep["diversity"]["selected"]["mean_cosine"]
    for key, labels in (("level", levels), ("type", types)):
        if labels is not None:
            rep["coverage"][key] = {
                "pool": _counts(labels, range(n)), "eligible": _counts(labels, elig), "selected": _counts(labels, chosen)
            }
    return rep


def _stats(v: Optional[np.ndarray]) -> dict:
    if v is None or not len(v) or np.isnan(v).all():
        return {"n": 0 if v is None else int(len(v))}
    v = v[~np.isnan(v)]
    counts, edges = np.histogram(v, bins=HIST_BINS, range=(0.0, 1.0))
    p25, med, p75 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
        "p25": float(p25), "median": float(med), "p75": float(p75), "max": float(v.max()),
        "hist": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()},
    }


def _counts(labels, idx) -> dict:
    out: dict[str, int] = {}
    for i in idx:
        key = str(labels[i]) if labels[i] is not None else "?"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _num(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def _clean_diversity(div: dict) -> dict:
    return {**div, "selected": {k: _num(v) for k, v in div["selected"].items()},
            "random": {k: _num(v) for k, v in div["random"].items()}}

