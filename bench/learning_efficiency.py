"""Learning efficiency on comp-MATH: does P3 pick the problems a model learns most from?

The regime P3 is for: a model that already has the prerequisite skills, fine-tuned on a
pool that mixes problems it has mastered, problems at its frontier and problems out of
its reach. comp-MATH (:mod:`p3.compmath`, mini-MATH's format) has levels that compose
the levels below; a tiny model is warmed up on levels 1–3 (cached per seed), so level 4
is its frontier and level 5 out of reach. The pool holds levels 1–5 (shares 1:2:2:2:2);
the held-out test split is drawn the same way.

Fair arms. Every arm starts from the same warm model, trains the same number of
optimiser steps per epoch (``--budget`` problems / ``--batch-size``; a smaller
selection is cycled), with the same optimiser, schedule and training seed, through
:func:`p3.epoch.epoch_loop` (score → select → train, wired by the pipeline's own epoch flow). Arms:

- ``random``    ``p3 select --strategy random``
- ``oracle``    the upper reference: picks the frontier level (4) by its known label
                (then level 5 if short), at random within it
- ``p3-paper``  the paper's P3: likelihood difficulty over the whole solution, linear
                45 → 95 percentile pacing, DPP with quality = difficulty
- ``p3``        the configuration the project recommends (chosen on the tuning seeds;
                see :data:`ARM_SETTINGS` and docs/evidence.md)
- ``spl``, ``dpp``  pacing only / DPP only, with the paper's settings

Metric. Primary: the test split's *answer likelihood* — the mean probability of each
step's result tokens given the correct prefix (``p3 score --difficulty-span answer`` on
the test split: 1 − its difficulty), smooth, and it moves with learning. Secondary:
greedy exact-answer accuracy (``p3 evaluate``) of the warm and the final model.
Differences to ``random`` are paired by (warm-up seed, fine-tune seed), with 95 % t
intervals. A negative control (``--control``) reruns random and the P3 arms on a pool
and test of the frontier level alone, where selection has nothing to find.

    python bench/learning_efficiency.py            # the full benchmark (≤ 30 min, 2 cores)
    python bench/learning_efficiency.py --quick    # random, oracle, p3 on one seed (≤ 5 min)

Writes ``--out`` (default docs/results/): learning_efficiency.csv (one row per arm ×
pool × seed × fine-tune seed × epoch), .json (settings, timings, the verdicts),
.md (the tables) and .png (plots). Work files go to ``--work``; warm models are cached
in ``--cache``. Everything is seeded: the same command gives the same rows.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from p3 import contracts, storage
from p3.logs import configure, get_logger, step

log = get_logger("bench")

LEVELS = (1, 2, 3, 4, 5)
POOL_SHARES = (1, 2, 2, 2, 2)  # level 1 has few distinct problems (100 sums × 8 wordings)
WARM_LEVELS, WARM_SHARES = "1-4", (1, 3, 3, 0.25)  # a little of level 4: the frontier is partly known
FRONTIER = 4
TEST_LEVELS, TEST_SHARES = "4-5", (1, 1)  # what fine-tuning has to teach (see docs/evidence.md)

# Each arm: how its pool is scored (p3 score settings; None = not scored) and selected
# (p3 select settings). "oracle" selects by level in this file.
PAPER_SCORE = {"mode": "likelihood", "difficulty_span": "solution"}
ANSWER_SCORE = {"mode": "likelihood", "difficulty_span": "answer"}
ARM_SETTINGS: dict[str, tuple[dict | None, dict]] = {
    "random": (None, {"strategy": "random"}),
    "oracle": (None, {"strategy": "random"}),
    "p3-paper": (PAPER_SCORE, {"strategy": "p3"}),
    # chosen on tuning seed 10 (docs/evidence.md): answer-span difficulty, a band of the
    # pool between its 50th and 80th difficulty percentiles (neither mastered nor out of
    # reach), learnability quality, 10 % of the budget at random
    "p3": (ANSWER_SCORE,
           {"strategy": "p3", "quality": "learnability", "pacing_mode": "band", "pacing_lower_start": 50.0,
            "pacing_lower_end": 50.0, "pacing_start": 80.0, "pacing_end": 80.0, "reserve": 0.1}),
    "spl": (PAPER_SCORE, {"strategy": "spl"}),
    "dpp": (PAPER_SCORE, {"strategy": "dpp"}),
}
# Candidates for the recommended configuration, compared on the tuning seeds only.
ANSWER = ANSWER_SCORE
CANDIDATES: dict[str, tuple[dict | None, dict]] = {
    "p3-answer": (ANSWER, {"strategy": "p3"}),
    "p3-learn": (ANSWER, {"strategy": "p3", "quality": "learnability"}),
    "p3-band": (ANSWER, {"strategy": "p3", "quality": "learnability", "pacing_mode": "band"}),
    "p3-wide": (ANSWER, {"strategy": "p3", "quality": "learnability", "pacing_start": 80.0, "pacing_end": 100.0}),
    "p3-wide-reserve": (ANSWER, {"strategy": "p3", "quality": "learnability", "pacing_start": 80.0,
                                 "pacing_end": 100.0, "reserve": 0.1}),
    "dpp-learn": (ANSWER, {"strategy": "dpp", "quality": "learnability"}),
}
ALL_ARMS = {**ARM_SETTINGS, **CANDIDATES}
ARMS = tuple(ARM_SETTINGS)
CONTROL_ARMS = ("random", "p3-paper", "p3")
QUICK_ARMS = ("random", "oracle", "p3")


@dataclass
class Settings:
    """Sizes and training settings of one run (recorded with the results)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ft_seeds: list[int] = field(default_factory=lambda: [0, 1])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    control: bool = True
    control_ft_seeds: list[int] = field(default_factory=lambda: [0])
    perturb: int = 2
    perturb_only: bool = False
    epochs: int = 3
    eval_each_epoch: bool = False
    pool: int = 1000
    budget: int = 200
    test: int = 500
    greedy_test: int = 1000
    greedy_ft_seeds: list[int] = field(default_factory=lambda: [0])
    warmup_problems: int = 3000
    warmup_steps: int = 1000
    warmup_batch: int = 32
    lr: float = 3e-4
    lr_warmup_steps: int = 5
    batch_size: int = 8
    max_new_tokens: int = 64
    data_seed: int = 0
    jobs: int = 2

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.budget / self.batch_size)


