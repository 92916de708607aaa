"""`p3 select` at scale: what the step holds in memory besides what dpp_select needs.

Peak memory is measured where it cannot be confused with the test runner's: Arrow's
own allocations (``pyarrow.default_memory_pool().max_memory()``, the pool's high-water
mark) in a fresh process, and numpy's through tracemalloc (numpy reports its data
buffers to it: https://numpy.org/doc/stable/reference/c-api/data_memory.html).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from p3 import contracts, storage
from p3.contracts import ContractError
from p3.selection import SelectConfig, select_ids


def _write_embeddings(path, X, ids=None, row_group_size=None):
    import pyarrow.parquet as pq

    n, d = X.shape
    ids = ids or [f"p{i}" for i in range(n)]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d)
    table = pa.table({"id": pa.array(ids), "embedding": emb}, schema=contracts.embeddings_schema(d))
    pq.write_table(table, path, row_group_size=row_group_size)


def test_embeddings_are_read_batch_by_batch_into_one_matrix(tmp_path):
    """The matrix equals the table's, and Arrow never holds the whole table beside it:
    its peak allocation stays near one matrix (measured 0.9x here; the old reader, which
    read the table and combined its chunks, peaked at 3.4x: 164 MB for a 49 MB matrix)."""
    X = np.random.default_rng(0).normal(size=(100_000, 128)).astype(np.float32)
    path = tmp_path / "emb.parquet"
    _write_embeddings(path, X)
    ids, M = contracts.read_embeddings(str(path))
    assert ids == [f"p{i}" for i in range(len(X))]
    assert M.dtype == np.float32 and np.array_equal(M, X)
    probe = (
        "import json, sys, pyarrow as pa\n"
        "from p3 import contracts\n"
        "ids, M = contracts.read_embeddings(sys.argv[1])\n"
        "print(json.dumps({'arrow_peak': pa.default_memory_pool().max_memory(), 'matrix': M.nbytes}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["arrow_peak"] < 1.5 * got["matrix"], got


def test_bad_embedding_rows_are_named_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(contracts, "EMBEDDING_BATCH_ROWS", 100)
    X = np.ones((450, 8), dtype=np.float32)
    X[321, 3] = np.nan
    path = tmp_path / "emb.parquet"
    _write_embeddings(path, X, row_group_size=200)
    with pytest.raises(ContractError, match=r"row 322, field 'embedding': contains NaN"):
        contracts.read_embeddings(str(path))
    emb = pa.array([[1.0, 2.0]] * 250 + [None] + [[1.0, 2.0]] * 10, pa.list_(pa.float32(), 2))
    storage.write_table(pa.table({"id": [f"p{i}" for i in range(261)], "embedding": emb}), tmp_path / "null.parquet")
    with pytest.raises(ContractError, match=r"row 251, field 'embedding': is null"):
        contracts.read_embeddings(str(tmp_path / "null.parquet"))


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_pool_of_every_row_reaches_the_dpp_without_a_copy_of_the_embeddings():
    """strategy dpp: the selector hands the matrix itself to dpp_select, so selecting
    (report included) adds less than half a matrix to what dpp_select alone allocates
    on the same arrays (the old selector copied X[eligible] first: one whole matrix)."""
    from p3.dpp import dpp_select

    rng = np.random.default_rng(1)
    n, d = 20_000, 48
    X = rng.normal(size=(n, d)).astype(np.float32)
    diff = rng.uniform(0.05, 1.0, n)
    ids = [f"p{i}" for i in range(n)]
    cfg = SelectConfig(strategy="dpp", budget=200, precision="float32")
    alone = _traced_peak(lambda: dpp_select(X, diff.copy(), 200, precision="float32"))
    selecting = _traced_peak(lambda: select_ids(ids, diff, X, cfg))
    assert selecting < alone + 0.5 * X.nbytes, (selecting, alone, X.nbytes)


def _bench():
    from _scripts import load_script

    return load_script("bench/dpp_scale.py")


def test_the_cli_benchmark_runs_p3_select_on_the_arrays_dpp_select_gets(tmp_path):
    """bench/dpp_scale.py --cli compares the step with dpp_select on the same data: the
    tables it writes hold exactly the generator's arrays, and `p3 select --strategy dpp`
    over them picks what dpp_select picks on the arrays."""
    from p3.selection import select

    bench = _bench()
    X, q = bench.make_data(3000, 24, seed=0)
    paths = bench.write_tables(str(tmp_path), X, q)
    ids, M = contracts.read_embeddings(paths["embeddings"])
    assert np.array_equal(M, X) and ids[:2] == ["p0000000", "p0000001"]
    rep = select(SelectConfig(problems=paths["problems"], difficulty=paths["difficulty"], embeddings=paths["embeddings"],
                              strategy="dpp", budget=200, out=str(tmp_path / "sel.parquet")))
    from p3.dpp import dpp_select

    picks = storage.read_table(str(tmp_path / "sel.parquet")).column("id").to_pylist()
    assert rep["selected"] == 200
    assert [int(p[1:]) for p in picks] == dpp_select(X, q, 200).order.tolist()


def test_the_cli_benchmarks_peak_rss_is_the_steps_own_not_its_launchers(tmp_path):
    """A process started by a big one (vfork + exec) inherits the launcher's high-water
    mark in ru_maxrss: Linux's exec copies the old mm's hiwater_rss into the process's
    maxrss (fs/exec.c, setmax_mm_hiwater_rss). The benchmark read the step's peak from
    wait4's ru_maxrss and so reported ~4 GB at N=1M whatever the step used; it now
    reads the step's own VmHWM (proc(5)). Here the launcher holds 400 MB more than a
    small `p3 select` needs."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("VmHWM is Linux's")
    bench = _bench()
    X, q = bench.make_data(2000, 16, seed=0)
    paths = bench.write_tables(str(tmp_path), X, q)
    ballast = np.ones(400 << 20 >> 3)  # touched: the launcher's high-water mark rises by 400 MB
    own = bench._rss_mb()
    got = bench.run_cli(paths, 100, str(tmp_path))
    assert ballast.sum() > 0 and own > 400
    assert 0 < got["peak_rss_mb"] < own - 200, (got["peak_rss_mb"], own)
    assert len(got["picks"]) == 100


