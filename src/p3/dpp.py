"""Exact greedy MAP for the P3 diversity DPP without the N×N kernel (DESIGN.md §1.3).

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

Speed: projections of the pool onto new basis vectors are batched into one GEMM per
"flush"; between flushes, picks are chosen from a small *hot set* whose residuals are
kept exactly (float64) pick by pick, and a pick is taken only when it provably beats the
stale residuals of everything outside the hot set (residuals only decrease, so stale
values are upper bounds). Items are visited in descending quality: an item whose q² is
below the current best residual need not be projected at all yet ("activation").
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

import dataclasses
import math
import os
import time

import numpy as np

from p3.logs import get_logger

log = get_logger("dpp")

# Above this many matrix entries the default precision switches to float32 screening.
FLOAT64_MAX_ENTRIES = 2**21
TAU = {"float64": 1e-11, "float32": 1e-3}
CHUNK_ROWS = 32768
TORCH_CHUNK_ROWS = 16384
TORCH_MIN_ENTRIES = 2**25
# Warm-set size: max(WARM_PER_HOT·h, N / WARM_FRACTION); flops per round are ≈ (N + w + h)·d².
WARM_PER_HOT = 4
WARM_FRACTION = 32


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
    hot_size: int = 1024,
) -> DppResult:
    """Greedy MAP DPP selection of ``k`` rows of ``features`` (N×d) with quality ``quality``.

    See the module docstring for the exact specification. ``device``: "auto" (CUDA
    through torch when available, else numpy), "cpu" (numpy), or a torch device string
    ("cuda", "cuda:1", "torch:cpu"). Deterministic: no randomness is involved.
    """
    start = time.perf_counter()
    X = np.asarray(features)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D matrix, got shape {X.shape}")
    n_items, dim = X.shape
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
    backend = _make_backend(device)

    fill = np.flatnonzero(q * q < eps)
    cand = np.flatnonzero(q * q >= eps)
    cand = cand[np.lexsort((cand, -q[cand]))]  # quality descending, then index
    state = _Greedy(X, q, cand, fill, eps, precision, backend, hot_size)
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
            picks.append(int(cand[pos]))
            rounds.append(r)
            gains.append(gain)
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
    )


class _Greedy:
    """State across rounds: the screened matrix in quality order, pool statistics."""

    def __init__(self, X, q, cand, fill, eps, precision, backend, hot_size):
        self.X, self.q, self.cand, self.fill, self.eps = X, q, cand, fill, eps
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
        self.m0 = _mean_rows(X, np.arange(len(X)))
        self.Z = backend.put(_gather_centered(X, cand, self.m0, self.dtype))
        self.refresh_stats()

    # -- pool statistics (running sums of the pool rows, centred at m0) ------------
    def pool_rows(self) -> np.ndarray:
        return np.concatenate([self.cand[self.alive], self.fill])

    def refresh_stats(self) -> None:
        rows = self.pool_rows()
        self.n_pool = len(rows)
        self.n_at_refresh = self.n_pool
        self.S1 = np.zeros(self.X.shape[1])
        self.S2 = np.zeros(self.X.shape[1])
        whole = len(rows) == len(self.X)  # the first time: plain slices, no gather
        for a in range(0, len(rows), 8192):
            z = (self.X[a : a + 8192] if whole else self.X[rows[a : a + 8192]]).astype(np.float64)
            z -= self.m0
            self.S1 += z.sum(axis=0)
            z *= z
            self.S2 += z.sum(axis=0)

    def remove_from_stats(self, pos: int) -> None:
        z = self.X[self.cand[pos]].astype(np.float64) - self.m0
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
        n = self.n_pool
        mean_sq = self.S2 / n
        mu = self.S1 / n
        var = mean_sq - mu * mu
        const = var <= 1e-10 * mean_sq
        inv = np.where(const, 0.0, 1.0 / np.sqrt(np.where(const, 1.0, var)))
        return mu, inv, int((~const).sum())

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

    screen  every active row (quality-order prefix), projected in big GEMMs at a
            "full flush"; stale in between, so an upper bound (+ tau);
    warm    the top ``w`` rows of the screen, copied out and re-projected more often
            ("mini flush", a GEMM on w rows);
    hot     the top ``h`` warm rows, whose residuals are exact (float64) pick by pick.

    A pick is taken only when the best hot residual beats every bound outside the hot
    set; otherwise the cheapest level that can settle the question is refreshed.
    """

    def __init__(self, g: _Greedy, mu, inv, cols, omega, V, c_shrink, cap):
        self.g, self.mu, self.inv, self.V, self.c = g, mu, inv, V, c_shrink
        dim = len(mu)
        n_cols_max = cols.shape[1] + cap
        self.cols = np.zeros((dim, n_cols_max))
        self.omega = np.zeros(n_cols_max)
        self.n_cols = cols.shape[1]
        self.cols[:, : self.n_cols] = cols
        self.omega[: self.n_cols] = omega
        self.U = np.zeros((cap, dim))  # orthonormal basis of g-space, one row per pick
        self.cap = cap
        self.done = 0  # columns applied to every active screened row
        self.active = 0  # screened prefix length (positions in quality order)
        n = len(g.cand)
        self.acc = np.zeros(n)
        self.nrm = np.zeros(n)
        self.h = min(g.hot_size, g.n_alive_cand)
        self.w = min(max(WARM_PER_HOT * self.h, n // WARM_FRACTION), g.n_alive_cand)
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
                if not best > self.out_warm:  # the warm set no longer holds the leader
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
            self.add_basis(self.Yh[i] / math.sqrt(self.nrm_h[i]), len(picks))
            picks.append((pos, float(best)))
            g.remove_from_stats(pos)
            e = self.Yh @ self.cols[:, self.n_cols - 1]
            self.acc_h += e * e
            self.r_h = self.hot_residual()
            fresh_full = fresh_mini = False
        return picks

    # -- level 1: the screen ----------------------------------------------------------
    def full_flush(self) -> None:
        g = self.g
        g.flushes += 1
        if self.n_cols > self.done and self.active:
            new = slice(self.done, self.n_cols)
            cz = self.inv[:, None] * self.cols[:, new]
            g.bk.project(g.Z, 0, self.active, cz, self.mu @ cz, self.omega[new], self.acc)
        self.done = self.n_cols
        n = len(g.cand)
        while True:  # activate rows in quality order until the inactive ones cannot matter
            s = self.screen(self.acc[: self.active], self.nrm[: self.active], np.arange(self.active))
            if self.active >= n:
                break
            alive_active = int(g.alive[: self.active].sum())
            level = _kth_largest(s, self.w) if alive_active >= self.w else -np.inf
            if g.q2[self.active] < level:
                break
            self.activate(min(n, self.active + max(self.w, self.active, 1024)))
        alive_active = int(g.alive[: self.active].sum())
        W, out = _top(s, min(self.w, alive_active), g.alive[: self.active])
        if self.active < n:
            out = max(out, g.q2[self.active])  # an inactive row's residual is ≤ q²
        self.out_w_raw = out
        self.W = W
        self.Zw = g.bk.take(g.Z, W)
        self.acc_w = self.acc[W]
        self.nrm_w = self.nrm[W]
        self.done_w = self.done
        self.mini_flush()

    def activate(self, upto: int) -> None:
        g = self.g
        g.bk.activate(
            g.Z, self.active, upto, self.mu, self.inv, self.cols[:, : self.n_cols], self.omega[: self.n_cols], self.acc, self.nrm
        )
        self.active = upto

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
            g.bk.project(self.Zw, 0, len(self.W), cz, self.mu @ cz, self.omega[new], self.acc_w)
            self.done_w = self.n_cols
        s_w = self.screen(self.acc_w, self.nrm_w, self.W)
        alive_w = int(g.alive[self.W].sum())
        local, out = _top(s_w, min(self.h, alive_w), g.alive[self.W])
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
            Yn = g.X[g.cand[hot[new]]].astype(np.float64)
            Yn -= g.m0 + self.mu
            Yn *= self.inv
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


def _top(s: np.ndarray, m: int, alive: np.ndarray):
    """Indices (ascending) of the m largest alive entries of s, and the largest other one."""
    n_alive = int(alive.sum())
    if m >= n_alive:
        return np.flatnonzero(alive), -np.inf
    idx = np.argpartition(-s, m - 1)[:m]
    rest = s.copy()
    rest[idx] = -np.inf
    return np.sort(idx), float(rest.max())


def _kth_largest(s: np.ndarray, k: int) -> float:
    return float(np.partition(s, len(s) - k)[len(s) - k])


def _orthonormal_rows(Y: np.ndarray) -> np.ndarray:
    """Orthonormal basis (d×r) of the span of the rows of Y (relative rank tolerance)."""
    if not len(Y):
        return np.zeros((Y.shape[1], 0))
    U, S, _ = np.linalg.svd(Y.T, full_matrices=False)
    if not len(S) or S[0] == 0:
        return np.zeros((Y.shape[1], 0))
    r = int((S > S[0] * max(Y.shape) * 1e-12).sum())
    return U[:, :r]


def _mean_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    total = np.zeros(X.shape[1])
    for a in range(0, len(rows), CHUNK_ROWS):
        total += X[rows[a : a + CHUNK_ROWS]].sum(axis=0, dtype=np.float64)
    return total / max(1, len(rows))


def _gather_centered(X, rows, m0, dtype) -> np.ndarray:
    Z = X[rows].astype(dtype, copy=False)  # a fresh copy: fancy indexing copies
    Z -= m0.astype(dtype)
    return Z


# -- screening backends: numpy (CPU) and torch (CUDA) -------------------------------
class _NumpyBackend:
    """Screening with numpy BLAS. Big scratch arrays are allocated once and reused:
    a fresh 100 MB temporary per flush costs more in page faults than its GEMM."""

    name = "cpu"

    def __init__(self):
        self._buf: dict[str, np.ndarray] = {}

    def _scratch(self, key: str, shape: tuple, dtype) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._buf.get(key)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._buf[key] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)

    def put(self, Z):
        return Z

    def take(self, Z, rows):
        return Z[rows]  # fancy indexing copies rows ~2x faster than np.take(out=…)

    def project(self, Z, a0, a1, cz, off, omega, acc) -> None:
        """acc[a0:a1] += Σ_c ω_c ((Z − …)·cz_c)² for the given new columns."""
        if _use_torch(Z):
            return _cpu_torch_backend().project(_cpu_torch().from_numpy(Z), a0, a1, cz, off, omega, acc)
        czt = np.ascontiguousarray(cz, dtype=Z.dtype)
        off_t, w = off.astype(Z.dtype), omega.astype(Z.dtype)
        for a in range(a0, a1, CHUNK_ROWS):
            b = min(a1, a + CHUNK_ROWS)
            E = self._scratch("proj", (b - a, czt.shape[1]), Z.dtype)
            np.matmul(Z[a:b], czt, out=E)
            E -= off_t
            E *= E
            acc[a:b] += E @ w

    def activate(self, Z, a0, a1, mu, inv, cols, omega, acc, nrm) -> None:
        """Start screening rows a0:a1: their ‖y‖² and projections on every column so far."""
        if _use_torch(Z):
            return _cpu_torch_backend().activate(_cpu_torch().from_numpy(Z), a0, a1, mu, inv, cols, omega, acc, nrm)
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


def _use_torch(Z: np.ndarray) -> bool:
    """Big float32 screens run on the CPU through the torch backend: its GEMM and its
    two-thread elementwise passes beat numpy's by ~25 % on 1M×384 (importing torch costs ~1 s)."""
    return Z.dtype == np.float32 and Z.size >= TORCH_MIN_ENTRIES and _cpu_torch() is not None


def _cpu_torch():
    """torch, when installed (imported on first use)."""
    global _TORCH
    if _TORCH is None:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of p3
            torch = False
        _TORCH = torch
    return _TORCH or None


def _cpu_torch_backend() -> "_TorchBackend":
    global _CPU_TORCH_BACKEND
    if _CPU_TORCH_BACKEND is None:
        _CPU_TORCH_BACKEND = _TorchBackend("cpu")
    return _CPU_TORCH_BACKEND


_TORCH = None
_CPU_TORCH_BACKEND = None


class _TorchBackend:
    """Screening with torch: CUDA, or the CPU for big float32 screens (zero-copy from numpy)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = str(self.device)
        # CPU: 16k-row blocks stay cache-friendly for the elementwise passes; GPUs want big ones
        self.rows = TORCH_CHUNK_ROWS if self.device.type == "cpu" else CHUNK_ROWS * 4

    def put(self, Z):
        return self.torch.from_numpy(Z).to(self.device)

    def take(self, Z, rows):
        return Z[self.torch.as_tensor(rows, device=self.device)]

    def _t(self, a, like):
        return self.torch.as_tensor(np.ascontiguousarray(a), device=self.device, dtype=like.dtype)

    def project(self, Z, a0, a1, cz, off, omega, acc) -> None:
        czt, offt, w = self._t(cz, Z), self._t(off, Z), self._t(omega, Z)
        for a in range(a0, a1, self.rows):
            b = min(a1, a + self.rows)
            E = Z[a:b] @ czt
            E.sub_(offt).square_()
            acc[a:b] += (E @ w).double().cpu().numpy()

    def activate(self, Z, a0, a1, mu, inv, cols, omega, acc, nrm) -> None:
        mu_t, inv_t = self._t(mu, Z), self._t(inv, Z)
        base, w = self._t(cols, Z), self._t(omega, Z)
        for a in range(a0, a1, self.rows):
            b = min(a1, a + self.rows)
            Y = (Z[a:b] - mu_t).mul_(inv_t)
            nrm[a:b] = self.torch.linalg.vector_norm(Y, dim=1).double().square().cpu().numpy()
            if cols.shape[1]:
                E = (Y @ base).square_()
                acc[a:b] = (E @ w).double().cpu().numpy()
            else:
                acc[a:b] = 0.0


def _make_backend(device: str):
    if device == "auto":
        # Importing torch costs seconds; only a machine with an NVIDIA driver can use it.
        if os.path.exists("/dev/nvidiactl"):  # pragma: no cover - no GPU in CI
            import torch

            if torch.cuda.is_available():
                return _TorchBackend("cuda")
        return _NumpyBackend()
    if device in ("cpu", "numpy"):
        return _NumpyBackend()
    return _TorchBackend(device.removeprefix("torch:"))
