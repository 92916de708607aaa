"""Real-data check on MATH: does the DPP selection cover the 7 subjects and 5 levels?

Runs the project's own steps on a real MATH file — ``p3 data prepare`` → ``p3 embed``
(bundled all-MiniLM-L6-v2, offline) → ``p3 select --strategy dpp`` — and compares the
selection's coverage of subjects (meta ``type``) and levels with random selections of
the same size from the same pool (mean ± std over ``--random-draws`` seeds).

No policy is involved: unless ``--difficulty`` names a difficulty table from
``p3 score``, every problem gets the same difficulty and the DPP's quality is uniform,
so the picks are driven by the embeddings alone (the diversity half of P3).

Figures per budget: problems per subject and per level; how many of the 7 subjects / 5
levels appear; normalised entropy of the subject and level mix (1 = perfectly even);
total-variation distance from the pool's mix (0 = same proportions); mean pairwise
cosine and log det(I + S) of the picks (the report's diversity measures).

    python bench/math_coverage.py --source /path/to/math_train.jsonl
    python bench/math_coverage.py --source /work/shared/data/math/math_test_sample_500.jsonl --split test

The full MATH train split (7,500 problems) is the same command on its JSONL, or on a HF
dataset that ``p3 data prepare`` reads (with the 7 subject configs joined by commas
through ``--hf-config``); see docs/evidence.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from p3 import contracts, rundata, similarity, storage
from p3.logs import get_logger, step

log = get_logger("math-coverage")

SUBJECTS = ("Prealgebra", "Algebra", "Number Theory", "Counting & Probability", "Geometry",
            "Intermediate Algebra", "Precalculus")
LEVELS = ("1", "2", "3", "4", "5")


def prepare_and_embed(source: str, split: str, work: Path, limit: int | None, embedder: str,
                      hf_config: str | None = None) -> tuple[str, str]:
    """``p3 data prepare`` then ``p3 embed``: the problems table and its embeddings."""
    from p3.sources import PrepareConfig, prepare
    from p3.embed import EmbedConfig, embed

    problems, emb = str(work / "problems.parquet"), str(work / "embeddings.parquet")
    prepare(PrepareConfig(task="math", source=source, out=problems, split=split, limit=limit, skip_invalid=True,
                          hf_config=hf_config))
    embed(EmbedConfig(problems=problems, out=emb, embedder=embedder, device="cpu"))
    return problems, emb


def uniform_difficulty(problems: str, out: str) -> str:
    """A difficulty table with one value for every problem (no policy: quality is uniform)."""
    ids = contracts.read(problems, contracts.PROBLEMS).column("id").to_pylist()
    n = len(ids)
    storage.write_table(pa.table({"id": ids, "epoch": [0] * n, "difficulty": [0.5] * n, "likelihood": [None] * n,
                                  "pass_rate": [None] * n, "n_rollouts": [0] * n}, schema=contracts.DIFFICULTY), out)
    return out


def dpp_selection(problems: str, emb: str, difficulty: str, budget: int, out: Path) -> list[str]:
    """``p3 select --strategy dpp`` (one epoch, no pacing); the picked ids in rank order."""
    from p3.selection import SelectConfig, select

    sel = str(out / f"selection_k{budget}.parquet")
    select(SelectConfig(problems=problems, out=sel, difficulty=difficulty, embeddings=emb, strategy="dpp",
                        budget=budget, epochs=1, quality="uniform", report=str(out / f"selection_k{budget}.json")))
    t = contracts.read(sel, contracts.SELECTION).sort_by("rank")
    return t.column("id").to_pylist()


def mix(meta: dict[str, dict], ids: list[str], key: str, values: tuple[str, ...]) -> np.ndarray:
    """Counts of each of ``values`` of meta[key] over ``ids`` (levels compared as strings)."""
    counts = rundata.coverage(meta, ids, key)
    return np.array([counts.get(v, 0) for v in values], dtype=float)


def coverage_figures(counts: np.ndarray, pool: np.ndarray) -> dict[str, float]:
    """How many categories appear, evenness (normalised entropy), distance from the pool's mix."""
    p = counts / max(1.0, counts.sum())
    q = pool / max(1.0, pool.sum())
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(len(p))) if len(p) > 1 else 1.0
    return {"covered": int((counts > 0).sum()), "entropy": entropy, "tv_from_pool": float(0.5 * np.abs(p - q).sum()),
            "min_count": int(counts.min())}


def evaluate_budget(meta, ids_pool, x, index, picks: list[str], draws: int, seed: int) -> dict:
    """DPP vs random (``draws`` seeded draws) for one budget."""
    k = len(picks)
    out: dict = {"k": k}
    pool_counts = {key: mix(meta, ids_pool, key, vals) for key, vals in (("type", SUBJECTS), ("level", LEVELS))}
    rng = np.random.default_rng(seed)
    random_sets = [[ids_pool[i] for i in rng.choice(len(ids_pool), size=k, replace=False)] for _ in range(draws)]
    for name, sets in (("dpp", [picks]), ("random", random_sets)):
        per = []
        for s in sets:
            row = {}
            for key, vals in (("type", SUBJECTS), ("level", LEVELS)):
                c = mix(meta, s, key, vals)
                row[f"{key}_counts"] = c
                for fk, fv in coverage_figures(c, pool_counts[key]).items():
                    row[f"{key}_{fk}"] = fv
            row.update(similarity.diversity(x[[index[p] for p in s]]))
            per.append(row)
        agg = {}
        for key in per[0]:
            vals = np.array([r[key] for r in per], dtype=float)
            agg[key] = vals.mean(axis=0).tolist() if vals.ndim > 1 else float(vals.mean())
            if vals.ndim == 1:
                agg[key + "_std"] = float(vals.std())
        out[name] = agg
    out["pool"] = {key: pool_counts[key].tolist() for key in pool_counts}
    return out


