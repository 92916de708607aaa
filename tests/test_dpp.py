"""The scalable DPP selector against a dense reference written here from docs/design.md §1.3.

The reference builds the full kernel per round and runs Chen et al.'s fast greedy MAP
(incremental Cholesky rows), with per-round standardisation, eps, zero-quality fill
and the conditional kernel (Schur complement) spelled out densely.
"""

import math
import tracemalloc

import numpy as np
import pytest

from p3.dpp import dpp_select


def chen_greedy(L, eps, max_picks):
    """Fast greedy MAP (Chen, Zhang & Zhou 2018, Alg. 1) on a dense kernel."""
    n = len(L)
    c = np.zeros((max_picks, n))
    d2 = np.diag(L).astype(np.float64).copy()
    picks, gains = [], []
    while len(picks) < max_picks:
        j = int(np.argmax(d2))  # ties: lowest index
        if not d2[j] >= eps:
            break
        t = len(picks)
        picks.append(j)
        gains.append(d2[j])
        e = (L[j] - c[:t, j] @ c[:t]) / math.sqrt(d2[j])
        c[t] = e
        d2 = d2 - e * e
        d2[picks] = -np.inf
    return picks, gains


def dense_reference(X, q, k, eps=1e-10, condition_on=None, weight=1.0):
    X = np.asarray(X, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m0 = X.mean(axis=0)
    pool = list(range(len(X)))
    picks, rounds, gains = [], [], []
    cond = None if condition_on is None else np.asarray(condition_on, dtype=np.float64)
    r = 0
    while len(picks) < k and any(q[i] ** 2 >= eps for i in pool):
        P = np.array(pool)
        Xp = X[P]
        mu = Xp.mean(axis=0)
        var = ((Xp - mu) ** 2).mean(axis=0)
        const = var <= 1e-10 * ((Xp - m0) ** 2).mean(axis=0)
        sd = np.where(const, 1.0, np.sqrt(var))
        Y = np.where(const, 0.0, (Xp - mu) / sd)
        F = _normalise(Y)
        S = F @ F.T
        if cond is not None:
            Fc = _normalise(np.where(const, 0.0, (cond - mu) / sd))
            S = S - weight * (F @ Fc.T) @ np.linalg.pinv(Fc @ Fc.T, rcond=1e-10) @ (Fc @ F.T)
        L = q[P][:, None] * S * q[P][None, :]
        got, g = chen_greedy(L, eps, k - len(picks))
        if not got and cond is not None:
            cond = None
            continue
        if not got:  # nothing ≥ eps: the single best-quality item
            cands = [i for i in range(len(P)) if q[P[i]] ** 2 >= eps]
            got, g = [max(cands, key=lambda i: (q[P[i]], -P[i]))], [0.0]
        for i, gi in zip(got, g):
            picks.append(int(P[i]))
            rounds.append(r)
            gains.append(gi)
        pool = [i for i in pool if i not in set(picks)]
        r += 1
    fill = [i for i in range(len(X)) if q[i] ** 2 < eps][: k - len(picks)]
    if fill:
        picks += fill
        rounds += [r] * len(fill)
        gains += [0.0] * len(fill)
    return picks, rounds, gains


def _normalise(Y):
    n = np.linalg.norm(Y, axis=1, keepdims=True)
    return np.divide(Y, n, out=np.zeros_like(Y), where=n > 0)


def _data(n, d, seed, dup=0, zeros=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 0] += 0.5 * rng.normal(size=n).astype(np.float32)  # unequal variances
    q = rng.uniform(0.05, 1.0, size=n)
    for _ in range(dup):
        a, b = rng.choice(n, 2, replace=False)
        X[b] = X[a]
    if zeros:
        q[rng.choice(n, zeros, replace=False)] = 0.0
    return X, q


def assert_same(X, q, k, **kw):
    ref_picks, ref_rounds, ref_gains = dense_reference(X, q, k, **{k_: v for k_, v in kw.items() if k_ in ("condition_on", "weight")})
    kw = {("condition_weight" if k_ == "weight" else k_): v for k_, v in kw.items()}
    res = dpp_select(X, q, k, **kw)
    assert res.order.tolist() == ref_picks
    assert res.rounds.tolist() == ref_rounds
    np.testing.assert_allclose(res.gains, ref_gains, rtol=1e-8, atol=1e-12)
    return res


@pytest.mark.parametrize(
    "n,d,k,seed",
    [(60, 8, 60, 0), (200, 16, 120, 1), (30, 50, 30, 2), (500, 12, 80, 3), (1500, 24, 300, 4)],
)
def test_matches_dense_reference(n, d, k, seed):
    X, q = _data(n, d, seed)
    res = assert_same(X, q, k, hot_size=16)
    assert len(res.order) == k
    assert len(set(res.order.tolist())) == k


def test_n_smaller_than_d_rounds_hold_at_most_n_minus_one():
    X, q = _data(12, 40, 5)
    res = assert_same(X, q, 12)
    assert res.round_sizes[0] == 11  # centring leaves rank n − 1


def test_duplicates_never_share_a_round():
    X, q = _data(300, 10, 6, dup=40)
    res = assert_same(X, q, 300, hot_size=32)
    for r in set(res.rounds.tolist()):
        rows = X[res.order[res.rounds == r]]
        assert len(np.unique(rows, axis=0)) == len(rows)


def test_zero_quality_items_come_last_in_index_order():
    X, q = _data(100, 6, 7, zeros=15)
    res = assert_same(X, q, 100)
    zero = sorted(np.flatnonzero(q == 0).tolist())
    assert res.order[-15:].tolist() == zero
    assert res.n_fill == 15
    # with a budget the positive items can fill, no zero-quality item is chosen
    res = dpp_select(X, q, 80)
    assert not set(res.order.tolist()) & set(zero)


def test_hand_computed_ties_go_to_lowest_index():
    # Standardisation is exact here (mean 0, std 1), so every tie is exact.
    X = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float32)
    res = dpp_select(X, np.ones(4), 4)
    # Round 0: all tie at q²=1 -> item 0; then 1 and 2 are orthogonal to it (tie -> 1),
    # 3 is its negative (residual 0). Round 1 pool {2, 3}: dim 0 constant, items ±e1
    # -> item 2; item 3 residual 0. Round 2: item 3 alone.
    assert res.order.tolist() == [0, 1, 2, 3]
    assert res.rounds.tolist() == [0, 0, 1, 2]
    np.testing.assert_allclose(res.gains[:3], [1, 1, 1])