# ----------------------------------------------------------------------------- data and warm-up


def make_data(s: Settings, work: Path) -> dict[str, str]:
    """Warm-up set (levels 1–3), the pool and test split (levels 1–5), and the control's (level 4)."""
    from p3.compmath import comp_problems

    paths = {n: str(work / "data" / f"{n}.parquet") for n in ("warmup", "pool", "test", "greedy", "all_test",
                                                              "control_pool", "control_test")}
    with step(log, "data"):
        storage.write_table(comp_problems(s.warmup_problems, WARM_LEVELS, s.data_seed + 1000, "train", list(WARM_SHARES)),
                            paths["warmup"])
        storage.write_table(comp_problems(s.pool, "1-5", s.data_seed, "train", list(POOL_SHARES)), paths["pool"])
        test = comp_problems(s.test, TEST_LEVELS, s.data_seed, "test", list(TEST_SHARES))
        storage.write_table(test, paths["test"])
        storage.write_table(comp_problems(s.test, "1-5", s.data_seed + 3, "test", list(POOL_SHARES)), paths["all_test"])
        storage.write_table(test.slice(0, s.greedy_test), paths["greedy"])
        storage.write_table(comp_problems(s.pool, str(FRONTIER), s.data_seed + 1, "train"), paths["control_pool"])
        storage.write_table(comp_problems(s.test, str(FRONTIER), s.data_seed + 1, "test"), paths["control_test"])
    return paths


def embed_pools(paths: dict[str, str], work: Path, control: bool) -> dict[str, str]:
    """MiniLM embeddings of each pool, once, shared by every arm (the DPP's features)."""
    from p3.embed import EmbedConfig, embed

    out = {}
    for pool in ("pool", "control_pool") if control else ("pool",):
        out[pool] = str(work / "data" / f"{pool}.embeddings.parquet")
        embed(EmbedConfig(problems=paths[pool], out=out[pool], device="cpu"))
    return out


def warm_key(s: Settings, seed: int) -> str:
    spec = json.dumps([s.warmup_problems, s.warmup_steps, s.warmup_batch, s.data_seed, seed, WARM_LEVELS,
                       WARM_SHARES, _source_digest()])
    return hashlib.sha1(spec.encode()).hexdigest()[:12]


def _source_digest() -> str:
    """The generator and the warm-up code (model, tokenizer, training loop) are part of the cache key."""
    import inspect

    import p3.compmath
    import p3.tiny

    code = [Path(p3.compmath.__file__).read_text()] + [inspect.getsource(f) for f in (
        p3.tiny.build_tokenizer, p3.tiny.build_model, p3.tiny.warm_up, p3.tiny.build_tiny_model)]
    return hashlib.sha1("".join(code).encode()).hexdigest()[:12]


def warm_model(s: Settings, paths: dict[str, str], seed: int, cache: Path) -> tuple[str, float]:
    """The tiny model warmed up on levels 1–3 (cached per seed and settings); (dir, seconds spent)."""
    from p3.tiny import TinyConfig, build_tiny_model

    out = cache / f"warm-seed{seed}-{warm_key(s, seed)}"
    if out.exists():
        return str(out), 0.0
    t = time.perf_counter()
    build_tiny_model(TinyConfig(out=str(out), train_on=paths["warmup"], steps=s.warmup_steps, seed=seed, threads=1,
                                max_len=128, batch_size=s.warmup_batch))
    return str(out), time.perf_counter() - t