def test_the_matched_generator_has_the_sample_covariance(tmp_path, monkeypatch):
    """make_matched draws from N(mean, C) of the sample it is given: its mean, per-dimension
    scale and eigen-spectrum match the sample's (checked on a synthetic 'sample' here: the
    real one is not part of a fresh clone)."""
    bench = _bench()
    monkeypatch.setattr(bench, "OUT", str(tmp_path))
    rng = np.random.default_rng(5)
    sample = (rng.normal(size=(4000, 6)) * [3.0, 1.0, 0.5, 0.1, 0.01, 0.0]) @ np.linalg.qr(rng.normal(size=(6, 6)))[0] + 2.0
    real = tmp_path / "sample.npy"
    np.save(real, sample.astype(np.float16))
    X, _ = bench.make_matched(200_000, 6, str(real))
    S = np.load(real).astype(np.float64)
    np.testing.assert_allclose(X.mean(axis=0), S.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(X.std(axis=0), S.std(axis=0), rtol=0.02, atol=1e-3)
    got, want = np.linalg.eigvalsh(np.cov(X, rowvar=False)), np.linalg.eigvalsh(np.cov(S, rowvar=False))
    np.testing.assert_allclose(got, want, rtol=0.05, atol=1e-4)


def test_the_step_lets_the_dpp_share_its_matrix_and_picks_the_same(tmp_path, monkeypatch):
    """`p3 select` reads the embeddings for itself, so the DPP's screen reorders that matrix
    in place instead of gathering a copy of the eligible rows (dpp_select(in_place=True));
    a paced pool (strategy p3) reaches the DPP as row numbers of the matrix, not X[eligible]."""
    import p3.selection as selection
    from p3.selection import select

    bench = _bench()
    X, q = bench.make_data(60_000, 96, seed=2)
    paths = bench.write_tables(str(tmp_path), X, q)
    real = selection.dpp_select
    calls = []

    def traced_dpp(features, quality, k, **kw):  # what the DPP allocates beyond what it was given
        kw["in_place"] = kw["in_place"] and force_share
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        res = real(features, quality, k, **kw)
        calls.append((features.shape[0], kw["rows"], tracemalloc.get_traced_memory()[1] - before))
        return res

    monkeypatch.setattr(selection, "dpp_select", traced_dpp)
    import p3.dpp
    import p3.similarity

    # chunked float64 temporaries small beside this test's matrix (at N=1M they are anyway)
    monkeypatch.setattr(p3.dpp, "CHUNK_ROWS", 2048)
    monkeypatch.setattr(p3.similarity, "CHUNK_ROWS", 1024)
    reports, picks = [], []
    for force_share in (True, False):
        out = str(tmp_path / f"sel_{force_share}.parquet")
        cfg = SelectConfig(problems=paths["problems"], difficulty=paths["difficulty"], embeddings=paths["embeddings"],
                           strategy="p3", budget=300, epoch=1, epochs=3, precision="float32", out=out)
        tracemalloc.start()
        try:
            reports.append(select(cfg))
        finally:
            tracemalloc.stop()
        picks.append(storage.read_table(out).column("id").to_pylist())
    (n_shared, rows, grown_shared), (_, _, grown_copy) = calls
    assert n_shared == len(X) and rows is not None and 0 < len(rows) < len(X)  # row numbers, not a copy
    assert reports[0]["dpp"]["in_place"] and not reports[1]["dpp"]["in_place"]
    assert grown_copy - grown_shared > 0.75 * len(rows) * X.shape[1] * 4, (grown_copy, grown_shared)
    assert picks[0] == picks[1]
    assert reports[0]["diversity"] == reports[1]["diversity"]  # the matrix was put back exactly