def test_pool_smaller_than_budget_takes_everything():
    X, q = _data(40, 5, 8, zeros=3)
    res = assert_same(X, q, 100)
    assert sorted(res.order.tolist()) == list(range(40))


def test_all_identical_embeddings_fall_back_to_quality_order():
    X = np.ones((5, 4), dtype=np.float32)
    q = np.array([0.2, 0.9, 0.5, 0.9, 0.0])
    res = assert_same(X, q, 5)
    assert res.order.tolist() == [1, 3, 2, 0, 4]


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_conditioning_on_previous_picks_matches_dense_schur_complement(weight):
    X, q = _data(400, 16, 9)
    prev = _data(6, 16, 10)[0]
    res = assert_same(X, q, 150, condition_on=prev, weight=weight, hot_size=32)
    plain = dpp_select(X, q, 150)
    assert res.order.tolist() != plain.order.tolist()
    if weight == 1.0:
        assert res.round_sizes[0] == 16 - 6


@pytest.mark.parametrize("quality", ["long tail", "narrow"])
@pytest.mark.parametrize("weight", [None, 0.5, 1.0])
@pytest.mark.parametrize("device", ["cpu", "torch:cpu"])
def test_lazy_blocks_and_the_complement_shortcut_keep_the_dense_picks(monkeypatch, quality, weight, device):
    """Many small blocks; the picks (with and without conditioning) stay the dense
    reference's. With a long low-quality tail some blocks are never standardised in a
    round and late updates go through the complement of the basis; with a narrow quality
    range the bound of a block not yet standardised (q²) is what decides whether it must
    be, so a bound set too low there changes the picks."""
    import p3.dpp as dpp

    monkeypatch.setattr(dpp, "MIN_BLOCK_ROWS", 16)
    seen = {"shortcut": 0, "idle_blocks": 0}
    project_rows, run = dpp._Round.project_rows, dpp._Round.run

    def counted_project_rows(self, a0, a1, fresh, cols, omega):
        seen["shortcut"] += cols is getattr(self, "comp", None)
        return project_rows(self, a0, a1, fresh, cols, omega)

    def counted_run(self):
        picks = run(self)
        seen["idle_blocks"] += int((self.done_b < 0).sum())
        return picks

    monkeypatch.setattr(dpp._Round, "project_rows", counted_project_rows)
    monkeypatch.setattr(dpp._Round, "run", counted_run)
    if quality == "long tail":
        X, q = _data(1200, 12, 22)
        q = q**3
        k = 240
    else:
        X, _ = _data(900, 36, 24)
        q = np.random.default_rng(25).uniform(0.3, 1.0, len(X))
        k = 90
    kw = {} if weight is None else {"condition_on": _data(4, X.shape[1], 23)[0], "weight": weight}
    precision = "float64" if device == "cpu" else "float32"
    assert_same(X, q, k, hot_size=16, device=device, precision=precision, **kw)
    if quality == "long tail":
        assert seen["shortcut"] > 0
        assert seen["idle_blocks"] > 0


