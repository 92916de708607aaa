"""Learning efficiency on mini-MATH: P3 vs random, full, static, SPL-only, DPP-only.

Every arm starts from the same warmed-up tiny model (built once per seed, then copied),
trains for E epochs with the same optimiser settings, and — except ``full`` — on the
same number of problems per epoch (``--budget`` × pool). Before every epoch the arms
that need difficulty re-score the whole pool with *their own* current model
(likelihood difficulty: one forward pass per problem), exactly as the pipeline does.
After every epoch the model is evaluated greedily on a held-out test split.

Arms (``p3 select --strategy``): random · full (the whole pool every epoch) · static
(a curriculum on the dataset's own level labels, the same pacing schedule: static
difficulty instead of the policy's) · spl (policy-difficulty pacing only, random among
the eligible) · dpp (diversity only, over the whole pool) · p3 (pacing + DPP).

Writes to ``--out`` (default docs/results/): learning_efficiency.csv (one row per
seed × arm × epoch), learning_efficiency.md (the summary table, the command, and what
each arm selected), learning_efficiency.png (accuracy vs epoch, mean and seed range),
learning_efficiency_selection.png (what each arm trained on) and the p3 arm's
per-epoch report (seed 0). Work files go to ``--work`` (default bench/out/).

    python bench/learning_efficiency.py            # the full benchmark (≤ 30 min, 2 cores)
    python bench/learning_efficiency.py --quick    # one seed, random vs p3 (≤ 5 min)

Every number is seeded: the same command on the same versions reproduces the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from p3 import contracts, minimath, report, rundata, similarity, storage
from p3.logs import get_logger, progress, step

log = get_logger("bench")

ARMS = ("random", "full", "static", "spl", "dpp", "p3")
QUICK_ARMS = ("random", "p3")
# Arms whose selection reads this epoch's policy difficulty (static paces on level labels).
SCORED = {"spl", "dpp", "p3"}


@dataclass
class Settings:
    """Sizes and training settings of one benchmark run (all recorded with the results)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    epochs: int = 4
    pool: int = 2000
    test: int = 1000
    warmup_problems: int = 1000
    warmup_steps: int = 100
    budget: float = 0.3
    lr: float = 2e-3
    lr_warmup_steps: int = 10
    scheduler: str = "cosine"
    batch_size: int = 8
    passes: float = 1.0
    max_new_tokens: int = 96
    data_seed: int = 0
    threads: int = 1
    jobs: int = 2

    @property
    def k(self) -> int:
        return max(1, round(self.budget * self.pool))


# ----------------------------------------------------------------------------- steps


def make_data(s: Settings, work: Path) -> dict[str, str]:
    """Warm-up set, training pool (disjoint from it) and the held-out test split."""
    paths = {name: str(work / "data" / f"{name}.parquet") for name in ("warmup", "pool", "test")}
    with step(log, "data") as counts:
        train = minimath.synth_problems(s.warmup_problems + s.pool, levels="1-5", seed=s.data_seed, split="train")
        storage.write_table(train.slice(0, s.warmup_problems), paths["warmup"])
        storage.write_table(train.slice(s.warmup_problems), paths["pool"])
        storage.write_table(minimath.synth_problems(s.test, levels="1-5", seed=s.data_seed, split="test"), paths["test"])
        counts.update(warmup=s.warmup_problems, pool=s.pool, test=s.test)
    return paths


def embed_pool(paths: dict[str, str], work: Path) -> str:
    """Embeddings of the pool (bundled MiniLM): computed once, shared by every arm."""
    from p3.embed import EmbedConfig, embed

    out = str(work / "data" / "embeddings.parquet")
    embed(EmbedConfig(problems=paths["pool"], out=out, device="cpu"))
    return out