# ----------------------------------------------------------------------------- measuring


def _cpu():
    from p3.generation import GenerationConfig

    return GenerationConfig(device="cpu", dtype="float32", max_len=128)


def answer_likelihood(model: str, problems: str, out: str) -> dict[str, float]:
    """Primary metric: mean answer-token probability given the correct prefix, overall and per level."""
    from p3.score import ScoreConfig, score

    score(ScoreConfig(problems=problems, model=model, out=out, mode="likelihood", difficulty_span="answer",
                      batch_size=64, generation=_cpu()))
    lik = contracts.read(out, contracts.DIFFICULTY).column("likelihood").to_numpy(zero_copy_only=False)
    levels = np.asarray([m["level"] for m in _meta(problems)])
    row = {"answer_lik": float(lik.mean())}
    for lv in np.unique(levels):
        row[f"answer_lik_L{lv}"] = float(lik[levels == lv].mean())
    return row


def all_levels(model: str, paths: dict[str, str], d: Path) -> dict[str, float]:
    """The answer likelihood on a test split of every level (as mixed as the pool): shows forgetting."""
    return {"all_" + k: v for k, v in answer_likelihood(model, paths["all_test"], str(d / "all_test_scores.parquet")).items()}


def greedy_accuracy(s: Settings, model: str, problems: str, out: str) -> float:
    from p3.evaluate import EvaluateConfig, evaluate
    from p3.generation import GenerationConfig

    gen = GenerationConfig(max_new_tokens=s.max_new_tokens, device="cpu", dtype="float32", max_len=128,
                           grade_workers=1)
    return float(evaluate(EvaluateConfig(problems=problems, model=model, out=out, batch_size=100,
                                         generation=gen))["accuracy"])


_META: dict[str, list[dict]] = {}


def _meta(path: str) -> list[dict]:
    if path not in _META:
        from p3.problems import load_problems, problem_meta

        _META[path] = problem_meta(load_problems(path))
    return _META[path]


def oracle_selector(pool: str):
    """Select the frontier level by its label (then the next levels), at random within it."""
    from p3.problems import load_problems

    table = load_problems(pool)
    ids, levels = table.column("id").to_pylist(), [m["level"] for m in _meta(pool)]

    def select(cfg) -> dict:
        rng = np.random.default_rng([cfg.seed, cfg.epoch])
        order = sorted(range(len(ids)), key=lambda i: (levels[i] < FRONTIER, levels[i]))  # 4, 5, then 1–3
        ranked: list[int] = []
        for lv in dict.fromkeys(levels[i] for i in order):
            ranked += list(rng.permutation([i for i in order if levels[i] == lv]))
        chosen = ranked[: cfg.budget]
        storage.write_table(pa.table({"id": pa.array([ids[i] for i in chosen], pa.string()),
                                      "rank": pa.array(range(len(chosen)), pa.int64()),
                                      "round": pa.array([0] * len(chosen), pa.int64()),
                                      "difficulty": pa.array([float("nan")] * len(chosen), pa.float64()),
                                      "epoch": pa.array([cfg.epoch] * len(chosen), pa.int64())},
                                     schema=contracts.SELECTION), cfg.out)
        report = {"strategy": "oracle", "epoch": cfg.epoch, "pool": len(ids), "eligible": len(ids),
                  "selected": len(chosen), "threshold": None}
        storage.write_json(report, cfg.report)
        return report

    return select


# ----------------------------------------------------------------------------- one arm


@dataclass(frozen=True)
class Cell:
    """One trained trajectory: an arm on a pool from one warm model with one fine-tune seed."""

    arm: str
    pool: str  # "main" or "control"
    seed: int
    ft_seed: int
    order_seed: int  # training data order; = ft_seed except in the perturbation runs