def test_float32_screening_picks_what_float64_picks():
    X, q = _data(4000, 48, 11)
    a = dpp_select(X, q, 400, precision="float64")
    b = dpp_select(X, q, 400, precision="float32", hot_size=64)
    assert a.order.tolist() == b.order.tolist()
    np.testing.assert_allclose(a.gains, b.gains, rtol=1e-9)


def test_torch_backend_picks_what_numpy_picks():
    X, q = _data(3000, 20, 12)
    a = dpp_select(X, q, 200, device="cpu")
    b = dpp_select(X, q, 200, device="torch:cpu", precision="float32")
    assert a.order.tolist() == b.order.tolist()


def test_memory_stays_far_below_a_dense_kernel():
    n, d = 50_000, 32
    X, q = _data(n, d, 13)
    tracemalloc.start()
    res = dpp_select(X, q, 500, device="cpu")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(res.order) == 500
    assert peak < n * n * 8 / 20
    assert peak < 40 * n * d * 8  # O(N·d), not O(N²): ~ a few copies of the input


def test_bad_inputs_are_refused():
    X, q = _data(10, 3, 14)
    with pytest.raises(ValueError, match="quality"):
        dpp_select(X, -q, 3)
    with pytest.raises(ValueError, match="rows"):
        dpp_select(X, q[:5], 3)


def test_big_float32_screens_through_torch_kernels_pick_what_float64_picks(monkeypatch):
    import p3.dpp as dpp

    X, q = _data(6000, 40, 15)
    ref = dpp_select(X, q, 500, precision="float64")
    monkeypatch.setattr(dpp, "TORCH_MIN_ENTRIES", 1)  # the 1M-row path, on a small problem
    got = dpp_select(X, q, 500, precision="float32", hot_size=32)
    assert got.device == "torch:cpu"
    assert dpp_select(X, q, 5, precision="float64").device == "cpu"  # float64 stays in numpy
    assert dpp_select(X, q, 5, precision="float32", device="numpy").device == "cpu"  # forced
    assert got.order.tolist() == ref.order.tolist()
    np.testing.assert_allclose(got.gains, ref.gains, rtol=1e-9)


def test_the_benchmarks_dense_baseline_picks_what_the_selector_picks():
    """bench/dpp_scale.py's speedup is claimed against its own dense baseline: that baseline
    must be the same algorithm (same picks) on data from the bench's own generator."""
    from _scripts import load_script

    bench = load_script("bench/dpp_scale.py")
    X, q = bench.make_data(300, 12, seed=3)
    assert bench.dense_select(X, q, 60) == dpp_select(X, q, 60).order.tolist()