def warm_model(s: Settings, paths: dict[str, str], seed: int, work: Path) -> str:
    """The tiny model warmed up on the warm-up set: the one start point of every arm."""
    from p3.tiny import TinyConfig, build_tiny_model

    out = str(work / f"seed{seed}" / "warm")
    build_tiny_model(TinyConfig(out=out, train_on=paths["warmup"], steps=s.warmup_steps, seed=seed,
                                threads=s.threads, max_len=256))
    return out


def score_pool(paths: dict[str, str], model: str, out: str, epoch: int, split: str = "pool") -> None:
    from p3.score import ScoreConfig, score
    from p3.generation import GenerationConfig

    score(ScoreConfig(problems=paths[split], model=model, out=out, mode="likelihood", epoch=epoch, batch_size=64,
                      generation=GenerationConfig(device="cpu", dtype="float32", max_len=256)))


def select_arm(s: Settings, arm: str, paths: dict[str, str], emb: str, difficulty: str | None,
               epoch: int, seed: int, edir: Path, previous: str | None) -> None:
    from p3.selection import SelectConfig, select

    select(SelectConfig(problems=paths["pool"], difficulty=difficulty, embeddings=emb, strategy=arm, epoch=epoch,
                        epochs=s.epochs, budget=s.pool if arm == "full" else s.k,
                        out=str(edir / "selection.parquet"), report=str(edir / "selection_report.json"),
                        previous=previous, seed=seed))


def train_epoch(s: Settings, paths: dict[str, str], selection: str, model: str, out: str, seed: int) -> dict:
    """One pass over the selection (full fine-tuning: the tiny model is too small for LoRA)."""
    from p3.train import TrainConfig, train

    # Each epoch is a fresh Trainer (as in the pipeline; p3 train keeps no optimiser state
    # between runs): a fresh AdamW whose first steps move every weight by ~lr, so a short
    # linear warm-up keeps epoch starts gentle, and the cosine decay to 0 within the epoch
    # makes the evaluated model an annealed one (with a constant 2e-3 the test accuracy of
    # the last iterate swung by ±2 points from epoch to epoch).
    train(TrainConfig(problems=paths["pool"], selection=selection, model=model, out=out, full=True, lr=s.lr,
                      scheduler=s.scheduler, warmup_steps=s.lr_warmup_steps, batch_size=s.batch_size,
                      epochs_per_round=s.passes, max_len=256, seed=seed, device="cpu", save_steps=10**9, merge=False))
    state = storage.read_json(os.path.join(out, "trainer_state.json"))
    return {"steps": state.get("global_step")}


def evaluate_model(s: Settings, paths: dict[str, str], model: str, out: str, epoch: int) -> dict:
    """Greedy accuracy on the test split, plus the test solutions' mean step probability.

    Exact-answer accuracy of a tiny model moves in steps of 1/test; the likelihood the
    model gives the reference solutions (1 − likelihood difficulty) is a smooth second
    measure of the same learning.
    """
    from p3.evaluate import EvaluateConfig, evaluate
    from p3.generation import GenerationConfig

    gen = GenerationConfig(max_new_tokens=s.max_new_tokens, device="cpu", dtype="float32", grade_workers=1)
    metrics = evaluate(EvaluateConfig(problems=paths["test"], model=model, out=out, batch_size=100, epoch=epoch,
                                      generation=gen))
    scored = out.removesuffix(".json") + ".test_difficulty.parquet"
    score_pool(paths, model, scored, max(epoch, 0), split="test")
    metrics["test_likelihood"] = float(np.mean(contracts.read(scored, contracts.DIFFICULTY).column("likelihood")
                                               .to_numpy(zero_copy_only=False)))
    return metrics


def by_level(metrics: dict) -> dict[str, float]:
    return {str(k): float(v["accuracy"]) for k, v in metrics.get("by_level", {}).items()}