def run_cell(s: Settings, cell: Cell, paths: dict[str, str], emb: dict[str, str], warm: str, work: Path) -> list[dict]:
    """E epochs of one cell; a row per epoch (epoch 0 = the warm model, measured once per pool and seed)."""
    configure()  # a worker process is an entry point of its own: its log lines reach the console
    from p3.backends import cpu_threads
    from p3.epoch import InProcessSteps, epoch_loop
    from p3.score import ScoreConfig
    from p3.selection import SelectConfig, select
    from p3.train import TrainConfig

    pool_key = "pool" if cell.pool == "main" else "control_pool"
    test_key = "test" if cell.pool == "main" else "control_test"
    score_over, select_over = ALL_ARMS[cell.arm]
    run_dir = work / cell.pool / f"seed{cell.seed}" / f"ft{cell.ft_seed}-order{cell.order_seed}" / cell.arm
    shutil.rmtree(run_dir, ignore_errors=True)
    score_cfg = None if score_over is None else ScoreConfig(
        problems=paths[pool_key], model=warm, out="", batch_size=64, generation=_cpu(), **score_over)
    select_cfg = SelectConfig(problems=paths[pool_key], embeddings=emb[pool_key], epochs=s.epochs, budget=s.budget,
                              seed=cell.ft_seed, **select_over)
    train_cfg = TrainConfig(problems=paths[pool_key], selection="", model=warm, out="", full=True, lr=s.lr,
                            scheduler="cosine", warmup_steps=s.lr_warmup_steps, batch_size=s.batch_size,
                            max_steps=s.steps_per_epoch, epochs_per_round=1.0, max_len=128, seed=cell.order_seed,
                            device="cpu", save_steps=10**9, merge=False)
    selector = oracle_selector(paths[pool_key]) if cell.arm == "oracle" else select
    steps = InProcessSteps(str(run_dir), score_cfg, select_cfg, train_cfg, selector=selector)
    epoch_runs = epoch_loop(steps, s.epochs, warm)  # the pipeline's epochs: p3.epoch.epoch_flow
    rows, previous = [], None
    with cpu_threads(threads=1):
        for e in range(s.epochs):
            files = steps.files(e)
            with step(log, f"{cell.pool} seed {cell.seed}/{cell.ft_seed}/{cell.order_seed} {cell.arm} epoch {e}") as c:
                next(epoch_runs)  # score, select, train (inside this log line's time)
                secs = dict(steps.seconds[e])
                t = time.perf_counter()
                last = e == s.epochs - 1
                metrics = (answer_likelihood(files.model, paths[test_key], str(Path(files.dir) / "test_scores.parquet"))
                           if last or s.eval_each_epoch else {})
                if last and cell.pool == "main":
                    if cell.ft_seed in s.greedy_ft_seeds and cell.order_seed == cell.ft_seed:
                        metrics["accuracy"] = greedy_accuracy(s, files.model, paths["greedy"],
                                                              str(Path(files.dir) / "greedy.json"))
                    metrics.update(all_levels(files.model, paths, Path(files.dir)))
                secs["eval_s"] = time.perf_counter() - t
                c.update(answer_lik=round(metrics.get("answer_lik", float("nan")), 4),
                         **{k: round(v, 1) for k, v in secs.items()})
            rows.append({**asdict(cell), "epoch": e + 1, **_round(metrics), **selection_mix(files, paths[pool_key]),
                         "steps": storage.read_json(Path(files.model) / "trainer_state.json")["global_step"],
                         **{k: round(v, 2) for k, v in secs.items()}})
            if previous is not None:
                shutil.rmtree(previous.model, ignore_errors=True)  # only the newest model is kept
            previous = files
    return rows


def selection_mix(files, pool: str) -> dict:
    """The level mix of an epoch's selection, its size, and the pacing's eligible count."""
    from p3.problems import load_problems

    level_of = dict(zip(load_problems(pool).column("id").to_pylist(), (m["level"] for m in _meta(pool))))
    ids = contracts.read(files.selection, contracts.SELECTION).column("id").to_pylist()
    rep = storage.read_json(files.report)
    row = {"selected": len(ids), "eligible": rep.get("eligible")}
    for lv in LEVELS:
        row[f"sel_L{lv}"] = round(sum(level_of[i] == lv for i in ids) / max(1, len(ids)), 4)
    return row


def warm_rows(s: Settings, seed: int, paths: dict[str, str], warm: str, work: Path, pools: list[str]) -> list[dict]:
    """Epoch 0 of every cell of this seed: the warm model's metrics (the same start for every arm)."""
    configure()
    from p3.backends import cpu_threads

    rows = []
    with cpu_threads(threads=1):
        for pool in pools:
            test_key = "test" if pool == "main" else "control_test"
            d = work / pool / f"seed{seed}"
            d.mkdir(parents=True, exist_ok=True)
            m = answer_likelihood(warm, paths[test_key], str(d / "warm_test_scores.parquet"))
            if pool == "main":
                m["accuracy"] = greedy_accuracy(s, warm, paths["greedy"], str(d / "warm_greedy.json"))
                m.update(all_levels(warm, paths, d))
            rows.append({"arm": "warm", "pool": pool, "seed": seed, "epoch": 0, **_round(m)})
    return rows


def _round(d: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in d.items()}