def _near_singular(n, d, seed):
    """Embedding-like rows whose covariance has a few near-zero eigenvalues (as real
    MiniLM embeddings do): the last picks of a round then have residuals inside the
    float32 screen's margin."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1.0, 1e-3, d)
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (rng.normal(size=(n, d)) * scale) @ rot.T + 0.3
    return X.astype(np.float32), rng.uniform(0.05, 1.0, n)


@pytest.mark.parametrize("device", ["cpu", "torch:cpu"])
def test_an_unseparable_leader_is_picked_by_an_exact_sweep_not_a_pool_sized_hot_set(monkeypatch, device):
    """When float32 bounds cannot separate the leader, the hot (float64) set stops at
    HOT_MAX_ROWS and an exact sweep of the pool picks; the picks stay the dense
    reference's. On the old code the hot set grew to the whole pool (at N=1M, d=384:
    3 GB of float64 rows)."""
    import p3.dpp as dpp

    monkeypatch.setattr(dpp, "HOT_MAX_ROWS", 32)
    seen = {"sweeps": 0, "largest_hot": 0}
    exact_pick, build_hot = dpp._Round.exact_pick, dpp._Round.build_hot

    def counted_exact_pick(self):
        seen["sweeps"] += 1
        return exact_pick(self)

    def counted_build_hot(self, local):
        seen["largest_hot"] = max(seen["largest_hot"], len(local))
        return build_hot(self, local)

    monkeypatch.setattr(dpp._Round, "exact_pick", counted_exact_pick)
    monkeypatch.setattr(dpp._Round, "build_hot", counted_build_hot)
    X, q = _near_singular(1500, 16, 31)
    assert_same(X, q, 200, hot_size=16, device=device, precision="float32")
    assert seen["sweeps"] > 0
    assert seen["largest_hot"] <= 32


@pytest.mark.parametrize("precision,device", [("float64", "cpu"), ("float32", "torch:cpu")])
def test_a_row_subset_picks_exactly_what_a_copy_of_those_rows_picks(precision, device):
    # p3 select's pacing pool is a subset of the embeddings; `rows` spares the copy X[rows]
    X, q = _data(3000, 24, 16)
    rows = np.flatnonzero(np.random.default_rng(0).random(3000) < 0.6)
    q[rows[::7]] = 0.0  # zero-quality rows of the pool fill the budget last
    kw = dict(precision=precision, device=device, condition_on=X[:4], condition_weight=0.5)
    k = len(rows) - 20  # past the positive-quality rows: the pool halves, and zero-quality rows fill
    copy = dpp_select(X[rows], q[rows], k, **kw)
    subset = dpp_select(X, q[rows], k, rows=rows, **kw)
    assert copy.n_fill > 0 and copy.n_rounds > 2
    assert subset.order.tolist() == copy.order.tolist()
    assert subset.rounds.tolist() == copy.rounds.tolist()
    assert np.array_equal(subset.gains, copy.gains)  # same sums in the same order: bit for bit


def test_rows_must_be_ascending_unique_rows_of_the_features():
    X, q = _data(10, 3, 17)
    for rows in ([3, 1], [1, 1], [0, 10], [-1, 2]):
        with pytest.raises(ValueError, match="rows must be ascending"):
            dpp_select(X, q[:2], 2, rows=rows)


@pytest.mark.parametrize("precision,device", [("float32", "numpy"), ("float32", "torch:cpu"), ("float64", "cpu")])
def test_in_place_shares_the_features_picks_the_same_and_puts_the_rows_back(precision, device):
    X, q = _data(3000, 24, 18)
    X = X.astype(np.float32 if precision == "float32" else np.float64)
    rows = np.flatnonzero(np.random.default_rng(1).random(3000) < 0.7)
    q[rows[::9]] = 0.0
    before = X.copy()
    kw = dict(precision=precision, device=device, condition_on=X[:3].copy(), condition_weight=1.0, rows=rows)
    copy = dpp_select(X, q[rows], len(rows) - 10, **kw)
    shared = dpp_select(X, q[rows], len(rows) - 10, in_place=True, **kw)
    assert not copy.in_place and shared.in_place
    assert np.array_equal(X, before)  # every row back in its place, bit for bit
    assert shared.order.tolist() == copy.order.tolist()
    assert shared.rounds.tolist() == copy.rounds.tolist()
    np.testing.assert_allclose(shared.gains, copy.gains, rtol=1e-9)


def test_in_place_does_not_allocate_a_copy_of_the_features():
    X, q = _data(100_000, 128, 19)  # big enough that chunked temporaries are small beside X
    peaks = {}
    for in_place in (False, True):
        tracemalloc.start()
        dpp_select(X, q, 100, precision="float32", device="numpy", in_place=in_place)
        peaks[in_place] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # the screen's copy is what in_place saves (chunked float64 temporaries remain in both)
    assert peaks[False] - peaks[True] > 0.75 * X.nbytes


def test_in_place_is_declined_for_features_far_from_zero_and_for_read_only_ones():
    X, q = _data(2000, 16, 20)
    far = X + np.float32(500.0)  # |mean| / std ≈ 500: an uncentred float32 screen would lose the margin
    ref = dpp_select(far, q, 200, precision="float32", device="numpy")
    got = dpp_select(far, q, 200, precision="float32", device="numpy", in_place=True)
    assert not got.in_place and got.order.tolist() == ref.order.tolist()
    X.flags.writeable = False
    assert not dpp_select(X, q, 50, precision="float32", device="numpy", in_place=True).in_place


def test_in_place_puts_the_rows_back_when_the_selection_fails(monkeypatch):
    import p3.dpp as dpp

    X, q = _data(2000, 16, 21)
    before = X.copy()
    calls = []

    def fail_in_the_second_round(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return real(self)

    real = dpp._Round.run
    monkeypatch.setattr(dpp._Round, "run", fail_in_the_second_round)
    with pytest.raises(RuntimeError, match="stopped"):
        dpp_select(X, q, 500, precision="float32", device="numpy", in_place=True)
    assert len(calls) == 2 and np.array_equal(X, before)


_HEAP_PROBE = """
import numpy as np
from p3 import dpp

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

