"""DPP selection at scale: p3.dpp vs a dense implementation of the paper's algorithm.

One run, side by side (docs/design.md §5):

1. N=10k, k=1k, d=384: the project's selector vs the dense greedy below (full N×N
   kernel per round, Chen et al.'s fast greedy MAP as in the paper's code): same picks?,
   time ratio (medians of repeats for the selector), peak-memory ratio (peak RSS of a
   fresh process each, and tracemalloc's peak of the algorithm's own allocations);
2. the selector alone at N=100k/k=10k and N=1M/k=100k (time, peak RSS; at 100k also
   float32 screening vs float64 throughout: same picks?).

``--quick`` runs step 1 only. Each measurement runs in a fresh process so peak RSS
belongs to it. The last line is ``dpp speedup=X.Xx memory=Y.Yx same_picks=true``.
Results also go to ``bench/out/dpp_scale.json``.

    .venv/bin/python bench/dpp_scale.py --quick
    .venv/bin/python bench/dpp_scale.py            # ~10+ min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import time
import tracemalloc

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
# MiniLM embeddings of 40k real texts, beside the repository (not part of a fresh clone)
REAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "embeddings",
                    "minilm_real_text_40k.npy")


# -- the dense baseline: the paper's algorithm, written plainly ----------------------------
def dense_select(X: np.ndarray, q: np.ndarray, k: int, eps: float = 1e-10) -> list[int]:
    """Rounds of dense greedy MAP: standardise the pool, L2-normalise, build
    L = q·(F Fᵀ)·q, run fast greedy MAP until the best residual < eps, remove, repeat."""
    X = np.asarray(X, dtype=np.float64)
    m0 = X.mean(axis=0)
    pool = np.arange(len(X))
    picks: list[int] = []
    while len(picks) < k and len(pool):
        Xp = X[pool]
        mu, var = Xp.mean(axis=0), Xp.var(axis=0)
        const = var <= 1e-10 * ((Xp - m0) ** 2).mean(axis=0)  # "std 0 keeps std 1"
        Y = np.where(const, 0.0, (Xp - mu) / np.where(const, 1.0, np.sqrt(var)))
        norms = np.linalg.norm(Y, axis=1, keepdims=True)
        F = np.divide(Y, norms, out=np.zeros_like(Y), where=norms > 0)
        similarities = np.dot(F, F.T)
        scores = q[pool]
        kernel = scores.reshape((-1, 1)) * similarities * scores.reshape((1, -1))
        del similarities
        got = fast_greedy_map(kernel, k - len(picks), eps)
        del kernel
        if not got:
            break
        picks += pool[got].tolist()
        pool = np.delete(pool, got)
    return picks


def fast_greedy_map(kernel: np.ndarray, max_length: int, eps: float) -> list[int]:
    """Chen, Zhang & Zhou (2018), Algorithm 1, as in their reference code."""
    item_size = kernel.shape[0]
    cis = np.zeros((max_length, item_size))
    di2s = np.copy(np.diag(kernel))
    selected: list[int] = []
    j = int(np.argmax(di2s))
    while len(selected) < max_length and di2s[j] >= eps:
        selected.append(j)
        t = len(selected) - 1
        eis = (kernel[j, :] - np.dot(cis[:t, j], cis[:t, :])) / math.sqrt(di2s[j])
        cis[t, :] = eis
        di2s -= np.square(eis)
        di2s[j] = -np.inf
        j = int(np.argmax(di2s))
    return selected


# -- data and measurement -------------------------------------------------------------------
def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like data, float32: Gaussian with a decaying spectrum in random
    (not axis-aligned) directions, so per-dimension standardisation keeps it; q ~ U(0, 1)."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1.0 + np.arange(d) / 16.0)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mix = (scale[:, None] * rotation).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        X[a:b] = rng.standard_normal((b - a, d), dtype=np.float32) @ mix
    return X, rng.uniform(0.0, 1.0, n)


def make_matched(n: int, d: int, real: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Data matching the real sample's covariance, float32: mean, per-dimension scale and
    eigen-spectrum of ``real`` (an (M, d) .npy), drawn as μ + (g·√λ) Vᵀ with g Gaussian
    and C = V diag(λ) Vᵀ the sample covariance; q ~ U(0, 1) as make_data's."""
    mu, mix = _real_moments(real)
    if mu.shape[0] != d:
        raise SystemExit(f"{real}: dimension {mu.shape[0]}, not {d}")
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        X[a:b] = rng.standard_normal((b - a, d), dtype=np.float32) @ mix + mu
    return X, rng.uniform(0.0, 1.0, n)


