"""Exact greedy MAP for the P3 diversity DPP without the N×N kernel (docs/design.md §1.3).

The method
----------
Each round works on the items still in the pool. Embeddings are standardised over the
pool (mean 0, population std 1 per dimension; a constant dimension keeps std 1, so it is
exactly 0 after centring) and L2-normalised: rows ``f_i`` (a zero row stays zero). The
kernel is ``L = diag(q) F Fᵀ diag(q)``. Greedy MAP (Chen, Zhang & Zhou 2018) picks the
item with the largest residual ``d_i² = q_i² (‖f_i‖² − ‖Uᵀ f_i‖²)`` (``U`` an orthonormal
basis of the picked items' features), stops when the best residual is < ``eps``
(ties: lowest input index), and the next round restarts on the rest of the pool. That
is pivoted Cholesky / QR with column pivoting on the columns ``q_i f_i``: we keep the
``d``-dimensional basis, never the kernel, so memory is O(N·d + k·d).

Speed: projections of the pool onto new basis vectors are batched into GEMMs at a
"flush"; between flushes, picks are chosen from a small *hot set* whose residuals are
kept exactly (float64) pick by pick, and a pick is taken only when it provably beats the
stale residuals of everything outside the hot set (residuals only decrease, so stale
values are upper bounds). The pool is kept in descending quality and cut into blocks; a
flush updates only the blocks whose bounds could still matter, so a block of low quality
is standardised late ("activation", its bound before that is q²) and projected rarely,
on many columns at once. Late in a round the basis leaves out fewer directions than a
block has columns to catch up on; the block is then projected on that complement
instead, which gives its residual directly. Big float32 screens on the CPU use every
core: numpy's OpenBLAS, held to one thread, runs a chunk of rows in each of torch's
threads' worth of Python threads, and torch gathers, copies and sweeps (_TorchBackend).
When the float32 bounds cannot separate the leader (late in a round on real
embeddings, whose last directions carry almost no variance, every residual lies inside
the screen's margin) the hot set stops growing at HOT_MAX_ROWS and one exact float64
sweep of the pool, a chunk at a time, through the complement of the basis, makes the
pick: on data with the covariance of real MiniLM embeddings the hot set otherwise grew
to the whole pool (at N=1M, d=384: 3 GB of float64 rows, and most of the time).
A round stops without a check once it has as many picks as the pool's features have
rank (at most the number of non-constant dimensions, and pool size − 1 because of the
centring): in exact arithmetic every residual is then 0.

Precision: ``precision="float64"`` does everything in float64 (exact to rounding; used by
default while N·d ≤ 2**21). ``"float32"`` screens with float32 GEMMs but keeps the hot set,
the basis, the statistics and the ``eps`` test in float64; a pick is only taken when it
beats every screened value by more than ``tau = 1e-3·max q²`` (about the worst-case
float32 error of a 384-term projection; the typical error is ~1e-6), so the picks equal
float64 ones unless float32 rounding exceeds that margin (measured in
bench/dpp_scale.py and docs/selection.md).

Special cases, all part of the specification that the tests' dense reference shares:

- Items with ``q_i² < eps`` (zero quality) can never win a greedy step; they stay in the
  pool for the standardisation and are appended last, in input order, only to fill k.
- A round in which no item has a residual ≥ eps (all remaining embeddings equal the pool
  mean) picks its single highest-quality item (ties: lowest index).
- Cross-epoch conditioning (``condition_on`` = the previous epoch's first picks, raw
  embeddings, m ≤ d rows, and weight ``w = condition_weight`` in [0, 1]). Every round
  uses the kernel

      L⁽ʷ⁾ = diag(q) F (I − w Π) Fᵀ diag(q),   Π = projector onto span{f_p : p ∈ P}

  with the previous picks ``f_p`` standardised by the *current* round's statistics.
  For w = 1 this is exactly the DPP conditioned on P already being in the set
  (Schur complement ``L_ĀĀ − L_ĀP L_PP⁺ L_PĀ`` of the kernel extended by P); 0 < w < 1
  softens it (``I − wΠ`` is PSD). Implemented as a feature map ``g = (I − cΠ) f`` with
  ``c = 1 − √(1−w)``. If conditioning leaves no residual ≥ eps the rest is unconditioned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from p3.logs import get_logger
from p3.similarity import pool_sums, scaling

log = get_logger("dpp")

# Above this many matrix entries the default precision switches to float32 screening.
FLOAT64_MAX_ENTRIES = 2**21
TAU = {"float64": 1e-11, "float32": 1e-3}
CHUNK_ROWS = 32768
# Rows per task when numpy's screen runs in several threads (at least one task per thread).
THREAD_CHUNK_ROWS = 8192
MIN_THREAD_ROWS = 256
# Rows of an exact float64 sweep (exact_pick) at a time: its two float64 blocks are
# 2·8192·d·8 B (50 MB at d=384), held while the screen and the warm set are.
EXACT_CHUNK_ROWS = 8192
# torch's sweep: 2048 float64 rows (6 MB at d=384) stay in cache between its passes.
EXACT_TORCH_ROWS = 2048
TORCH_MIN_ENTRIES = 2**25
# The screen's blocks: about SCREEN_BLOCKS of them, of at least MIN_BLOCK_ROWS rows.
SCREEN_BLOCKS = 64
MIN_BLOCK_ROWS = 256
# The complement of the basis is computed for a flush when it saves more than this many
# d² row-columns of projection (its eigendecomposition costs about 5·d² of them).
COMPLEMENT_MIN_SAVING = 5
# Warm-set size: max(WARM_PER_HOT·h, N / WARM_FRACTION); flops per round are ≈ (N + w + h)·d².
WARM_PER_HOT = 4
WARM_FRACTION = 32
# A flush's level (the w-th largest bound) comes from a strided sample of this many bounds
# when there are at least twice as many, aimed at ~5 % more than w rows above it.
LEVEL_SAMPLE = 2**17
LEVEL_SLACK = 0.95
# Beyond these the hot (float64) and warm sets stop growing: the pick comes from an exact
# sweep of the pool instead (exact_pick), which holds one chunk in float64 at a time.
HOT_MAX_ROWS = 4096
WARM_MAX_FRACTION = 8
# A screen that shares the caller's features (in_place) holds them uncentred; its float32
# rounding then grows with |mean| / std of a dimension. Up to this ratio the error stays
# ~1e-4 of q², inside tau (1e-3·max q²); beyond it the screen is a centred copy.
IN_PLACE_MAX_OFFSET = 64.0


@dataclasses.dataclass
class DppResult:
    """Picks in order. ``order`` indexes the input rows; ``gains`` are the residuals d_i²
    at pick time (0 for fill picks); ``rounds`` the round of each pick (fill picks get
    one last round of their own)."""

    order: np.ndarray
    rounds: np.ndarray
    gains: np.ndarray
    n_greedy: int
    n_fill: int
    n_rounds: int
    round_sizes: list
    precision: str
    device: str
    flushes: int
    seconds: float
    in_place: bool = False

    @property
    def logdet(self) -> float:
        """Σ log d_i² of the greedy picks = Σ over rounds of log det L_round[picks]
        (single fallback picks of degenerate rounds, gain 0, are left out)."""
        g = self.gains[: self.n_greedy]
        return float(np.log(g[g > 0]).sum())


def dpp_select(
    features,
    quality,
    k: int,
    eps: float = 1e-10,
    precision: str = "auto",
    device: str = "auto",
    condition_on=None,
    condition_weight: float = 1.0,
    hot_size: int = 512,
    rows=None,
    in_place: bool = False,
) -> DppResult:
    """Greedy MAP DPP selection of ``k`` rows of ``features`` (N×d) with quality ``quality``.

    See the module docstring for the exact specification. ``device``: "auto" (CUDA
    through torch when available, else the CPU), "cpu" (numpy, or torch's CPU kernels for
    float32 screens of ≥ TORCH_MIN_ENTRIES entries), "numpy", or a torch device string ("cuda",
    "cuda:1", "torch:cpu"). ``hot_size``: rows whose residuals are kept exact pick by pick
    (speed only: the picks do not depend on it). Deterministic: no randomness is involved.

    ``rows``: the pool is these rows of ``features`` (ascending, unique), in that order;
    ``quality`` and ``order`` then refer to positions in ``rows``. Same picks as
    ``dpp_select(features[rows], …)`` without that copy of the matrix (at N=1M, d=384 it
    is 1.5 GB; the screen gathers its own copy in quality order either way).

    ``in_place``: the screen may use the memory of ``features`` instead of its own copy
    (another 1.5 GB at N=1M, d=384): the rows are reordered in place while the selection
    runs and put back, bit for bit, before it returns (also on an error), so nothing else
    may read ``features`` meanwhile. Taken only when ``features`` is a writable C-ordered
    array of the screen's dtype and its mean is small against its spread (the shared
    screen is not centred: see IN_PLACE_MAX_OFFSET); ``DppResult.in_place`` says whether
    it was. The picks are the same either way.
    """
    start = time.perf_counter()
    X = np.asarray(features)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D matrix, got shape {X.shape}")
    dim = X.shape[1]
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows[0] < 0 or rows[-1] >= len(X) or (np.diff(rows) <= 0).any()):
            raise ValueError(f"rows must be ascending, unique row numbers of features (0..{len(X) - 1})")
    n_items = len(X) if rows is None else len(rows)
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    if len(q) != n_items:
        raise ValueError(f"quality has {len(q)} values for {n_items} feature rows")
    if not np.isfinite(q).all() or (q < 0).any():
        raise ValueError("quality must be finite and ≥ 0")
    if not 0.0 <= condition_weight <= 1.0:
        raise ValueError(f"condition_weight must be in [0, 1], got {condition_weight}")
    k = max(0, min(int(k), n_items))
    if precision == "auto":
        precision = "float64" if n_items * dim <= FLOAT64_MAX_ENTRIES else "float32"
    if precision not in TAU:
        raise ValueError(f"precision must be auto, float64 or float32, got {precision!r}")
    backend = _make_backend(device, precision, n_items * dim)
    shareable = in_place and X is features and X.flags.c_contiguous and X.flags.writeable

    fill = np.flatnonzero(q * q < eps)
    cand = np.flatnonzero(q * q >= eps)
    cand = cand[np.lexsort((cand, -q[cand]))]  # quality descending, then index
    with _blas_threads_for(backend), contextlib.closing(backend):
        state = _Greedy(X, rows, q, cand, fill, eps, precision, backend, hot_size, shareable)
        try:
            picks, rounds, gains, sizes = _run_rounds(state, k, condition_on, condition_weight, dim, start)
        finally:
            state.give_back()
    n_greedy = len(picks)
    n_fill = min(k - n_greedy, len(fill))
    if n_fill:
        picks.extend(int(i) for i in fill[:n_fill])
        rounds.extend([len(sizes)] * n_fill)
        gains.extend([0.0] * n_fill)
        sizes.append(n_fill)
    took = time.perf_counter() - start
    log.debug(f"dpp: N={n_items} d={dim} k={k} rounds={len(sizes)} flushes={state.flushes} in {took:.2f}s")
    return DppResult(
        order=np.asarray(picks, dtype=np.int64),
        rounds=np.asarray(rounds, dtype=np.int64),
        gains=np.asarray(gains, dtype=np.float64),
        n_greedy=n_greedy,
        n_fill=n_fill,
        n_rounds=len(sizes),
        round_sizes=sizes,
        precision=precision,
        device=backend.name,
        flushes=state.flushes,
        seconds=took,
        in_place=state.shared,
    )


def _run_rounds(state, k, condition_on, condition_weight, dim, start):
    """Rounds of greedy picks until k are picked or no candidate is left."""
    cond = None
    if condition_on is not None and condition_weight > 0:
        cond = np.asarray(condition_on, dtype=np.float64).reshape(-1, dim)
        if len(cond) == 0:
            cond = None

    picks: list[int] = []
    rounds: list[int] = []
    gains: list[float] = []
    sizes: list[int] = []
    while len(picks) < k and state.n_alive_cand > 0:
        got = state.run_round(k - len(picks), cond, condition_weight)
        _release_freed_heap()
        if not got and cond is not None:
            cond = None  # conditioning left nothing ≥ eps: go on unconditioned
            continue
        if not got:
            got = [state.fallback_pick()]
        r = len(sizes)
        sizes.append(len(got))
        if r % 25 == 24:
            log.debug(f"round {r + 1}: {len(picks) + len(got)}/{k} picked in {time.perf_counter() - start:.0f}s")
        for pos, gain in got:
            picks.append(int(state.cand[pos]))
            rounds.append(r)
            gains.append(gain)
    return picks, rounds, gains, sizes


class _Greedy:
    """State across rounds: the screened matrix in quality order, pool statistics.
    ``cand`` and ``fill`` are pool positions; ``xrow`` and ``fill_x`` their rows of X."""

    def __init__(self, X, rows, q, cand, fill, eps, precision, backend, hot_size, shareable=False):
        self.X, self.q, self.cand, self.fill, self.eps = X, q, cand, fill, eps
        self.n_items = len(cand) + len(fill)
        self.xrow = cand if rows is None else rows[cand]
        self.fill_x = fill if rows is None else rows[fill]
        self.precision, self.bk, self.hot_size = precision, backend, max(16, int(hot_size))
        self.dtype = np.float64 if precision == "float64" else np.float32
        self.tau = TAU[precision]
        self.qs = q[cand]
        self.q2 = self.qs * self.qs
        self.alive = np.ones(len(cand), dtype=bool)
        self.n_alive_cand = len(cand)
        self.flushes = 0
        # Centring reference: keeps float32 screening well conditioned and the running
        # sums below free of cancellation.
        self.m0 = _mean_rows(X, rows)
        self.set_stats(rows)  # the whole pool in input order (no rows: plain slices, no gather)
        self.perm = None
        self.shared = shareable and X.dtype == self.dtype and len(cand) > 0 and self.mild_offset()
        if self.shared:
            # X's rows in screen order: the candidates by quality, the fill rows, the rest;
            # from here on a pool position is also its row of X
            self.perm = np.concatenate([self.xrow, self.fill_x, np.setdiff1d(np.arange(len(X)), self.pool_rows())])
            _permute_rows(X, self.perm)
            self.xrow = np.arange(len(cand))
            self.fill_x = np.arange(len(cand), self.n_items)
            try:
                self.Z = backend.share(X, len(cand))
            except BaseException:
                self.give_back()
                raise
            self.shift = self.m0  # the screen's rows are not centred: its offsets add m0
        else:
            self.Z = backend.gather_centered(X, self.xrow, self.m0, self.dtype)
            self.shift = np.zeros_like(self.m0)

    def mild_offset(self) -> bool:
        """Whether an uncentred float32 screen stays within the margin tau: its rounding
        grows with |mean| / std per dimension (IN_PLACE_MAX_OFFSET)."""
        n = max(1, self.n_pool)
        var = self.S2 / n - (self.S1 / n) ** 2
        live = var > 0
        offset = np.abs(self.m0 + self.S1 / n)[live] / np.sqrt(var[live])
        return not len(offset) or float(offset.max()) <= IN_PLACE_MAX_OFFSET

    def give_back(self) -> None:
        """Put a shared X's rows back in their input order."""
        if self.perm is not None:
            back = np.empty_like(self.perm)
            back[self.perm] = np.arange(len(self.perm))
            _permute_rows(self.X, back)
            self.perm = None

    # -- pool statistics (running sums of the pool rows, centred at m0) ------------
    def pool_rows(self) -> np.ndarray:
        return np.concatenate([self.xrow[self.alive], self.fill_x])

    def refresh_stats(self) -> None:
        self.set_stats(self.pool_rows())

    def set_stats(self, rows) -> None:
        self.n_pool = self.n_at_refresh = len(self.X) if rows is None else len(rows)
        self.S1, self.S2 = pool_sums(self.X, rows, self.m0)

    def remove_from_stats(self, pos: int) -> None:
        z = self.X[self.xrow[pos]].astype(np.float64) - self.m0
        self.S1 -= z
        self.S2 -= z * z
        self.n_pool -= 1
        self.alive[pos] = False
        self.n_alive_cand -= 1

    def round_standardisation(self):
        # Running sums drift by rounding as rows are removed; recompute when the pool
        # has halved so the error stays within a small factor of one pass.
        if self.n_pool * 2 < self.n_at_refresh:
            self.refresh_stats()
        return scaling(self.S1, self.S2, self.n_pool)

    def fallback_pick(self):
        pos = int(np.flatnonzero(self.alive)[0])  # highest quality, lowest index
        self.remove_from_stats(pos)
        return pos, 0.0

    # -- one round ----------------------------------------------------------------
    def run_round(self, budget, cond, weight):
        dim = self.X.shape[1]
        mu, inv, nonconst = self.round_standardisation()
        cap = min(nonconst, self.n_alive_cand, self.n_pool - 1, budget)
        cols = np.zeros((dim, 0))
        omega = np.zeros(0)
        c_shrink = 0.0
        V = None
        if cond is not None:
            Yp = (cond - self.m0 - mu) * inv
            V = _orthonormal_rows(Yp)
            if V.shape[1]:
                c_shrink = 1.0 - math.sqrt(max(0.0, 1.0 - weight))
                cols, omega = V.copy(), np.full(V.shape[1], weight)
                if weight >= 1.0:
                    cap = min(cap, nonconst - V.shape[1])
            else:
                V = None
        if cap <= 0:
            return []
        rd = _Round(self, mu, inv, cols, omega, V, c_shrink, cap)
        return rd.run()