big = np.ones(16 << 20, dtype=np.uint8)
del big  # glibc raises its mmap threshold to 16 MB when an mmapped block that size is freed
blocks, kept = [], []
for _ in range(64):
    blocks.append(np.ones(4 << 20, dtype=np.uint8))  # so these come from the heap
    kept.append(np.ones(64 << 10, dtype=np.uint8))  # and, freed, are holes below live data
del blocks
before = rss()
dpp._release_freed_heap()
print(before, rss())
"""


def test_freed_heap_pages_go_back_to_the_system_after_each_round(monkeypatch):
    """glibc keeps freed heap memory resident (after the first free of a big block its mmap
    threshold rises, so later N-sized arrays come from the heap); dpp_select releases it
    after every round. (The 4018 MB peak of `p3 select` at 1M that first motivated this was
    the benchmark's own high-water mark, docs/selection.md; the release stays because it
    is cheap.) Here, in a fresh process: 256 MB freed into heap holes stay resident until
    the release, and go after it; and every round releases."""
    import subprocess
    import sys

    import p3.dpp as dpp

    if dpp._libc() is None:
        pytest.skip("not glibc: malloc_trim does not exist")
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before - after > 200, (before, after)
    calls = []
    monkeypatch.setattr(dpp, "_release_freed_heap", lambda: calls.append(1))
    X, q = _data(500, 12, 9)
    res = dpp_select(X, q, 60)
    assert len(calls) == res.n_rounds - (res.n_fill > 0)


def test_a_screen_spread_over_threads_picks_what_the_dense_reference_picks(monkeypatch):
    """Big CPU screens run numpy's GEMMs one chunk of rows per thread: several threads must
    really take chunks, and the picks must not depend on how the rows were split."""
    import threading

    import p3.dpp as dpp

    workers = set()

    class Recording(dpp._NumpyBackend):
        def _chunks(self, a0, a1, rows, work):
            def recorded(a, b):
                workers.add(threading.current_thread().name)
                work(a, b)

            super()._chunks(a0, a1, rows, recorded)

    monkeypatch.setattr(dpp, "_make_backend", lambda device, precision, size: Recording(threads=3))
    monkeypatch.setattr(dpp, "THREAD_CHUNK_ROWS", 64)  # many chunks on a small problem
    monkeypatch.setattr(dpp, "MIN_THREAD_ROWS", 16)
    X, q = _data(1500, 24, 21)
    assert_same(X, q, 300, precision="float32", hot_size=16)
    assert len({w for w in workers if w.startswith("p3-dpp")}) > 1


@pytest.mark.parametrize("shared", [False, True])
def test_torch_and_numpy_exact_sweeps_agree(shared):
    """The exact sweep's float64 residuals: torch's kernels (big CPU screens) against
    numpy's, with the pool's rows gathered (a copy of the screen) or taken in order (shared)."""
    import p3.dpp as dpp

    rng = np.random.default_rng(22)
    X = (rng.normal(size=(5000, 32)) * np.geomspace(1, 1e-3, 32) + 0.3).astype(np.float32)
    rows = None if shared else rng.permutation(5000)[:4000]
    n = 4000
    c, inv = X.mean(axis=0).astype(np.float64), 1.0 / X.std(axis=0).astype(np.float64)
    B = np.linalg.qr(rng.normal(size=(32, 3)))[0]
    want = dpp._NumpyBackend().exact_residuals(X, n, rows, c, inv, B)
    got = dpp._TorchBackend("cpu").exact_residuals(X, n, rows, c, inv, B)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_a_flush_level_decides_the_work_not_the_picks(monkeypatch):
    """A big screen's flush level comes from a sample: aimed a little low, it updates a
    little more than the exact w-th largest bound would; a level far lower must still
    give the same picks."""
    import p3.dpp as dpp

    s = np.random.default_rng(23).gamma(2.0, size=1_000_000)
    s[3::11] = -np.inf  # picked rows
    w = 31_250
    level = dpp._about_kth_largest(s, w)
    assert w <= np.count_nonzero(s >= level) <= 1.15 * w
    small = s[:100_000]
    assert dpp._about_kth_largest(small, 500) == np.sort(small)[-500]  # exact below 2·LEVEL_SAMPLE

    X, q = _data(1500, 24, 24)
    kth = dpp._about_kth_largest
    monkeypatch.setattr(dpp, "_about_kth_largest", lambda s, k: kth(s, k) / 2)
    assert_same(X, q, 300, precision="float32", hot_size=16)