def run_arm(s: Settings, arm: str, seed: int, paths: dict[str, str], emb: str, warm: str, warm_eval: dict,
            work: Path) -> list[dict]:
    """E epochs of one arm from the warm model; one result row per epoch (epoch 0 = warm model).

    Every arm's pool is re-scored each epoch by its own current model: spl/dpp/p3 select
    with it, and for the others it is a diagnostic (what the policy finds hard). Scoring
    time is counted in ``wall_s`` only for the arms that need it.
    """
    import torch

    torch.set_num_threads(s.threads)
    rows = [result_row(arm, seed, 0, warm_eval, examples=0, seconds=0.0, score_s=0.0, train_s=0.0, sel=None)]
    model, previous = warm, None
    total_examples, total_s = 0, 0.0
    for e in range(s.epochs):
        edir = work / f"seed{seed}" / arm / f"epoch_{e}"
        edir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with step(log, f"seed {seed} {arm} epoch {e}") as counts:
            difficulty = str(edir / "difficulty.parquet")
            score_pool(paths, model, difficulty, e)
            score_s = time.perf_counter() - start
            select_arm(s, arm, paths, emb, difficulty, e, seed, edir, previous)
            sel_path = str(edir / "selection.parquet")
            t0 = time.perf_counter()
            new_model = str(edir / "model")
            train_epoch(s, paths, sel_path, model, new_model, seed)
            train_s = time.perf_counter() - t0
            metrics = evaluate_model(s, paths, new_model, str(edir / "metrics.json"), e)
            if model != warm:
                shutil.rmtree(model, ignore_errors=True)  # keep disk use flat: only the newest model
            model, previous = new_model, sel_path
            n_sel = contracts.read(sel_path, contracts.SELECTION).num_rows
            total_examples += n_sel
            seconds = time.perf_counter() - start - (0.0 if arm in SCORED else score_s)
            total_s += seconds
            counts.update(selected=n_sel, accuracy=round(metrics["accuracy"], 4), score_s=round(score_s, 1),
                          train_s=round(train_s, 1))
        sel_report = storage.read_json(edir / "selection_report.json")
        summary = selection_summary(sel_path, paths, sel_report)
        summary["pool_difficulty"] = float(np.mean(contracts.read(difficulty, contracts.DIFFICULTY)
                                                   .column("difficulty").to_numpy()))
        rows.append(result_row(arm, seed, e + 1, metrics, examples=total_examples, seconds=total_s,
                               score_s=score_s, train_s=train_s, sel=summary))
    shutil.rmtree(model, ignore_errors=True)
    return rows


def selection_summary(sel_path: str, paths: dict[str, str], sel_report: dict) -> dict:
    """What an epoch trained on: mean difficulty and the level mix of the selection."""
    sel = contracts.read(sel_path, contracts.SELECTION)
    meta = _pool_meta(paths["pool"])
    levels = [meta[i].get("level") for i in sel.column("id").to_pylist()]
    mix = {str(lv): levels.count(lv) / max(1, len(levels)) for lv in range(1, 6)}
    diffs = np.asarray(sel.column("difficulty").to_pylist(), dtype=float)
    return {"sel_difficulty": float(np.nanmean(diffs)) if len(diffs) else float("nan"),
            "threshold": sel_report.get("threshold"), "eligible": sel_report.get("eligible"),
            **{f"sel_level_{k}": v for k, v in mix.items()}}


_META: dict[str, dict] = {}


def _pool_meta(path: str) -> dict:
    if path not in _META:
        _META[path] = rundata.load_meta(path)
    return _META[path]


def result_row(arm: str, seed: int, epoch: int, metrics: dict, examples: int, seconds: float, score_s: float,
               train_s: float, sel: dict | None) -> dict:
    row = {"arm": arm, "seed": seed, "epoch": epoch, "accuracy": round(float(metrics["accuracy"]), 4),
           "test_likelihood": round(float(metrics["test_likelihood"]), 4),
           **{f"acc_level_{k}": round(v, 4) for k, v in by_level(metrics).items()},
           "examples_trained": examples, "wall_s": round(seconds, 1), "score_s": round(score_s, 1),
           "train_s": round(train_s, 1)}
    for k, v in (sel or {}).items():
        row[k] = round(v, 4) if isinstance(v, float) else v
    return row