# ----------------------------------------------------------------------------- statistics


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t (a 95 % two-sided interval)."""
    if df in T975:
        return T975[df]
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def paired(rows: list[dict], arm: str, base: str, pool: str, epoch: int, key: str = "answer_lik") -> dict | None:
    """``arm`` − ``base`` paired by (seed, ft_seed): mean, standard error, 95 % t interval, n."""
    def values(a):
        return {(r["seed"], r["ft_seed"]): r[key] for r in rows
                if r["arm"] == a and r["pool"] == pool and r["epoch"] == epoch and r["order_seed"] == r["ft_seed"]
                and r.get(key) is not None}

    x, y = values(arm), values(base)
    keys = sorted(set(x) & set(y))
    if len(keys) < 2:
        return None
    d = np.asarray([x[k] - y[k] for k in keys])
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    half = t975(len(d) - 1) * se
    return {"mean": float(d.mean()), "se": se, "lo": float(d.mean() - half), "hi": float(d.mean() + half),
            "n": len(d), "z": float(d.mean() / se) if se > 0 else float("inf")}


def verdicts(rows: list[dict], s: Settings) -> dict:
    """The pre-registered success rule (docs/evidence.md) for p3 and p3-paper, and the control."""
    out: dict = {}
    e = s.epochs
    head = paired(rows, "oracle", "random", "main", e)
    out["resolution"] = head
    for arm in ("p3", "p3-paper"):
        d = paired(rows, arm, "random", "main", e)
        if d is None or head is None:
            continue
        capture = d["mean"] / head["mean"] if head["mean"] > 0 else float("nan")
        out[arm] = {**d, "capture": capture, "ci_above_zero": d["lo"] > 0, "captures_third": capture >= 1 / 3,
                    "success": bool(d["lo"] > 0 and capture >= 1 / 3)}
    for arm in CONTROL_ARMS[1:]:
        d = paired(rows, arm, "random", "control", e)
        if d is not None:
            out[f"control {arm}"] = {**d, "ci_above_zero": d["lo"] > 0, "success": bool(d["lo"] > 0)}
    return out


def perturbation_spread(rows: list[dict], s: Settings) -> dict:
    """Std of the final primary metric over training orders of one seed cell, per arm (the
    cell's own order and the perturbed ones, 1000, 1001, …)."""
    out = {}
    final = [r for r in rows if r["arm"] != "warm" and r["pool"] == "main" and r["epoch"] == s.epochs]
    for arm, seed, ft in sorted({(r["arm"], r["seed"], r["ft_seed"]) for r in final if r["order_seed"] != r["ft_seed"]}):
        vals = [r["answer_lik"] for r in final if (r["arm"], r["seed"], r["ft_seed"]) == (arm, seed, ft)]
        if len(vals) >= 2:
            out[arm] = {"sd": float(np.std(vals, ddof=1)), "n": len(vals), "values": vals, "cell": f"{seed}/{ft}"}
    return out


# ----------------------------------------------------------------------------- outputs


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with storage.atomic_write(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _md(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(r) + " |" for r in body]]) + "\n"


def _ms(xs: list[float], d: int = 3) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{np.mean(xs):.{d}f} ± {np.std(xs, ddof=1):.{d}f}" if len(xs) > 1 else f"{xs[0]:.{d}f}"


def result_table(rows: list[dict], s: Settings, pool: str, arms: list[str]) -> str:
    """Per arm: primary metric per epoch and per level, greedy accuracy, paired Δ vs random, time."""
    e = s.epochs
    warm = [r for r in rows if r["arm"] == "warm" and r["pool"] == pool]
    lv_keys = sorted({k for r in warm for k in r if k.startswith("answer_lik_L")})
    head = ["arm", *[f"ans. lik. e{i}" for i in range(e + 1)], *[k.removeprefix("answer_lik_") for k in lv_keys],
            "Δ vs random [95 % CI]", "SEs", "greedy acc." if pool == "main" else None,
            "all levels e0 → e" + str(e) if pool == "main" else None, "L4 share", "score s",
            "select s", "train s"]
    head = [h for h in head if h]
    body = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm and r["pool"] == pool and r["order_seed"] == r["ft_seed"]]
        if not mine:
            continue
        cells = [arm, _ms([r["answer_lik"] for r in warm])]
        cells += [_ms([r.get("answer_lik") for r in mine if r["epoch"] == i]) for i in range(1, e + 1)]
        last = [r for r in mine if r["epoch"] == e]
        cells += [f"{np.mean([r.get(k, np.nan) for r in last]):.3f}" for k in lv_keys]
        d = paired(rows, arm, "random", pool, e) if arm != "random" else None
        cells += [f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "-", f"{d['z']:.1f}" if d else "-"]
        if pool == "main":
            cells.append(_ms([r.get("accuracy") for r in last]))
            cells.append(f"{np.mean([r['all_answer_lik'] for r in warm]):.3f} → {_ms([r.get('all_answer_lik') for r in last])}")
        cells.append(f"{np.mean([r['sel_L4'] for r in mine]):.2f}")
        for k in ("score_s", "select_s", "train_s"):
            cells.append(f"{np.median([sum(x[k] for x in mine if x['seed'] == r['seed'] and x['ft_seed'] == r['ft_seed']) for r in last]):.1f}")
        body.append(cells)
    return _md(head, body)


def selection_table(rows: list[dict], s: Settings, arms: list[str]) -> str:
    head = ["arm", "epoch", "eligible", *[f"L{lv}" for lv in LEVELS]]
    body = []
    for arm in arms:
        for e in range(1, s.epochs + 1):
            rs = [r for r in rows if r["arm"] == arm and r["pool"] == "main" and r["epoch"] == e
                  and r["order_seed"] == r["ft_seed"]]
            if rs:
                elig = [r["eligible"] for r in rs if isinstance(r.get("eligible"), (int, float))]
                body.append([arm, str(e - 1), f"{np.mean(elig):.0f}" if elig else "-",
                             *[f"{np.mean([r[f'sel_L{lv}'] for r in rs]):.2f}" for lv in LEVELS]])
    return _md(head, body)


