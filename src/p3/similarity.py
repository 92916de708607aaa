"""The DPP's similarity space, and the diversity of a set in it (docs/design.md §1.3).

Embeddings are standardised per dimension over a pool (mean 0, population std 1; a
dimension whose variance is at most ``CONSTANT_VARIANCE`` of its mean square is constant
and maps to 0) and L2-normalised (a zero row stays zero). The cosine similarity of two
such rows is S of the kernel L = diag(q)·S·diag(q). The DPP (per round, from running
sums), the selector's report and the run report all standardise through
:func:`scaling`; nothing else does.

The diversity of a set of k rows is log det(I + S) and the mean pairwise cosine, with S
the k×k cosine Gram in this space; a selection is compared with random draws of the same
size from the same pool (:func:`diversity_vs_random`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# A dimension whose variance over the pool is at most this fraction of its mean square
# (about the centring reference) is constant: rounding, not signal.
CONSTANT_VARIANCE = 1e-10
# Rows converted to float64 at a time (25 MB at d=384).
CHUNK_ROWS = 8192
# Random draws the diversity baseline averages over (one draw is noisy).
RANDOM_DRAWS = 5


def pool_sums(X: np.ndarray, rows: Optional[np.ndarray], centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ z and Σ z² (float64, per dimension) of z = X[rows] − centre; ``rows`` None: every
    row (plain slices, no gather)."""
    n = len(X) if rows is None else len(rows)
    s1, s2 = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for a in range(0, n, CHUNK_ROWS):
        z = (X[a : a + CHUNK_ROWS] if rows is None else X[rows[a : a + CHUNK_ROWS]]).astype(np.float64)
        z -= centre
        s1 += z.sum(axis=0)
        z *= z
        s2 += z.sum(axis=0)
    return s1, s2


def scaling(s1: np.ndarray, s2: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """From the sums of n rows z (centred at any reference): the mean of z, 1/std per
    dimension (0 for a constant dimension) and the number of non-constant dimensions."""
    mean_sq = s2 / n
    mu = s1 / n
    var = mean_sq - mu * mu
    const = var <= CONSTANT_VARIANCE * mean_sq
    inv = np.where(const, 0.0, 1.0 / np.sqrt(np.where(const, 1.0, var)))
    return mu, inv, int((~const).sum())


def pool_scaling(X: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1/std) of the rows ``pool`` of X: centred at their mean first, so the sums
    of squares do not cancel."""
    s1, _ = pool_sums(X, pool, np.zeros(X.shape[1]))
    centre = s1 / max(1, len(pool))
    s1, s2 = pool_sums(X, pool, centre)
    mu, inv, _ = scaling(s1, s2, max(1, len(pool)))
    return centre + mu, inv


def standardise(X: np.ndarray, rows: np.ndarray, mean: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of X standardised with (mean, inv) from :func:`pool_scaling`, then
    L2-normalised: float64, computed in place (at k=100k each temporary is 300 MB)."""
    F = X[rows].astype(np.float64)
    F -= mean
    F *= inv
    nrm = np.linalg.norm(F, axis=1, keepdims=True)
    F /= np.where(nrm > 0, nrm, 1.0)
    return F


def diversity(x: np.ndarray) -> dict[str, float]:
    """Diversity of rows ``x`` (already standardised): log-det and mean pairwise cosine.

    log-det is log det(I + S) with S the k×k cosine Gram matrix: unlike det(S) it stays
    finite when k exceeds the embedding dimension (S then has rank ≤ d), and it grows
    with the volume the set spans. Compare it only between sets of the same size.
    Never forms S: O(k·d) memory, so k = 100k is fine.
    """
    x = np.asarray(x, dtype=np.float64)
    k, d = x.shape
    if k < 2:
        return {"logdet": float("nan"), "mean_cosine": float("nan")}
    # det(I_k + X Xᵀ) = det(I_d + Xᵀ X): take the smaller of the two.
    small = x @ x.T if k <= d else x.T @ x
    return _diversity_from(x.sum(axis=0), float(np.einsum("ij,ij->", x, x)), small, k)


def diversity_of(X: np.ndarray, rows: np.ndarray, mean: np.ndarray, inv: np.ndarray) -> dict[str, float]:
    """:func:`diversity` of ``standardise(X, rows, mean, inv)`` without holding that k×d
    float64 matrix when k > CHUNK_ROWS: its sums and Xᵀ X are taken a chunk at a time
    (at k=100k, d=384 the matrix and np.linalg.norm's temporary were 600 MB of `p3
    select`'s peak). Up to CHUNK_ROWS rows it is exactly diversity(standardise(…))."""
    if len(rows) <= CHUNK_ROWS:
        return diversity(standardise(X, rows, mean, inv))
    d = X.shape[1]
    total, sq, gram = np.zeros(d), 0.0, np.zeros((d, d))
    for a in range(0, len(rows), CHUNK_ROWS):
        x = standardise(X, rows[a : a + CHUNK_ROWS], mean, inv)
        total += x.sum(axis=0)
        sq += float(np.einsum("ij,ij->", x, x))
        gram += x.T @ x
    return _diversity_from(total, sq, gram, len(rows))


def _diversity_from(total: np.ndarray, sq: float, small: np.ndarray, k: int) -> dict[str, float]:
    """log det(I + small) and the mean pairwise cosine from Σ x_i and Σ ‖x_i‖²
    of k ≥ 2 rows (Σ_{i≠j} x_i·x_j = ‖Σ x_i‖² − Σ ‖x_i‖²)."""
    mean_cos = (total @ total - sq) / (k * (k - 1))
    sign, logdet = np.linalg.slogdet(np.eye(len(small)) + small)
    return {"logdet": float(logdet) if sign > 0 else float("-inf"), "mean_cosine": float(mean_cos)}


def diversity_vs_random(X: np.ndarray, pool: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> dict:
    """Diversity of the rows ``chosen`` vs the mean of RANDOM_DRAWS random draws of the
    same size from ``pool``, all standardised over the pool (the space the DPP saw)."""
    mean, inv = pool_scaling(X, pool)
    sel = diversity_of(X, chosen, mean, inv)
    if len(chosen) == len(pool):  # a draw of the whole pool is the selection (both measures ignore order)
        draws = [sel]
    else:
        draws = [diversity_of(X, pool[rng.choice(len(pool), size=len(chosen), replace=False)], mean, inv)
                 for _ in range(RANDOM_DRAWS)]
    rand = {key: float(np.mean([d[key] for d in draws])) for key in ("logdet", "mean_cosine")}
    return {"k": int(len(chosen)), "draws": len(draws), "selected": sel, "random": rand}