# ----------------------------------------------------------------------------- outputs


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with storage.atomic_write(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def summary_table(rows: list[dict], s: Settings) -> tuple[list[str], list[list[str]]]:
    """Per arm: accuracy per epoch (mean ± std over seeds), final per-level, data, time."""
    head = ["arm", *[f"acc e{e}" for e in range(s.epochs + 1)], *[f"L{lv}" for lv in range(1, 6)],
            "test lik.", "examples", "% of full", "wall s"]
    out = []
    full_examples = s.pool * s.epochs
    for arm in s.arms:
        cells = [arm]
        for e in range(s.epochs + 1):
            accs = [r["accuracy"] for r in rows if r["arm"] == arm and r["epoch"] == e]
            cells.append(_mean_std(accs))
        last = [r for r in rows if r["arm"] == arm and r["epoch"] == s.epochs]
        for lv in range(1, 6):
            cells.append(f"{np.mean([r.get(f'acc_level_{lv}', np.nan) for r in last]):.3f}")
        ex = int(np.mean([r["examples_trained"] for r in last]))
        cells.append(_mean_std([r["test_likelihood"] for r in last]))
        cells += [str(ex), f"{100 * ex / full_examples:.0f}%", f"{np.median([r['wall_s'] for r in last]):.0f}"]
        out.append(cells)
    return head, out


def selection_table(rows: list[dict], s: Settings) -> tuple[list[str], list[list[str]]]:
    """What each arm trained on per epoch (mean over seeds): difficulty and level mix."""
    head = ["arm", "epoch", "eligible", "threshold", "sel. difficulty", *[f"L{lv}" for lv in range(1, 6)]]
    out = []
    for arm in s.arms:
        for e in range(1, s.epochs + 1):
            rs = [r for r in rows if r["arm"] == arm and r["epoch"] == e]
            thr = [r["threshold"] for r in rs if isinstance(r.get("threshold"), (int, float))]
            elig = [r["eligible"] for r in rs if isinstance(r.get("eligible"), (int, float))]
            out.append([arm, str(e - 1), f"{np.mean(elig):.0f}" if elig else "-", f"{np.mean(thr):.3f}" if thr else "-",
                        f"{np.mean([r['sel_difficulty'] for r in rs]):.3f}" if rs and "sel_difficulty" in rs[0] else "-",
                        *[f"{np.mean([r.get(f'sel_level_{lv}', 0) for r in rs]):.2f}" for lv in range(1, 6)]])
    return head, out


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def plot_accuracy(rows: list[dict], s: Settings, path: Path) -> None:
    """Accuracy vs epoch per arm: mean over seeds, shaded min–max seed range."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    colors = {"random": "#7f7f7f", "full": "#000000", "static": "#8c564b", "spl": "#1f77b4", "dpp": "#9467bd",
              "p3": "#d62728"}
    xs = list(range(s.epochs + 1))

    def grid(arm: str, key: str) -> np.ndarray:  # seeds × epochs
        return np.array([[next(r[key] for r in rows if r["arm"] == arm and r["seed"] == sd and r["epoch"] == e)
                          for e in xs] for sd in s.seeds], dtype=float)

    for arm in s.arms:
        acc, lik, ex = grid(arm, "accuracy"), grid(arm, "test_likelihood"), grid(arm, "examples_trained").mean(axis=0)
        c = colors.get(arm)
        for ax, x, y in ((axes[0], xs, acc), (axes[1], ex, acc), (axes[2], xs, lik)):
            ax.plot(x, y.mean(axis=0), marker="o", color=c, label=arm, linewidth=2.2 if arm == "p3" else 1.4)
            if len(s.seeds) > 1:
                ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=c, alpha=0.12)
    axes[0].set_xlabel("epoch (0 = warm-up model)")
    axes[1].set_xlabel("problems trained on (cumulative)")
    axes[2].set_xlabel("epoch (0 = warm-up model)")
    for ax in (axes[0], axes[2]):
        ax.set_xticks(xs)
    axes[0].set_ylabel("test accuracy (greedy, exact answer)")
    axes[1].set_ylabel("test accuracy (greedy, exact answer)")
    axes[2].set_ylabel("test solutions: mean step probability")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mini-MATH, tiny model: pool {s.pool}, budget {s.k}/epoch ({100 * s.budget:.0f}%), "
                 f"test {s.test}, {len(s.seeds)} seed(s); shaded = seed range")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_selection(rows: list[dict], s: Settings, path: Path) -> None:
    """Level mix of each arm's selection per epoch (mean over seeds), plus mean difficulty."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    arms = [a for a in s.arms if a != "full"]
    fig, axes = plt.subplots(1, len(arms), figsize=(2.6 * len(arms) + 1, 3.4), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, arm in zip(axes[0], arms):
        bottom = np.zeros(s.epochs)
        for lv in range(1, 6):
            share = np.array([np.mean([r.get(f"sel_level_{lv}", 0) for r in rows if r["arm"] == arm and r["epoch"] == e])
                              for e in range(1, s.epochs + 1)])
            ax.bar(range(s.epochs), share, bottom=bottom, color=cmap((lv - 1) / 4), label=f"L{lv}")
            bottom += share
        ax.set_title(arm)
        ax.set_xlabel("epoch")
        ax.set_xticks(range(s.epochs))
    axes[0][0].set_ylabel("share of the selection")
    axes[0][-1].legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.45, 1))
    fig.suptitle("What each arm trained on: level mix per epoch (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def arm_report(s: Settings, arm: str, seed: int, paths: dict[str, str], emb: str, work: Path) -> str:
    """The per-epoch selection report of one arm's run (the same renderer as the pipeline)."""
    meta, embeddings = _pool_meta(paths["pool"]), contracts.read_embeddings(emb)
    epochs = []
    for e in range(s.epochs):
        d = _epoch_data(work, seed, arm, e)
        d.meta, d.embeddings = meta, embeddings
        epochs.append(d)
    page, _ = report.render_run(epochs, title=f"Learning-efficiency bench: arm {arm}, seed {seed}", seed=seed)
    return page


def diagnostics(s: Settings, paths: dict[str, str], emb: str, work: Path) -> list[dict]:
    """Why the arms differ, per arm (mean over seeds and epochs), from the run's work files.

    - ``d_trained`` / ``d_untrained``: mean change of likelihood difficulty from one epoch
      to the next for the problems trained on in between vs the rest (negative = easier);
    - type mix of the selections;
    - diversity of the selection vs random same-size draws from the whole pool
      (log det(I + S), mean cosine: the report's measures).
    """
    meta = _pool_meta(paths["pool"])
    emb_ids, matrix = contracts.read_embeddings(emb)
    index = {pid: i for i, pid in enumerate(emb_ids)}
    whole_pool = np.arange(len(emb_ids))
    out = []
    for arm in s.arms:
        acc: dict[str, list[float]] = {}
        for seed in s.seeds:
            for e in range(s.epochs):
                d = _epoch_data(work, seed, arm, e)
                d.meta = meta
                change = rundata.difficulty_change(d)
                if change is not None and "mean_delta_trained" in change:
                    acc.setdefault("d_trained", []).append(change["mean_delta_trained"])
                    acc.setdefault("d_untrained", []).append(change["mean_delta_untrained"])
                mix = rundata.coverage(meta, d.selected, "type")
                for t in minimath.MINI_TYPES:
                    acc.setdefault(f"type_{t}", []).append(mix.get(t, 0) / max(1, len(d.selected)))
                chosen = np.array([index[p] for p in d.selected], dtype=np.int64)
                if len(chosen) >= 2:
                    div = similarity.diversity_vs_random(matrix, whole_pool, chosen, np.random.default_rng(seed))
                    for who in ("selected", "random"):
                        for key in ("logdet", "mean_cosine"):
                            acc.setdefault(f"{key}_{who}", []).append(div[who][key])
        out.append({"arm": arm, **{k: _nanmean(v) for k, v in acc.items()}})
    return out


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values (full trains on everything: no untrained problems)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _epoch_data(work: Path, seed: int, arm: str, e: int) -> rundata.EpochData:
    edir = work / f"seed{seed}" / arm / f"epoch_{e}"
    prev = work / f"seed{seed}" / arm / f"epoch_{e - 1}" if e else None
    return rundata.load_epoch(
        e, selection_report=str(edir / "selection_report.json"), difficulty=str(edir / "difficulty.parquet"),
        selection=str(edir / "selection.parquet"), metrics=str(edir / "metrics.json"),
        previous_difficulty=str(prev / "difficulty.parquet") if prev else None,
        previous_selection=str(prev / "selection.parquet") if prev else None)


def diagnostics_table(diag: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "Δ difficulty, trained", "Δ difficulty, not trained",
            *[f"{t} share" for t in minimath.MINI_TYPES], "log det sel. / random", "mean cos sel. / random"]
    rows = []
    for r in diag:
        f = lambda k, d=3: "-" if np.isnan(r.get(k, np.nan)) else f"{r[k]:+.{d}f}"  # noqa: E731
        g = lambda k: "-" if np.isnan(r.get(k, np.nan)) else f"{r[k]:.2f}"  # noqa: E731
        rows.append([r["arm"], f("d_trained", 4), f("d_untrained", 4), *[g(f"type_{t}") for t in minimath.MINI_TYPES],
                     f"{r.get('logdet_selected', np.nan):.1f} / {r.get('logdet_random', np.nan):.1f}",
                     f"{r.get('mean_cosine_selected', np.nan):.4f} / {r.get('mean_cosine_random', np.nan):.4f}"])
    return head, rows


def write_markdown(rows: list[dict], s: Settings, path: Path, command: str, took: float, stamp: dict,
                   diag: list[dict] | None = None) -> str:
    head, body = summary_table(rows, s)
    shead, sbody = selection_table(rows, s)
    final = {arm: np.mean([r["accuracy"] for r in rows if r["arm"] == arm and r["epoch"] == s.epochs]) for arm in s.arms}
    lines = [
        "# Learning efficiency on mini-MATH (measured)\n",
        f"Command: `{command}`  ",
        f"Total wall time: {took / 60:.1f} min on {stamp['cpus']} CPU core(s) ({stamp['machine']}); "
        f"{s.jobs} worker processes × {s.threads} torch thread(s).  ",
        f"Setup: pool {s.pool} mini-MATH problems (levels 1–5), budget {s.k} problems/epoch "
        f"({100 * s.budget:.0f}% of the pool; `full` trains on all {s.pool}), {s.epochs} epochs, test split "
        f"{s.test} (held out, greedy), seeds {s.seeds}. Every arm starts from the same warm-up model "
        f"({s.warmup_steps} steps on {s.warmup_problems} separate problems), full fine-tuning, lr {s.lr} "
        f"({s.scheduler} schedule within each epoch after {s.lr_warmup_steps} linear warm-up steps), "
        f"batch {s.batch_size}, {_passes(s.passes)} over the selection per epoch (a fresh optimiser each epoch, as in "
        "the pipeline: p3 train keeps no optimiser state between epochs); difficulty = likelihood, re-scored "
        f"each epoch by the arm's own model.\n",
        "Accuracy: exact final answer, greedy, mean ± std over seeds; epoch 0 is the warm-up model. L1–L5: "
        "accuracy per level after the last epoch. test lik.: mean step probability of the test split's reference "
        "solutions after the last epoch (higher = better; smooth where accuracy moves in steps). examples: "
        "problems trained on over all epochs; wall s: median seconds per arm (scoring counted only for the arms "
        "that select with it).\n",
        _md(head, body),
    ]
    if "p3" in final:
        others = ", ".join(f"{a} {final[a]:.3f}" for a in s.arms if a != "p3")
        lines.append(f"\nFinal accuracy: p3 {final['p3']:.3f} vs {others}.\n")
    lines += ["\n## What each arm selected\n",
              "Mean over seeds, per epoch: eligible pool after pacing, pacing threshold, mean difficulty of the "
              "selection (by the arm's own model), and the level mix of the selection.\n", _md(shead, sbody)]
    if diag:
        dhead, dbody = diagnostics_table(diag)
        lines += ["\n## Why: what training on each selection did\n",
                  "Mean over seeds and epochs. Δ difficulty: change of a problem's likelihood difficulty from one "
                  "epoch's scoring to the next, for the problems trained on in between vs the rest of the pool "
                  "(negative = the model finds them easier). Type share: the selection's mix of mini-MATH types "
                  "(the pool is ≈ 0.25 each). Diversity: the selection vs random draws of the same size from the "
                  "whole pool (log det(I + S), higher = more spread; mean pairwise cosine, lower = more spread).\n",
                  _md(dhead, dbody)]
    lines += ["\n![accuracy](learning_efficiency.png)\n", "![selection](learning_efficiency_selection.png)\n"]
    text = "\n".join(lines)
    storage.write_text(text, path)
    return text


def _passes(n: float) -> str:
    return "one pass" if n == 1 else f"{n:g} passes"


def _md(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(r) + " |" for r in rows]]) + "\n"