def verdict_text(v: dict, spread: dict) -> str:
    lines = []
    r = v.get("resolution")
    if r:
        lines.append(f"- Resolution: oracle − random = {r['mean']:+.4f} (95 % CI [{r['lo']:+.4f}, {r['hi']:+.4f}], "
                     f"{r['z']:.1f} paired standard errors, n = {r['n']}); must reach ≥ 5: "
                     f"{'met' if r['z'] >= 5 else 'NOT met'}.")
    for arm in ("p3", "p3-paper"):
        if arm in v:
            d = v[arm]
            lines.append(f"- `{arm}` − random = {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}], captures "
                         f"{100 * d['capture']:.0f} % of the oracle − random headroom: "
                         f"**{'SUCCESS' if d['success'] else 'FAIL'}** (CI above zero: {d['ci_above_zero']}, "
                         f"≥ 1/3 of headroom: {d['captures_third']}).")
    for arm in CONTROL_ARMS[1:]:
        key = f"control {arm}"
        if key in v:
            d = v[key]
            lines.append(f"- Negative control, `{arm}` − random on the level-4-only pool = {d['mean']:+.4f} "
                         f"[{d['lo']:+.4f}, {d['hi']:+.4f}]: beats random: {d['ci_above_zero']} "
                         f"(expected: False).")
    for arm, sp in sorted(spread.items()):
        lines.append(f"- Perturbation spread, `{arm}` (seed cell {sp['cell']}, {sp['n']} training orders): sd "
                     f"{sp['sd']:.4f} of the final primary metric.")
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[dict], s: Settings, path: Path, command: str, took: float, stamp: dict,
                   v: dict, spread: dict) -> str:
    main_arms = [a for a in s.arms]
    text = "\n".join([
        "# Learning efficiency on comp-MATH (measured)\n",
        f"Command: `{command}`  ",
        (f"Wall time {took / 60:.1f} min" if math.isfinite(took) else "Wall time: not one run (a report of finished cells)")
        + f" on {stamp['cpus']} CPU core(s) ({stamp['machine']}), load average at start "
        f"{stamp['load_start']}, at end {stamp['load_end']}; {s.jobs} worker processes × 1 torch thread.  ",
        f"Setup: pool {s.pool} comp-MATH problems, levels 1–5 in shares {':'.join(map(str, POOL_SHARES))}; "
        f"warm model: {s.warmup_steps} steps (batch {s.warmup_batch}) on {s.warmup_problems} problems of levels 1–4 (shares {':'.join(map(str, WARM_SHARES))}); "
        f"{s.epochs} epochs × {s.steps_per_epoch} optimiser steps (budget {s.budget}, batch {s.batch_size}, lr "
        f"{s.lr} cosine after {s.lr_warmup_steps} warm-up steps, a fresh AdamW each epoch) for every arm; test "
        f"{s.test} held-out problems (greedy accuracy: {s.greedy_test} other held-out problems of the same levels, "
        f"fine-tune seeds {s.greedy_ft_seeds}); warm-up seeds {s.seeds} × "
        f"fine-tune seeds {s.ft_seeds} (negative control: {s.control_ft_seeds}).\n",
        "ans. lik.: the primary metric, the test split's (levels 4–5, the levels the warm model has not mastered) mean answer-token probability given the correct prefix "
        "(mean ± sd over seed cells; e0 = the warm model). L1–L5: per level after the last epoch. Δ vs random: "
        "paired by seed cell, 95 % t interval; SEs: Δ / its standard error. greedy acc.: exact final answer "
        "after the last epoch, on the greedy split (other held-out problems of levels 4–5; fine-tune seeds "
        f"{s.greedy_ft_seeds}). all levels: the answer likelihood on a held-out split of every level, mixed as "
        "the pool is (levels 1–3 falling = forgetting). L4 share: the frontier level's share of the selections. Seconds: median per cell, "
        "summed over epochs.\n",
        "## Main pool\n", result_table(rows, s, "main", main_arms),
        "## Negative control (pool and test of level 4 only)\n" if s.control else "",
        result_table(rows, s, "control", list(CONTROL_ARMS)) if s.control else "",
        "## Verdicts (pre-registered rule, docs/evidence.md)\n", verdict_text(v, spread),
        "## What each arm selected (main pool, mean over seed cells)\n", selection_table(rows, s, main_arms),
        "\n![primary metric per epoch](learning_efficiency.png)\n",
    ])
    storage.write_text(text, path)
    return text