class _Round:
    """One greedy round, three levels of freshness:

    screen  every row, in blocks of consecutive rows (quality order) each with its own
            count of applied columns; a "full flush" brings the blocks that may hold a
            top-w bound up to date; stale values are upper bounds (+ tau);
    warm    the top ``w`` rows of the screen, copied out and re-projected more often
            ("mini flush", a GEMM on w rows);
    hot     the top ``h`` warm rows, whose residuals are exact (float64) pick by pick.

    A pick is taken only when the best hot residual beats every bound outside the hot
    set; otherwise the cheapest level that can settle the question is refreshed.
    """

    def __init__(self, g: _Greedy, mu, inv, cols, omega, V, c_shrink, cap):
        self.g, self.mu, self.inv, self.V, self.c = g, mu, inv, V, c_shrink
        self.zmu = mu + g.shift  # the pool mean in the screen's coordinates
        dim = len(mu)
        n_cols_max = cols.shape[1] + cap
        self.cols = np.zeros((dim, n_cols_max))
        self.omega = np.zeros(n_cols_max)
        self.n_cols = self.n_cols0 = cols.shape[1]
        self.cols[:, : self.n_cols] = cols
        self.omega[: self.n_cols] = omega
        self.U = np.zeros((cap, dim))  # orthonormal basis of g-space, one row per pick
        self.cap = cap
        n = len(g.cand)
        self.acc = np.zeros(n)
        self.nrm = np.zeros(n)
        # The screen is cut into blocks of consecutive rows (quality order). A block keeps
        # its own count of applied columns (-1: not yet standardised) and the largest
        # bound of its rows; only blocks whose bound can still reach the warm set are
        # brought up to date, so low-quality blocks are projected rarely, on many columns.
        self.block = max(MIN_BLOCK_ROWS, -(-n // SCREEN_BLOCKS))
        self.starts = np.arange(0, n, self.block)
        self.sizes = np.diff(np.append(self.starts, n))
        self.done_b = np.full(len(self.starts), -1)
        self.s = np.where(g.alive, g.q2, -np.inf)  # inactive rows: residual ≤ q²
        self.smax_b = np.maximum.reduceat(self.s, self.starts) if n else np.zeros(0)
        self.comp_at = -1  # complement() is cached for this many columns
        self.dims = np.flatnonzero(inv > 0)  # the non-constant dimensions
        self.h = min(g.hot_size, g.n_alive_cand)
        self.w = min(max(WARM_PER_HOT * self.h, n // WARM_FRACTION), g.n_alive_cand)
        self.w_max = max(WARM_PER_HOT * HOT_MAX_ROWS, n // WARM_MAX_FRACTION)
        self.tau = g.tau * (g.q2[0] if n else 0.0)

    def run(self):
        g = self.g
        picks = []
        self.full_flush()
        fresh_full = fresh_mini = True
        while len(picks) < self.cap:
            r = self.r_h
            best = r.max()
            if not best > self.out_hot:
                if best < g.eps and self.out_hot < g.eps:
                    break
                warm_holds_leader = best > self.out_warm
                if (fresh_mini and 2 * self.h > HOT_MAX_ROWS) if warm_holds_leader else (fresh_full and 2 * self.w > self.w_max):
                    pick = self.exact_pick()  # growing the set further would cost more than a sweep
                    if pick is None:
                        break
                    picks.append(pick)
                    fresh_full = fresh_mini = False
                elif not warm_holds_leader:
                    if fresh_full:
                        self.w = min(2 * self.w, g.n_alive_cand)
                    self.full_flush()
                    fresh_full = fresh_mini = True
                else:
                    if fresh_mini:  # up to date: the hot set is too small
                        self.h = min(2 * self.h, len(self.W))
                    self.mini_flush()
                    fresh_mini = True
                continue
            if best < g.eps:
                break
            ties = np.flatnonzero(r == best)
            i = ties[np.argmin(self.hot_idx[ties])] if len(ties) > 1 else ties[0]
            pos = int(self.hot[i])
            picks.append(self.take(pos, self.Yh[i], self.nrm_h[i], float(best), len(picks)))
            fresh_full = fresh_mini = False
        return picks

    def take(self, pos: int, y: np.ndarray, nrm: float, gain: float, j: int):
        """Pick row ``pos`` (standardised row y, ‖y‖² = nrm) as the round's j-th pick."""
        g = self.g
        self.add_basis(y / math.sqrt(nrm), j)
        g.remove_from_stats(pos)
        self.s[pos] = -np.inf
        e = self.Yh @ self.cols[:, self.n_cols - 1]
        self.acc_h += e * e
        self.r_h = self.hot_residual()
        return pos, gain

    def exact_pick(self):
        """The next pick from exact float64 residuals of every alive row, a chunk at a time;
        None when the best is < eps.

        Used when the screen cannot separate the leader: late in a round on real
        embeddings (a near-singular last direction) every residual sits inside the float32
        screen's margin tau, and growing the hot set would hold the whole pool in float64.
        The residual comes straight from the complement of the basis (its columns: the
        directions not yet spanned), so a sweep costs about N·d·(3 + their number) flops.
        The screen keeps the exact values as its new bounds."""
        g = self.g
        rows = None if g.shared else g.xrow  # shared: pool position = row of X
        nrm, res = g.bk.exact_residuals(g.X, len(g.cand), rows, g.m0 + self.mu, self.inv, self.complement())
        self.nrm, self.acc = nrm, nrm - res
        with np.errstate(divide="ignore", invalid="ignore"):
            self.s = g.q2 * np.where(nrm > 0, res / nrm, 0.0)
        self.s[~g.alive] = -np.inf
        self.done_b[:] = self.n_cols
        self.smax_b = np.maximum.reduceat(self.s, self.starts)
        best = float(self.s.max())
        if not best >= g.eps:
            return None
        ties = np.flatnonzero(self.s == best)
        pos = int(ties[np.argmin(g.cand[ties])])
        y = self.standardised([pos])[0]
        return self.take(pos, y, float(y @ y), best, self.n_picks())

    def standardised(self, pos) -> np.ndarray:
        """Pool positions ``pos`` (or a slice) standardised in float64 from the input rows."""
        Y = self.g.X[self.g.xrow[pos]].astype(np.float64)
        Y -= self.g.m0 + self.mu
        Y *= self.inv
        return Y

    def n_picks(self) -> int:
        """Picks of this round so far: one basis row each."""
        return self.n_cols - self.n_cols0

    # -- level 1: the screen ----------------------------------------------------------
    def full_flush(self) -> None:
        """Bring every block that may hold one of the top-w bounds up to date (updating
        lowers bounds, so repeat until none is left), then take the warm set from them."""
        g = self.g
        g.flushes += 1
        while True:
            level = _about_kth_largest(self.s, self.w) if self.w < g.n_alive_cand else -np.inf
            stale = (self.done_b < self.n_cols) & (self.smax_b >= level) & (self.smax_b > -np.inf)
            if not stale.any():
                break
            self.prepare_complement(stale)
            for b0, b1 in _runs(stale, self.done_b):
                self.update_blocks(b0, b1)
        eligible = g.alive & np.repeat(self.done_b == self.n_cols, self.sizes)
        near = eligible & (self.s >= level)
        if np.count_nonzero(near) >= self.w:  # then the top w are among them: a smaller partition
            eligible = near
        W, out = _top(self.s, self.w, eligible)
        self.out_w_raw = out
        self.W = W
        self.Zw = g.bk.take(g.Z, W)
        self.acc_w = self.acc[W]
        self.nrm_w = self.nrm[W]
        self.done_w = self.n_cols
        self.mini_flush()

    def update_blocks(self, b0: int, b1: int) -> None:
        """Bring blocks b0..b1-1 (same column count) up to date with every column."""
        g = self.g
        a0, a1 = int(self.starts[b0]), int(self.starts[b1 - 1] + self.sizes[b1 - 1])
        done = int(self.done_b[b0])
        fresh = done < 0
        to_apply = self.n_cols - max(done, 0)
        B = self.comp if self.comp_at == self.n_cols else None
        if B is not None and B.shape[1] < to_apply:
            # Late in a round the basis leaves out fewer directions than there are columns
            # still to apply: project on those instead; that projection is the residual.
            self.acc[a0:a1] = 0.0
            self.project_rows(a0, a1, fresh, B, np.ones(B.shape[1]))
            self.acc[a0:a1] = self.nrm[a0:a1] - self.acc[a0:a1]
        else:
            new = slice(max(done, 0), self.n_cols)
            self.project_rows(a0, a1, fresh, self.cols[:, new], self.omega[new])
        self.done_b[b0:b1] = self.n_cols
        self.s[a0:a1] = self.screen(self.acc[a0:a1], self.nrm[a0:a1], slice(a0, a1))
        self.smax_b[b0:b1] = np.maximum.reduceat(self.s[a0:a1], self.starts[b0:b1] - a0)

    def project_rows(self, a0: int, a1: int, fresh: bool, cols: np.ndarray, omega: np.ndarray) -> None:
        """acc[a0:a1] += Σ_c ω_c (col_c·y)² over the rows' standardised y; fresh rows
        first get ‖y‖² (and acc 0)."""
        g = self.g
        if fresh:
            g.bk.activate(g.Z, a0, a1, self.zmu, self.inv, cols, omega, self.acc, self.nrm)
        else:
            cz = self.inv[:, None] * cols
            g.bk.project(g.Z, a0, a1, cz, self.zmu @ cz, omega, self.acc)

    def prepare_complement(self, stale: np.ndarray) -> None:
        """Compute the complement for this flush when the row-columns it can save on the
        stale blocks pay for its eigendecomposition (~d³ flops, i.e. ~5·d² row-columns);
        the complement has at least (non-constant dims − columns) columns."""
        if self.comp_at == self.n_cols:
            return
        behind = self.n_cols - np.maximum(self.done_b[stale], 0)
        saving = self.sizes[stale] * np.maximum(0, behind - (len(self.dims) - self.n_cols))
        if saving.sum() > COMPLEMENT_MIN_SAVING * len(self.dims) ** 2:
            self.complement()

    def complement(self) -> np.ndarray:
        """B with ‖Bᵀy‖² = ‖y‖² − Σ_c ω_c (col_c·y)² for every standardised y: the square
        root of I − Σ_c ω_c col_c col_cᵀ on the non-constant dimensions (rank: their number
        − picks, and − conditioning directions when the weight is 1)."""
        if self.comp_at != self.n_cols:
            C = self.cols[self.dims, : self.n_cols] * np.sqrt(self.omega[: self.n_cols])
            lam, Q = np.linalg.eigh(np.eye(len(self.dims)) - C @ C.T)
            keep = lam > 1e-12
            self.comp = np.zeros((len(self.inv), int(keep.sum())))
            self.comp[self.dims] = Q[:, keep] * np.sqrt(lam[keep])
            self.comp_at = self.n_cols
        return self.comp

    def screen(self, acc, nrm, pos) -> np.ndarray:
        g = self.g
        with np.errstate(divide="ignore", invalid="ignore"):
            s = g.q2[pos] * np.where(nrm > 0, 1.0 - acc / nrm, 0.0)
        s[~g.alive[pos]] = -np.inf
        return s

    # -- level 2: the warm set --------------------------------------------------------
    def mini_flush(self) -> None:
        g = self.g
        if self.n_cols > self.done_w:
            new = slice(self.done_w, self.n_cols)
            cz = self.inv[:, None] * self.cols[:, new]
            g.bk.project(self.Zw, 0, len(self.W), cz, self.zmu @ cz, self.omega[new], self.acc_w)
            self.done_w = self.n_cols
        s_w = self.screen(self.acc_w, self.nrm_w, self.W)
        local, out = _top(s_w, self.h, g.alive[self.W])
        out = max(out, self.out_w_raw)
        self.out_hot = out + self.tau if out > -np.inf else -np.inf
        self.out_warm = self.out_w_raw + self.tau if self.out_w_raw > -np.inf else -np.inf
        self.build_hot(local)

    # -- level 3: the hot set, exact ----------------------------------------------------
    def build_hot(self, local: np.ndarray) -> None:
        g = self.g
        hot = self.W[local]
        Y = np.empty((len(hot), g.X.shape[1]))
        nrm = np.empty(len(hot))
        acc = np.empty(len(hot))
        # Rows already hot keep their exact values (updated pick by pick); only the
        # newcomers are standardised and projected on every column.
        old = getattr(self, "hot", None)
        if old is not None and len(old):
            at = np.minimum(np.searchsorted(old, hot), len(old) - 1)
            kept = old[at] == hot
        else:
            at, kept = np.zeros(len(hot), dtype=np.int64), np.zeros(len(hot), dtype=bool)
        if kept.any():
            Y[kept], nrm[kept], acc[kept] = self.Yh[at[kept]], self.nrm_h[at[kept]], self.acc_h[at[kept]]
        new = ~kept
        if new.any():
            Yn = self.standardised(hot[new])
            Y[new] = Yn
            nrm[new] = np.einsum("ij,ij->i", Yn, Yn)
            if g.precision == "float64":  # the screen is already exact to rounding
                nw = self.nrm_w[local[new]]
                acc[new] = self.acc_w[local[new]] * (nrm[new] / np.where(nw > 0, nw, 1.0))
            else:
                P = Yn @ self.cols[:, : self.n_cols]
                acc[new] = (P * P) @ self.omega[: self.n_cols]
        self.hot, self.hot_idx = hot, g.cand[hot]
        self.Yh, self.nrm_h, self.acc_h = Y, nrm, acc
        self.r_h = self.hot_residual()

    def hot_residual(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.g.q2[self.hot] * np.where(self.nrm_h > 0, 1.0 - self.acc_h / self.nrm_h, 0.0)
        r[~self.g.alive[self.hot]] = -np.inf
        return r

    def add_basis(self, f: np.ndarray, j: int) -> None:
        # g = (I − cΠ) f ; Gram–Schmidt twice (CGS2) against the g-space basis.
        if self.V is not None:
            f = f - self.c * (self.V @ (self.V.T @ f))
        U = self.U[:j]
        u = f - (U @ f) @ U
        u -= (U @ u) @ U
        u /= np.linalg.norm(u)
        self.U[j] = u
        col = u - self.c * (self.V @ (self.V.T @ u)) if self.V is not None else u
        self.cols[:, self.n_cols] = col
        self.omega[self.n_cols] = 1.0
        self.n_cols += 1


def _top(s: np.ndarray, m: int, eligible: np.ndarray):
    """Indices (ascending) of the m largest eligible entries of s, and the largest entry of
    s outside them (-inf if none)."""
    idx = np.flatnonzero(eligible)
    if m < len(idx):
        idx = np.sort(idx[np.argpartition(-s[idx], m - 1)[:m]])
    rest = s.copy()
    rest[idx] = -np.inf
    return idx, float(rest.max()) if len(rest) else -np.inf


def _runs(mask: np.ndarray, key: np.ndarray):
    """(start, stop) of the maximal runs of consecutive True entries of mask with equal key."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    cut = np.flatnonzero((np.diff(idx) != 1) | (np.diff(key[idx]) != 0)) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, cut)]


def _about_kth_largest(s: np.ndarray, k: int) -> float:
    """The k-th largest entry of s; for a big s, that of an evenly strided sample of
    LEVEL_SAMPLE entries, aimed a little low (LEVEL_SLACK). A flush's level decides only
    how much it updates, not what is picked (a block left stale keeps an upper bound),
    and a full partition of 1M bounds took ~0.6 s of every round at 1M."""
    stride = len(s) // LEVEL_SAMPLE
    if stride < 2:
        return float(np.partition(s, len(s) - k)[len(s) - k])
    sample = s[::stride]
    ks = min(len(sample), max(1, math.ceil(k / stride / LEVEL_SLACK)))
    return float(np.partition(sample, len(sample) - ks)[len(sample) - ks])


def _orthonormal_rows(Y: np.ndarray) -> np.ndarray:
    """Orthonormal basis (d×r) of the span of the rows of Y (relative rank tolerance)."""
    if not len(Y):
        return np.zeros((Y.shape[1], 0))
    U, S, _ = np.linalg.svd(Y.T, full_matrices=False)
    if not len(S) or S[0] == 0:
        return np.zeros((Y.shape[1], 0))
    r = int((S > S[0] * max(Y.shape) * 1e-12).sum())
    return U[:, :r]


def _permute_rows(X: np.ndarray, perm: np.ndarray) -> None:
    """X[i] = X[perm[i]] for every i, in place, one cycle of the permutation at a time
    with one row of scratch (~2 s per million rows; a gather would copy X)."""
    p = perm.tolist()
    seen = bytearray(len(p))
    tmp = np.empty(X.shape[1], X.dtype)
    for start in range(len(p)):
        if seen[start] or p[start] == start:
            continue
        tmp[:] = X[start]
        i = start
        while True:
            seen[i] = 1
            j = p[i]
            if j == start:
                X[i] = tmp
                break
            X[i] = X[j]
            i = j


def _mean_rows(X: np.ndarray, rows) -> np.ndarray:
    """Mean of the rows ``rows`` of X (None: every row, by slices: no gathered copy)."""
    n = len(X) if rows is None else len(rows)
    total = np.zeros(X.shape[1])
    for a in range(0, n, CHUNK_ROWS):
        total += (X[a : a + CHUNK_ROWS] if rows is None else X[rows[a : a + CHUNK_ROWS]]).sum(axis=0, dtype=np.float64)
    return total / max(1, n)


# -- screening backends: numpy and torch (CUDA, or the CPU for big float32 screens) ----
class _NumpyBackend:
    """Screening with numpy BLAS, in ``threads`` threads that each take a chunk of rows
    (numpy's BLAS is held to one thread meanwhile, see _blas_threads_for). Big scratch
    arrays are allocated once per thread and reused: a fresh 100 MB temporary per flush
    costs more in page faults than its GEMM."""

    name = "cpu"

    def __init__(self, threads: int = 1):
        self._local = threading.local()
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="p3-dpp") if threads > 1 else None
        self.rows = THREAD_CHUNK_ROWS if self._pool else CHUNK_ROWS

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _scratch(self, key: str, shape: tuple, dtype) -> np.ndarray:
        bufs = self._local.__dict__.setdefault("buf", {})
        size = int(np.prod(shape))
        buf = bufs.get(key)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = bufs[key] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)

    def _chunks(self, a0: int, a1: int, rows: int, work) -> None:
        """work(a, b) for consecutive chunks of at most ``rows`` rows of a0:a1, spread
        over the threads (numpy's GEMMs and elementwise loops release the GIL)."""
        if self._pool is not None:  # at least one chunk per thread
            rows = max(MIN_THREAD_ROWS, min(rows, -(-(a1 - a0) // self.threads)))
        spans = [(a, min(a1, a + rows)) for a in range(a0, a1, rows)]
        if self._pool is None or len(spans) < 2:
            for a, b in spans:
                work(a, b)
        else:
            for _ in self._pool.map(lambda span: work(*span), spans):
                pass

    def gather_centered(self, X, rows, m0, dtype):
        """The screened matrix: rows of X in the given order, minus m0."""
        Z = X[rows].astype(dtype, copy=False)  # a fresh copy: fancy indexing copies
        Z -= m0.astype(dtype)
        return Z

    def share(self, X, n):
        """The screen as the first n rows of X itself (reordered by the caller, not centred)."""
        return X[:n]

    def take(self, Z, rows):
        return Z[rows]  # fancy indexing copies rows ~2x faster than np.take(out=…)

    def project(self, Z, a0, a1, cz, off, omega, acc) -> None:
        """acc[a0:a1] += Σ_c ω_c ((Z − …)·cz_c)² for the given new columns."""
        czt = np.ascontiguousarray(cz, dtype=Z.dtype)
        off_t, w = off.astype(Z.dtype), omega.astype(Z.dtype)

        def work(a, b):
            E = self._scratch("proj", (b - a, czt.shape[1]), Z.dtype)
            np.matmul(Z[a:b], czt, out=E)
            E -= off_t
            E *= E
            acc[a:b] += E @ w

        self._chunks(a0, a1, self.rows, work)

    def exact_residuals(self, X, n, rows, c, inv, B):
        """Float64 ‖y‖² and ‖Bᵀy‖² of the standardised rows y = (x − c)·inv of X[rows]
        (rows None: X[:n]), a chunk at a time."""
        nrm, res = np.empty(n), np.empty(n)
        for a in range(0, n, EXACT_CHUNK_ROWS):
            b = min(n, a + EXACT_CHUNK_ROWS)
            Y = (X[a:b] if rows is None else X[rows[a:b]]).astype(np.float64)
            Y -= c
            Y *= inv
            nrm[a:b] = np.einsum("ij,ij->i", Y, Y)
            R = Y @ B
            res[a:b] = np.einsum("ij,ij->i", R, R)
        return nrm, res

    def activate(self, Z, a0, a1, mu, inv, cols, omega, acc, nrm) -> None:
        """Start screening rows a0:a1: their ‖y‖² and projections on every column so far."""
        mu_t, inv_t = mu.astype(Z.dtype), inv.astype(Z.dtype)
        step = 4096  # small chunks stay in cache for the norm pass
        for a in range(a0, a1, step):
            b = min(a1, a + step)
            Y = self._scratch("norm", (b - a, Z.shape[1]), Z.dtype)
            np.subtract(Z[a:b], mu_t, out=Y)
            Y *= inv_t
            Y *= Y
            nrm[a:b] = Y.sum(axis=1)
        acc[a0:a1] = 0.0
        if cols.shape[1]:
            cz = inv[:, None] * cols
            self.project(Z, a0, a1, cz, mu @ cz, omega, acc)


class _TorchBackend:
    """Screening with torch: CUDA, or the CPU for big float32 screens. On the CPU torch
    gathers, copies the warm set and sweeps in float64 (two threads each), while the
    screen's projections run in numpy's OpenBLAS, one chunk of rows per thread: on the
    2-core AMD VM that is 1.3-1.6x torch's own GEMMs at 16-128 columns (bench notes in
    docs/selection.md). The screen's memory is shared between the two."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = "torch:cpu" if self.device.type == "cpu" else str(self.device)
        self.rows = CHUNK_ROWS * 4  # GPUs want big blocks
        self._take_buf = None
        self._cpu = _NumpyBackend(torch.get_num_threads()) if self.device.type == "cpu" else None

    def close(self) -> None:
        if self._cpu is not None:
            self._cpu.close()

    def gather_centered(self, X, rows, m0, dtype):
        """As numpy's, with a two-thread gather (10x numpy's on 1M rows in random order)."""
        torch = self.torch
        src = torch.from_numpy(np.ascontiguousarray(X))
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        Z = torch.empty((len(rows), X.shape[1]), dtype=torch.float32 if dtype == np.float32 else torch.float64)
        if src.dtype == Z.dtype:
            torch.index_select(src, 0, idx, out=Z)
        else:  # converted a chunk at a time: no full-size copy in the input's dtype
            for a in range(0, len(rows), CHUNK_ROWS):
                Z[a : a + CHUNK_ROWS] = src.index_select(0, idx[a : a + CHUNK_ROWS])
        Z = Z.to(self.device)
        return Z.sub_(torch.as_tensor(m0, dtype=Z.dtype, device=self.device))

    def share(self, X, n):
        """As numpy's; on a GPU the screen is the device's copy of those rows."""
        return self.torch.from_numpy(X[:n]).to(self.device)

    def take(self, Z, rows):
        """Copy of Z's rows, in a buffer reused by the next call (the warm set is replaced
        at each full flush): a fresh 50 MB tensor costs 5x the copy in page faults."""
        n = len(rows)
        buf = self._take_buf
        if buf is None or buf.shape[0] < n or buf.dtype != Z.dtype:
            buf = self._take_buf = self.torch.empty((max(n, 1), Z.shape[1]), dtype=Z.dtype, device=self.device)
        out = buf[:n]
        self.torch.index_select(Z, 0, self.torch.as_tensor(rows, device=self.device), out=out)
        return out

    def _t(self, a, like):
        return self.torch.as_tensor(np.ascontiguousarray(a), device=self.device, dtype=like.dtype)

    def project(self, Z, a0, a1, cz, off, omega, acc) -> None:
        if self._cpu is not None:
            return self._cpu.project(Z.numpy(), a0, a1, cz, off, omega, acc)
        # Σ_c ω_c e_c² = ‖e·√ω‖²: the weights go into the columns, the offset into the GEMM.
        root = np.sqrt(omega)
        czt, shift = self._t(cz * root, Z), self._t(-off * root, Z)
        for a in range(a0, a1, self.rows):
            b = min(a1, a + self.rows)
            E = self.torch.addmm(shift, Z[a:b], czt)
            acc[a:b] += self._sq_norms(E)

    def activate(self, Z, a0, a1, mu, inv, cols, omega, acc, nrm) -> None:
        if self._cpu is not None:
            return self._cpu.activate(Z.numpy(), a0, a1, mu, inv, cols, omega, acc, nrm)
        shift, inv_t = self._t(-mu * inv, Z), self._t(inv, Z)
        base = self._t(cols * np.sqrt(omega), Z)
        # Smaller blocks than project's: Y and E (up to d columns) then stay in cache.
        for a in range(a0, a1, self.rows // 4):
            b = min(a1, a + self.rows // 4)
            Y = self.torch.addcmul(shift, Z[a:b], inv_t)  # (z − μ)·inv in one pass
            nrm[a:b] = self._sq_norms(Y)
            acc[a:b] = self._sq_norms(Y @ base) if cols.shape[1] else 0.0

    def exact_residuals(self, X, n, rows, c, inv, B):
        """As numpy's, in torch's kernels: a subtraction into float64, a scaling and two
        norms per cache-sized chunk instead of numpy's six passes (2.7x numpy's speed on
        one thread at 200k × 384; at 1M the sweep reads the 1.5 GB matrix in ~0.3 s).
        With numpy on one thread the end-of-round sweep took a third of a round at 1M."""
        torch = self.torch
        f64 = dict(dtype=torch.float64, device=self.device)
        src = torch.from_numpy(X)
        idx = None if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64))
        c_t, inv_t, B_t = (torch.as_tensor(np.ascontiguousarray(a), **f64) for a in (c, inv, B))
        nrm, res = torch.empty(n, **f64), torch.empty(n, **f64)
        step = EXACT_TORCH_ROWS if self.device.type == "cpu" else CHUNK_ROWS * 4
        Y = torch.empty((min(step, n), X.shape[1]), **f64)
        for a in range(0, n, step):
            b = min(n, a + step)
            part = src[a:b] if idx is None else src.index_select(0, idx[a:b])
            y = Y[: b - a]
            torch.sub(part.to(self.device), c_t, out=y)
            y.mul_(inv_t)
            torch.linalg.vector_norm(y, dim=1, out=nrm[a:b])
            torch.linalg.vector_norm(y @ B_t, dim=1, out=res[a:b])
        return nrm.square_().cpu().numpy(), res.square_().cpu().numpy()

    def _sq_norms(self, E) -> np.ndarray:
        return self.torch.linalg.vector_norm(E, dim=1).double().square().cpu().numpy()


def _make_backend(device: str, precision: str, size: int):
    """numpy for small problems and float64; torch for CUDA (device "auto" on a machine
    with one) and, on the CPU, for float32 screens of ≥ TORCH_MIN_ENTRIES entries."""
    if device == "auto" and os.path.exists("/dev/nvidiactl"):  # pragma: no cover - no GPU in CI
        # Importing torch costs seconds; only a machine with an NVIDIA driver can use CUDA.
        import torch

        if torch.cuda.is_available():
            return _TorchBackend("cuda")
    if device == "numpy":
        return _NumpyBackend()
    if device in ("auto", "cpu"):
        if precision == "float32" and size >= TORCH_MIN_ENTRIES and _torch_installed():
            return _TorchBackend("cpu")
        return _NumpyBackend()
    return _TorchBackend(device.removeprefix("torch:"))


def _release_freed_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; elsewhere a
    no-op). A round's N-sized arrays and the screen's 25 MB GEMM blocks are freed every
    round, but glibc raises its mmap threshold after the first such free, so later ones
    come from the heap, and what is free there stays resident."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is a dependency of p3
        return False
    return True


def _blas_threads_for(backend):
    """While the screen runs on the CPU through torch, numpy's BLAS runs on one thread per
    call: the screen's GEMMs are spread over Python threads, one chunk each, and
    OpenBLAS threads that spin between calls would take the cores from torch's
    elementwise passes (measured with torch's GEMMs: ~110 against ~165 GFLOPS on 2 cores)."""
    if backend.name != "torch:cpu":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