def markdown(results: list[dict], n_pool: int, source: str, command: str, seconds: float, draws: int) -> str:
    lines = ["# MATH coverage: DPP selection vs random (measured)\n",
             f"Command: `{command}`  ", f"Source: `{source}` ({n_pool} problems after prepare); "
             f"embeddings: all-MiniLM-L6-v2; DPP quality uniform (embeddings only); random = mean ± std of "
             f"{draws} seeded draws of the same size. Took {seconds:.0f} s.\n",
             "Subjects covered (of 7) / levels covered (of 5); evenness = normalised entropy of the mix "
             "(1 = even); TV = total-variation distance of the mix from the pool's (0 = same proportions); "
             "min = problems of the rarest subject/level; cosine = mean pairwise cosine (lower = more diverse).\n"]
    head = ["k", "selection", "subjects", "subj. evenness", "subj. TV", "subj. min", "levels", "level evenness",
            "level TV", "level min", "mean cosine", "log det(I+S)"]
    rows = []
    for r in results:
        for name in ("dpp", "random"):
            a = r[name]
            pm = (lambda key: f"{a[key]:.3f} ± {a[key + '_std']:.3f}") if name == "random" else (lambda key: f"{a[key]:.3f}")
            pn = (lambda key: f"{a[key]:.1f}") if name == "random" else (lambda key: f"{a[key]:.0f}")
            rows.append([str(r["k"]), name, pn("type_covered"), pm("type_entropy"), pm("type_tv_from_pool"),
                         pn("type_min_count"), pn("level_covered"), pm("level_entropy"), pm("level_tv_from_pool"),
                         pn("level_min_count"), pm("mean_cosine"), pm("logdet")])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("\n## Problems per subject and level\n")
    head2 = ["k", "selection", *SUBJECTS, *[f"L{lv}" for lv in LEVELS]]
    lines.append("| " + " | ".join(head2) + " |")
    lines.append("|" + "---|" * len(head2))
    pool = results[0]["pool"]
    lines.append("| " + " | ".join([str(n_pool), "pool", *[f"{v:.0f}" for v in pool["type"]],
                                    *[f"{v:.0f}" for v in pool["level"]]]) + " |")
    for r in results:
        for name in ("dpp", "random"):
            a = r[name]
            lines.append("| " + " | ".join([str(r["k"]), name, *[f"{v:.1f}" for v in a["type_counts"]],
                                            *[f"{v:.1f}" for v in a["level_counts"]]]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="MATH file (.jsonl/.json/.parquet, local or s3://) or hf:NAME (a hub dataset)")
    p.add_argument("--split", default="train", help="split name (HF datasets; also part of the problem ids)")
    p.add_argument("--hf-config", default=None, help="HF dataset config(s), comma-separated (e.g. the 7 subjects)")
    p.add_argument("--budgets", type=float, nargs="*", default=[0.02, 0.05, 0.1, 0.2],
                   help="selection sizes: fractions of the pool (< 1) or counts (≥ 1)")
    p.add_argument("--limit", type=int, default=None, help="use a seeded sample of this many problems")
    p.add_argument("--difficulty", default=None, help="a difficulty table from `p3 score` (default: uniform)")
    p.add_argument("--embedder", default="st:all-MiniLM-L6-v2", help="p3 embed --embedder")
    p.add_argument("--random-draws", type=int, default=20, help="random selections per budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="bench/out/math_coverage", help="work folder")
    p.add_argument("--out", default="docs/results/math_coverage", help="output stem (.md and .json are written)")
    args = p.parse_args(argv)
    command = "python bench/math_coverage.py " + " ".join(sys.argv[1:] if argv is None else argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    problems, emb = prepare_and_embed(args.source, args.split, work, args.limit, args.embedder, args.hf_config)
    difficulty = args.difficulty or uniform_difficulty(problems, str(work / "difficulty.parquet"))
    meta = rundata.load_meta(problems)
    ids_pool = list(meta)  # row order
    emb_ids, matrix = contracts.read_embeddings(emb)
    index = {pid: i for i, pid in enumerate(emb_ids)}
    every = np.arange(len(matrix))
    x = similarity.standardise(matrix, every, *similarity.pool_scaling(matrix, every))
    results = []
    for b in args.budgets:
        k = int(b) if b >= 1 else max(2, round(b * len(ids_pool)))
        k = min(k, len(ids_pool))
        with step(log, f"budget {k}") as counts:
            picks = dpp_selection(problems, emb, difficulty, k, work)
            results.append(evaluate_budget(meta, ids_pool, x, index, picks, args.random_draws, args.seed))
            counts.update(subjects_dpp=results[-1]["dpp"]["type_covered"],
                          subjects_random=round(results[-1]["random"]["type_covered"], 1))
    took = time.perf_counter() - start
    text = markdown(results, len(ids_pool), args.source, command, took, args.random_draws)
    storage.write_text(text, args.out + ".md")
    storage.write_json({"source": args.source, "pool": len(ids_pool), "command": command, "seconds": round(took, 1),
                        "results": results}, args.out + ".json")
    print(text)
    for r in results:
        print(f"k={r['k']}: subjects covered dpp {r['dpp']['type_covered']:.0f} vs random "
              f"{r['random']['type_covered']:.1f}; subject evenness dpp/random "
              f"{r['dpp']['type_entropy'] / r['random']['type_entropy']:.3f}x")
    return {"results": results, "pool": len(ids_pool)}


if __name__ == "__main__":
    main()