def plot(rows: list[dict], s: Settings, path: Path) -> None:
    """Primary metric per epoch (mean, seed range) and each arm's level mix per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    arms = list(s.arms)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3))
    colors = plt.get_cmap("tab10")
    for i, arm in enumerate(arms):
        for ax, pool in ((axes[0], "main"), (axes[1], "control")):
            mine = [r for r in rows if r["arm"] == arm and r["pool"] == pool and r["order_seed"] == r["ft_seed"]]
            if not mine:
                continue
            warm = [r["answer_lik"] for r in rows if r["arm"] == "warm" and r["pool"] == pool]
            ys = [warm] + [[r["answer_lik"] for r in mine if r["epoch"] == e and r.get("answer_lik") is not None]
                           for e in range(1, s.epochs + 1)]
            x = np.asarray([e for e, y in enumerate(ys) if y])
            ys = [y for y in ys if y]
            ax.plot(x, [np.mean(y) for y in ys], "o-", color=colors(i), label=arm)
            ax.fill_between(x, [min(y) for y in ys], [max(y) for y in ys], color=colors(i), alpha=0.12)
    axes[0].set_title("main pool (levels 1–5): test answer likelihood")
    axes[1].set_title("negative control (level 4 only)")
    for ax in axes[:2]:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        mine = [r for r in rows if r["arm"] == arm and r["pool"] == "main" and r["order_seed"] == r["ft_seed"]]
        shares = [np.mean([r[f"sel_L{lv}"] for r in mine]) for lv in LEVELS]
        axes[2].bar(np.arange(len(LEVELS)) + i * width, shares, width, color=colors(i), label=arm)
    axes[2].set_xticks(np.arange(len(LEVELS)) + 0.4 - width / 2, [f"L{lv}" for lv in LEVELS])
    axes[2].set_title("what each arm trained on (share per level)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def _pool(jobs: int):
    import multiprocessing

    if jobs <= 1:
        return _Inline()
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


class _Inline:
    """The executor interface in this process (``--jobs 1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut


def cells(s: Settings) -> list[Cell]:
    """Every trajectory of the run, in an order whose every prefix is a usable result:
    each fine-tune seed's complete sets of arms over the warm-up seeds, the negative
    control after the first fine-tune seed, and the perturbation runs last."""
    main = {ft: [Cell(a, "main", sd, ft, ft) for sd in s.seeds for a in s.arms] for ft in s.ft_seeds}
    control = [Cell(a, "control", sd, ft, ft) for ft in s.control_ft_seeds for sd in s.seeds for a in CONTROL_ARMS]
    out = [] if s.perturb_only else main[s.ft_seeds[0]] + (control if s.control else [])
    for ft in [] if s.perturb_only else s.ft_seeds[1:]:
        out += main[ft]
    for a in ("random", "p3"):
        if a in s.arms:
            out += [Cell(a, "main", s.seeds[0], s.ft_seeds[0], 1000 + k) for k in range(s.perturb)]
    return out


def _order(rows: list[dict]) -> list[dict]:
    arms = {a: i for i, a in enumerate(["warm", *ALL_ARMS])}
    return sorted(rows, key=lambda r: (r["pool"] != "main", arms[r["arm"]], r["seed"], r.get("ft_seed", -1),
                                       r.get("order_seed", -1), r["epoch"]))


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="random, oracle, p3 on one warm-up seed, no control (≤ 5 min)")
    p.add_argument("--quick-tiny", action="store_true", help="a seconds-long run of every code path (tests)")
    p.add_argument("--seeds", type=int, nargs="+", help="warm-up seeds (default 0 1 2)")
    p.add_argument("--ft-seeds", type=int, nargs="+", help="fine-tune seeds (selection and training order; default 0 1)")
    p.add_argument("--control-ft-seeds", type=int, nargs="+", help="fine-tune seeds of the negative control (default 0)")
    p.add_argument("--arms", nargs="+", choices=list(ALL_ARMS), help="arms (default: " + " ".join(ARMS) + ")")
    p.add_argument("--no-control", action="store_true", help="skip the negative control")
    p.add_argument("--perturb-only", action="store_true", default=None,
                   help="only the perturbation runs (training orders 1000, 1001, … of the first seed cell)")
    p.add_argument("--eval-each-epoch", action="store_true", default=None,
                   help="measure the primary metric after every epoch (default: the warm and the final model)")
    d = Settings()
    for name in ("perturb", "epochs", "pool", "budget", "test", "greedy_test", "warmup_problems", "warmup_steps",
                 "warmup_batch", "lr", "lr_warmup_steps", "batch_size", "max_new_tokens", "data_seed", "jobs"):
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(d, name)), default=None)
    p.add_argument("--out", default="docs/results", help="results folder")
    p.add_argument("--work", default="bench/out/learning_efficiency", help="work folder (models, tables)")
    p.add_argument("--cache", default="bench/out/warm_models", help="warm models, cached per seed and settings")
    p.add_argument("--report-only", action="store_true",
                   help="write the tables and plot from --work's partial.csv (a run stopped early) without training")
    p.add_argument("--also-work", nargs="*", default=[],
                   help="--report-only: also the partial.csv of these work folders (runs of other seeds, same settings)")
    args = p.parse_args(argv)
    s = Settings()
    if args.quick:
        s = Settings(seeds=[0], ft_seeds=[0, 1], arms=list(QUICK_ARMS), control=False, perturb=0)
    if args.quick_tiny:
        s = Settings(seeds=[0], ft_seeds=[0, 1], control_ft_seeds=[0, 1], arms=["random", "oracle", "p3-paper", "p3"], control=True,
                     perturb=0, epochs=2, pool=60, budget=16, test=30, greedy_test=10, warmup_problems=60,
                     warmup_steps=6, warmup_batch=8, max_new_tokens=24, jobs=1)
    for name in asdict(s):
        v = getattr(args, name, None)
        if v is not None:
            setattr(s, name, list(v) if isinstance(v, list) else v)
    if args.no_control:
        s.control = False
    if "random" not in s.arms:
        p.error("the random arm is the baseline every difference is taken against: include it")
    return s, args