def _real_moments(real: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and mixing matrix of the real sample, cached in bench/out so that a measured
    process never holds the sample itself (peak RSS is a high-water mark)."""
    cache = os.path.join(OUT, "real_moments.npz")
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(real):
        got = np.load(cache)
        return got["mu"], got["mix"]
    R = np.load(real).astype(np.float64)
    mu = R.mean(axis=0)
    lam, V = np.linalg.eigh(np.cov(R, rowvar=False))
    mix = np.sqrt(np.clip(lam, 0.0, None))[:, None] * V.T  # rows: √λ_j v_jᵀ
    mu, mix = mu.astype(np.float32), mix.astype(np.float32)
    os.makedirs(OUT, exist_ok=True)
    np.savez(cache + ".tmp.npz", mu=mu, mix=mix)
    os.replace(cache + ".tmp.npz", cache)
    return mu, mix


def load_real(n: int, real: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first n rows of the real sample, float32; q ~ U(0, 1) as make_data's."""
    X = np.load(real)[:n].astype(np.float32)
    if len(X) < n:
        raise SystemExit(f"{real} has {len(X)} rows, fewer than N={n}")
    return X, np.random.default_rng(seed).uniform(0.0, 1.0, n)


def data_for(kind: str, n: int, d: int, real: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "synthetic":
        return make_data(n, d)
    if kind == "matched":
        return make_matched(n, d, real)
    return load_real(n, real)


def _run(job: dict) -> dict:
    """One measurement in this (fresh) process."""
    if job.get("verbose"):  # progress of long runs: p3.dpp logs every 25 rounds
        import logging

        logging.basicConfig(level=logging.INFO, format="    %(asctime)s %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("p3.dpp").setLevel(logging.DEBUG)
    X, q = data_for(job.get("data", "synthetic"), job["n"], job["d"], job.get("real", ""))
    base_rss = _rss_mb()
    if job.get("trace"):
        tracemalloc.start()
    t0 = time.perf_counter()
    if job["method"] == "dense":
        picks = dense_select(X, q, job["k"])
        extra = {}
    else:
        from p3.dpp import dpp_select

        res = dpp_select(X, q, job["k"], precision=job.get("precision", "auto"), device="cpu")
        picks = res.order.tolist()
        extra = {"rounds": res.n_rounds, "full_flushes": res.flushes, "precision": res.precision}
    took = time.perf_counter() - t0
    out = {"seconds": took, "peak_rss_mb": _rss_mb(), "input_rss_mb": base_rss, "picks": picks, **extra}
    if job.get("trace"):
        out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out


def _rss_mb() -> float:
    """This process's peak RSS: VmHWM, the high-water mark of its own address space.
    Not ru_maxrss: exec records the *launching* process's high-water mark there too
    (Linux copies the old mm's hiwater_rss into the new process's maxrss at exec, and
    Python's subprocess vforks), so a child started by a bench that had generated a 1M
    matrix and its tables reported ~4 GB whatever it used itself."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration):  # not Linux: ru_maxrss (may include the launcher's)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# `p3 select` with its own peak RSS written to $P3_BENCH_PEAK at exit (see _rss_mb)
_CLI_WITH_PEAK = (
    "import atexit, os, runpy, sys\n"
    "def peak():\n"
    "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "    open(os.environ['P3_BENCH_PEAK'], 'w').write(line.split()[1])\n"
    "atexit.register(peak)\n"
    "sys.argv[0] = 'p3.cli'\n"
    "runpy.run_module('p3.cli', run_name='__main__', alter_sys=True)\n"
)


def measure(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_run, (job,))


# -- the step a user runs: `p3 select` over Parquet files, side by side with dpp_select ------
def write_tables(folder: str, X: np.ndarray, q: np.ndarray) -> dict:
    """Problems, difficulty (= q) and embeddings tables for X, as the pipeline's steps
    write them (row i has id ``p{i:07d}``; meta has a level and a type for coverage)."""
    import pyarrow as pa

    from p3 import contracts, storage

    n, d = X.shape
    ids = pa.array([f"p{i:07d}" for i in range(n)], pa.string())
    none = pa.nulls(n, pa.string())
    levels = np.arange(n) % 5 + 1
    problems = pa.table({
        "id": ids, "task": pa.array(["math"] * n), "prompt": pa.array([f"problem {i}" for i in range(n)]),
        "solution": pa.array(["step"] * n), "answer": pa.array(["1"] * n), "tests": none, "starter_code": none,
        "meta": pa.array([f'{{"level": {lv}, "type": "t{lv}"}}' for lv in levels]),
    }, schema=contracts.PROBLEMS)
    difficulty = pa.table({
        "id": ids, "epoch": pa.array(np.zeros(n, dtype=np.int64)), "difficulty": pa.array(q),
        "likelihood": pa.array(1.0 - q), "pass_rate": pa.nulls(n, pa.float64()),
        "n_rollouts": pa.array(np.zeros(n, dtype=np.int64)),
    }, schema=contracts.DIFFICULTY)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(X, dtype=np.float32).reshape(-1)), d)
    paths = {name: os.path.join(folder, f"{name}.parquet") for name in ("problems", "difficulty", "embeddings")}
    storage.write_table(problems, paths["problems"])
    storage.write_table(difficulty, paths["difficulty"])
    storage.write_table(pa.table({"id": ids, "embedding": emb}, schema=contracts.embeddings_schema(d)), paths["embeddings"])
    return paths


def run_cli(paths: dict, k: int, folder: str) -> dict:
    """`p3 select --strategy dpp` in a fresh process: wall time and the child's peak RSS."""
    import subprocess
    import sys

    out, report = os.path.join(folder, "selection.parquet"), os.path.join(folder, "report.json")
    peak_file = os.path.join(folder, "peak_kb")
    cmd = [sys.executable, "-c", _CLI_WITH_PEAK, "select", "--problems", paths["problems"], "--difficulty",
           paths["difficulty"], "--embeddings", paths["embeddings"], "--strategy", "dpp", "--budget", str(k),
           "--out", out, "--report", report]
    env = {**os.environ, "P3_PROGRESS": "0", "P3_BENCH_PEAK": peak_file}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"p3 select failed ({proc.returncode}): {' '.join(cmd)}")
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    order = np.argsort(table.column("rank").to_numpy(), kind="stable")
    ids = table.column("id").to_pylist()
    with open(peak_file) as f:
        peak_mb = int(f.read()) / 1024.0
    return {"seconds": took, "peak_rss_mb": peak_mb, "picks": [int(ids[i][1:]) for i in order]}


def cli_compare(kind: str, n: int, k: int, d: int, real: str, workdir: str) -> dict:
    """dpp_select alone on the arrays, then `p3 select` on the same arrays written as
    Parquet tables: time, peak RSS (each a fresh process), the ratios, same picks?"""
    import tempfile

    print(f"[cli] {kind} N={n} k={k} d={d}: dpp_select alone vs p3 select (CLI, report included)", flush=True)
    alone = measure({"method": "ours", "n": n, "k": k, "d": d, "data": kind, "real": real})
    print(f"    dpp_select: {alone['seconds']:.1f}s, peak RSS {alone['peak_rss_mb']:.0f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="p3-bench-", dir=workdir) as folder:
        X, q = data_for(kind, n, d, real)
        paths = write_tables(folder, X, q)
        del X, q
        cli = run_cli(paths, k, folder)
    res = {
        "data": kind, "n": n, "k": k, "d": d, "load": os.getloadavg(),
        "dpp_seconds": alone["seconds"], "dpp_peak_rss_mb": alone["peak_rss_mb"],
        "cli_seconds": cli["seconds"], "cli_peak_rss_mb": cli["peak_rss_mb"],
        "time_ratio": cli["seconds"] / alone["seconds"], "memory_ratio": cli["peak_rss_mb"] / alone["peak_rss_mb"],
        "same_picks": cli["picks"] == alone["picks"],
    }
    print(f"    p3 select: {cli['seconds']:.1f}s, peak RSS {cli['peak_rss_mb']:.0f} MB; same picks: {res['same_picks']}; "
          f"load {res['load'][0]:.1f}", flush=True)
    print(f"    p3 select / dpp_select: time {res['time_ratio']:.2f}x memory {res['memory_ratio']:.2f}x", flush=True)
    return res


def real_vs_synthetic(n: int, k: int, d: int, real: str, workdir: str) -> dict:
    """The same N and k on the real sample, the matched generator and today's generator."""
    rows = {kind: cli_compare(kind, n, k, d, real, workdir) for kind in ("real", "matched", "synthetic")}
    for kind in ("matched", "synthetic"):
        for who in ("dpp", "cli"):
            rows[f"real_over_{kind}_{who}_time"] = rows["real"][f"{who}_seconds"] / rows[kind][f"{who}_seconds"]
    print(f"    real / synthetic time: dpp_select {rows['real_over_synthetic_dpp_time']:.2f}x, "
          f"p3 select {rows['real_over_synthetic_cli_time']:.2f}x; real / matched: dpp_select "
          f"{rows['real_over_matched_dpp_time']:.2f}x, p3 select {rows['real_over_matched_cli_time']:.2f}x", flush=True)
    return rows


def compare(n: int, k: int, d: int, repeats: int) -> dict:
    print(f"[1] N={n} k={k} d={d}: dense (paper's algorithm) vs p3.dpp", flush=True)
    dense = measure({"method": "dense", "n": n, "k": k, "d": d})
    print(f"    dense: {dense['seconds']:.2f}s peak RSS {dense['peak_rss_mb']:.0f} MB", flush=True)
    dense_mem = measure({"method": "dense", "n": n, "k": k, "d": d, "trace": True})
    ours = [measure({"method": "ours", "n": n, "k": k, "d": d}) for _ in range(repeats)]
    ours_mem = measure({"method": "ours", "n": n, "k": k, "d": d, "trace": True})
    ours64 = measure({"method": "ours", "n": n, "k": k, "d": d, "precision": "float64"})
    times = [r["seconds"] for r in ours]
    same = all(r["picks"] == dense["picks"] for r in ours) and ours_mem["picks"] == dense["picks"]
    res = {
        "n": n, "k": k, "d": d,
        "dense_seconds": dense["seconds"], "ours_seconds": times, "ours_median_seconds": statistics.median(times),
        "dense_peak_rss_mb": dense["peak_rss_mb"], "ours_peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
        "dense_traced_peak_mb": dense_mem["traced_peak_mb"], "ours_traced_peak_mb": ours_mem["traced_peak_mb"],
        "same_picks": same, "rounds": ours[0]["rounds"], "precision": ours[0]["precision"],
        "float64_seconds": ours64["seconds"], "float64_same_picks": ours64["picks"] == dense["picks"],
    }
    res["speedup"] = res["dense_seconds"] / res["ours_median_seconds"]
    res["memory_ratio_rss"] = res["dense_peak_rss_mb"] / res["ours_peak_rss_mb"]
    res["memory_ratio_traced"] = res["dense_traced_peak_mb"] / res["ours_traced_peak_mb"]
    print(
        f"    p3.dpp: median {res['ours_median_seconds']:.3f}s of {[round(t, 3) for t in times]}, "
        f"peak RSS {res['ours_peak_rss_mb']:.0f} MB; traced peak dense {res['dense_traced_peak_mb']:.0f} MB "
        f"vs ours {res['ours_traced_peak_mb']:.1f} MB; same picks: {same}",
        flush=True,
    )
    print(f"    p3.dpp float64 throughout: {ours64['seconds']:.3f}s, same picks: {res['float64_same_picks']}", flush=True)
    return res


def scale(n: int, k: int, d: int, check_float64: bool) -> dict:
    print(f"[2] N={n} k={k} d={d}: p3.dpp alone", flush=True)
    r = measure({"method": "ours", "n": n, "k": k, "d": d, "verbose": True})
    res = {"n": n, "k": k, "d": d, "seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"],
           "input_rss_mb": r["input_rss_mb"], "rounds": r["rounds"], "full_flushes": r["full_flushes"],
           "precision": r["precision"]}
    print(f"    {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB (input alone {r['input_rss_mb']:.0f} MB), "
          f"{r['rounds']} rounds, precision {r['precision']}", flush=True)
    if check_float64:
        r64 = measure({"method": "ours", "n": n, "k": k, "d": d, "precision": "float64"})
        res["float64_seconds"] = r64["seconds"]
        res["same_picks_float32_vs_float64"] = r64["picks"] == r["picks"]
        print(f"    float64 throughout: {r64['seconds']:.1f}s; same picks as float32 screening: "
              f"{res['same_picks_float32_vs_float64']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the N=10k comparison")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the selector (median)")
    ap.add_argument("--scales", default="100000:10000,1000000:100000", help="N:k pairs for step 2")
    ap.add_argument("--cli", default="", help="N:k pairs: only `p3 select` vs dpp_select alone, side by side")
    ap.add_argument("--data", default="synthetic,matched", help="data of --cli: synthetic, matched, real (comma list)")
    ap.add_argument("--real-compare", default="", metavar="N:K",
                    help="only the real sample vs the matched and today's generator at one N:k (N ≤ 40000)")
    ap.add_argument("--real", default=REAL, help="the real sample: an (M, d) .npy of real-text embeddings")
    ap.add_argument("--workdir", default=None, help="folder for the --cli Parquet tables (default: the temp dir)")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.cli or args.real_compare:
        result = {"cli": [], "real_compare": None}
        for pair in filter(None, args.cli.split(",")):
            n, k = (int(x) for x in pair.split(":"))
            for kind in args.data.split(","):
                result["cli"].append(cli_compare(kind, n, k, args.dim, args.real, args.workdir))
                _save(result, "dpp_scale_cli.json")
        if args.real_compare:
            n, k = (int(x) for x in args.real_compare.split(":"))
            result["real_compare"] = real_vs_synthetic(n, k, args.dim, args.real, args.workdir)
            _save(result, "dpp_scale_cli.json")
        last = result["cli"][-1] if result["cli"] else result["real_compare"]["real"]
        print(f"p3 select / dpp_select ({last['data']}, N={last['n']}): time={last['time_ratio']:.2f}x "
              f"memory={last['memory_ratio']:.2f}x same_picks={str(last['same_picks']).lower()}")
        return
    result = {"compare": compare(args.n, args.k, args.dim, args.repeats), "scale": []}
    if not args.quick:
        for i, pair in enumerate(args.scales.split(",")):
            n, k = (int(x) for x in pair.split(":"))
            result["scale"].append(scale(n, k, args.dim, check_float64=(i == 0)))
            _save(result)
    _save(result)
    c = result["compare"]
    print(f"dpp speedup={c['speedup']:.1f}x memory={c['memory_ratio_rss']:.1f}x same_picks={str(c['same_picks']).lower()}")


def _save(result: dict, name: str = "dpp_scale.json") -> None:
    path = os.path.join(OUT, name)
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