# ----------------------------------------------------------------------------- main


def warm_and_eval(s: Settings, paths: dict[str, str], seed: int, work: Path) -> tuple[str, dict]:
    """Warm-up model of one seed and its test accuracy (epoch 0 of every arm)."""
    import torch

    torch.set_num_threads(s.threads)
    with step(log, f"seed {seed} warm-up model") as counts:
        w = warm_model(s, paths, seed, work)
        ev = evaluate_model(s, paths, w, str(work / f"seed{seed}" / "warm_metrics.json"), -1)
        counts.update(accuracy=round(ev["accuracy"], 4))
    return w, ev


class _Inline:
    """The executor interface, run in this process (``--jobs 1``: tests, debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *iterables):
        return [fn(*args) for args in zip(*iterables)]

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut


def _pool(s: Settings):
    import multiprocessing

    if s.jobs <= 1:
        return _Inline()
    return ProcessPoolExecutor(max_workers=s.jobs, mp_context=multiprocessing.get_context("spawn"))


def _sorted(rows: list[dict]) -> list[dict]:
    order = {a: i for i, a in enumerate(ARMS)}
    return sorted(rows, key=lambda r: (order[r["arm"]], r["seed"], r["epoch"]))


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one seed, random vs p3 (≤ 5 min)")
    p.add_argument("--seeds", type=int, nargs="*", help="seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--arms", nargs="*", choices=ARMS, help="arms (default all; --quick: random p3)")
    d = Settings()
    for name in ("epochs", "pool", "test", "warmup_problems", "warmup_steps", "budget", "lr", "lr_warmup_steps", "scheduler", "batch_size",
                 "passes", "max_new_tokens", "data_seed", "threads", "jobs"):
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(d, name)), default=None)
    p.add_argument("--out", default="docs/results", help="results folder (table, plots)")
    p.add_argument("--work", default="bench/out/learning_efficiency", help="work folder (models, tables)")
    p.add_argument("--replot", action="store_true",
                   help="only rebuild tables, plots and report from a finished run's --out and --work files")
    args = p.parse_args(argv)
    s = Settings()
    if args.quick:
        s = Settings(seeds=[0], arms=list(QUICK_ARMS), pool=400, test=100, epochs=4, warmup_steps=100)
    for name in asdict(s):
        v = getattr(args, name, None)
        if v is not None:
            setattr(s, name, list(v) if isinstance(v, list) else v)
    unknown = set(s.arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}")
    return s, args


def main(argv: list[str] | None = None) -> dict:
    import torch

    s, args = parse_args(argv)
    torch.set_num_threads(s.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = " ".join(["python bench/learning_efficiency.py", *(sys.argv[1:] if argv is None else argv)])
    out, work = Path(args.out), Path(args.work)
    if args.replot:
        return replot(out, work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    log.info(f"settings: {json.dumps(asdict(s))}")
    paths = make_data(s, work)
    emb = embed_pool(paths, work)
    rows: list[dict] = []
    # Tiny models use one core badly with two threads; two single-thread processes use
    # both cores fully. Warm-ups first (one per seed), then every (seed, arm), longest first.
    with _pool(s) as ex:
        warm = dict(zip(s.seeds, ex.map(warm_and_eval, [s] * len(s.seeds), [paths] * len(s.seeds), s.seeds,
                                        [work] * len(s.seeds))))
        cells = sorted(((seed, arm) for seed in s.seeds for arm in s.arms), key=lambda c: (c[1] != "full", c))
        futures = [ex.submit(run_arm, s, arm, seed, paths, emb, *warm[seed], work) for seed, arm in cells]
        for fut in progress(as_completed(futures), "bench", total=len(futures), unit="arm"):
            rows += fut.result()
            write_csv(_sorted(rows), work / "partial.csv")  # a long run can be inspected while it goes
    rows = _sorted(rows)
    took = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    stamp = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    storage.write_json({"settings": asdict(s), "command": command, "seconds": round(took, 1), **stamp},
                       out / "learning_efficiency.json")
    write_csv(rows, out / "learning_efficiency.csv")
    return write_outputs(rows, s, out, work, paths, emb, command, took, stamp)


def write_outputs(rows: list[dict], s: Settings, out: Path, work: Path, paths: dict[str, str], emb: str,
                  command: str, took: float, stamp: dict) -> dict:
    """Plots, the Markdown table with diagnostics, and the p3 arm's report, from the rows and work files."""
    plot_accuracy(rows, s, out / "learning_efficiency.png")
    plot_selection(rows, s, out / "learning_efficiency_selection.png")
    diag = diagnostics(s, paths, emb, work)
    text = write_markdown(rows, s, out / "learning_efficiency.md", command, took, stamp, diag)
    if "p3" in s.arms:
        storage.write_text(arm_report(s, "p3", s.seeds[0], paths, emb, work),
                           out / f"learning_efficiency_p3_seed{s.seeds[0]}_report.html")
    print(text)
    final = {arm: float(np.mean([r["accuracy"] for r in rows if r["arm"] == arm and r["epoch"] == s.epochs]))
             for arm in s.arms}
    if "p3" in final and "random" in final and final["random"] > 0:
        print(f"p3 / random final accuracy: {final['p3'] / final['random']:.2f}x")
    return {"rows": rows, "final": final, "seconds": took, "diagnostics": diag}


def replot(out: Path, work: Path) -> dict:
    """Rebuild the tables, plots and report of a finished run from its CSV, JSON and work files."""
    meta = storage.read_json(out / "learning_efficiency.json")
    s = Settings(**meta["settings"])
    with open(out / "learning_efficiency.csv") as fh:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    paths = {name: str(work / "data" / f"{name}.parquet") for name in ("warmup", "pool", "test")}
    stamp = {"cpus": meta["cpus"], "machine": meta["machine"]}
    return write_outputs(rows, s, out, work, paths, str(work / "data" / "embeddings.parquet"), meta["command"],
                         meta["seconds"], stamp)


def _number(v: str):
    if v == "":
        return None  # as written: a value the row does not have (e.g. no pacing threshold)
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


if __name__ == "__main__":
    main()