def main(argv: list[str] | None = None) -> dict:
    s, args = parse_args(argv)
    configure()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = " ".join(["python bench/learning_efficiency.py", *(sys.argv[1:] if argv is None else argv)])
    out, work, cache = Path(args.out), Path(args.work), Path(args.cache)
    if args.report_only:
        return report_partial(s, out, [work, *map(Path, args.also_work)], command)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    stamp = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
             "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    start = time.perf_counter()
    log.info(f"settings: {json.dumps(asdict(s))}")
    paths = make_data(s, work)
    emb = embed_pools(paths, work, s.control)
    pools = ["main", "control"] if s.control else ["main"]
    rows: list[dict] = []
    warm_s: dict[int, float] = {}
    with _pool(s.jobs) as ex:
        warm_futs = {sd: ex.submit(warm_model, s, paths, sd, cache) for sd in s.seeds}
        warm = {sd: f.result()[0] for sd, f in warm_futs.items()}
        warm_s = {sd: round(f.result()[1], 1) for sd, f in warm_futs.items()}
        futs = [ex.submit(warm_rows, s, sd, paths, warm[sd], work, pools) for sd in s.seeds]
        futs += [ex.submit(run_cell, s, c, paths, emb, warm[c.seed], work) for c in cells(s)]
        for f in futs:
            rows += f.result()
            write_csv(_order(rows), work / "partial.csv")  # a long run can be inspected while it goes
    stamp["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return write_results(_order(rows), s, out, command, time.perf_counter() - start, stamp, warm_s)


def report_partial(s: Settings, out: Path, works: list[Path], command: str) -> dict:
    """Tables and plot of the cells that runs finished (their partial.csv), marked as partial.

    Rows of the same cell and epoch from several runs must agree (the warm model's rows
    appear in every run of its seed); the first is kept.
    """
    seen: dict[tuple, dict] = {}
    for work in works:
        with open(work / "partial.csv") as fh:
            for r in csv.DictReader(fh):
                row = {k: _number(v) for k, v in r.items() if v != ""}
                key = tuple(row.get(k) for k in ("arm", "pool", "seed", "ft_seed", "order_seed", "epoch"))
                metrics = {k: v for k, v in row.items() if not k.endswith("_s")}
                if key in seen and {k: v for k, v in seen[key].items() if not k.endswith("_s")} != metrics:
                    raise ValueError(f"{work}: cell {key} differs from the same cell of an earlier run")
                seen.setdefault(key, row)
    rows = _order(list(seen.values()))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    stamp = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "load_start": "?",
             "load_end": load, "partial": True}
    return write_results(rows, s, out, command + "  (report of the finished cells only: --report-only)",
                         float("nan"), stamp, {})


def _number(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _finite(x):
    """JSON has no NaN or infinity: they are written as null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_results(rows: list[dict], s: Settings, out: Path, command: str, took: float, stamp: dict,
                  warm_s: dict) -> dict:
    v, spread = verdicts(rows, s), perturbation_spread(rows, s)
    out.mkdir(parents=True, exist_ok=True)
    storage.write_json(_finite({"settings": asdict(s), "command": command, "seconds": round(took, 1),
                                "warm_up_seconds": warm_s, "verdicts": v, "perturbation": spread, **stamp}),
                       out / "learning_efficiency.json")
    write_csv(rows, out / "learning_efficiency.csv")
    plot(rows, s, out / "learning_efficiency.png")
    text = write_markdown(rows, s, out / "learning_efficiency.md", command, took, stamp, v, spread)
    print(text)
    r = v.get("resolution")
    if r and "p3" in v:
        print(f"p3 − random / oracle − random (headroom captured): {v['p3']['capture']:.2f}")
    return {"rows": rows, "verdicts": v, "perturbation": spread, "seconds": took}


if __name__ == "__main__":
    main()
