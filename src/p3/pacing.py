"""Self-paced learning: which problems are easy enough for this epoch (docs/design.md §1.2).

Pure functions. With progress ``t = e / E`` for epoch ``e`` of ``E`` (e = 0 … E−1):

- ``linear``:    pct(e) = start + (end − start) · t          (paper default, 45 → 95)
- ``root``:      pct(e) = start + (end − start) · √t         (opens up fast, then slowly)
- ``geometric``: pct(e) = start · (end / start) ** t         (start must be > 0)

Eligible items (``eligible``):

- ``threshold``: difficulty ≤ percentile(difficulty, pct(e))
- ``band``:      percentile(lower(e)) ≤ difficulty ≤ percentile(pct(e)), where lower(e)
                 follows the same shape from ``lower_start`` to ``lower_end``
- ``momentum``:  as ``threshold`` but on d̃ = d_t + α (d_t − d_{t−1}) (the paper code's
                 momentum form, α = 0.1); items without a previous difficulty use d_t.

Percentiles are numpy's default (linear interpolation between order statistics).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SHAPES = ("linear", "root", "geometric")
MODES = ("threshold", "band", "momentum")


def percentile_at(epoch: int, epochs: int, start: float = 45.0, end: float = 95.0, shape: str = "linear") -> float:
    """The pacing percentile for ``epoch`` (0-based) of ``epochs``."""
    if epochs < 1 or not 0 <= epoch:
        raise ValueError(f"need 0 ≤ epoch and epochs ≥ 1, got epoch={epoch} epochs={epochs}")
    if not (0.0 <= start <= 100.0 and 0.0 <= end <= 100.0):
        raise ValueError(f"percentiles must be in [0, 100], got start={start} end={end}")
    t = min(epoch, epochs) / epochs
    if shape == "linear":
        return start + (end - start) * t
    if shape == "root":
        return start + (end - start) * math.sqrt(t)
    if shape == "geometric":
        if start <= 0:
            raise ValueError("geometric pacing needs start > 0")
        return start * (end / start) ** t
    raise ValueError(f"unknown pacing shape {shape!r} (choose from {', '.join(SHAPES)})")


def momentum_difficulty(current: np.ndarray, previous: np.ndarray | None, alpha: float = 0.1) -> np.ndarray:
    """d̃ = d_t + α (d_t − d_{t−1}); NaN in ``previous`` (no earlier score) leaves d_t."""
    current = np.asarray(current, dtype=np.float64)
    if previous is None:
        return current.copy()
    previous = np.asarray(previous, dtype=np.float64)
    trend = np.where(np.isnan(previous), 0.0, current - previous)
    return current + alpha * trend


@dataclasses.dataclass
class Pace:
    """What the pacing decided: the mask, the percentile(s) and threshold(s) used."""

    eligible: np.ndarray  # bool per item
    percentile: float
    threshold: float
    lower_percentile: float | None = None
    lower_threshold: float | None = None
    momentum_applied: bool = False  # momentum moved the values: some earlier difficulty was known


def eligible(
    difficulty: np.ndarray,
    epoch: int,
    epochs: int,
    start: float = 45.0,
    end: float = 95.0,
    shape: str = "linear",
    mode: str = "threshold",
    lower_start: float = 0.0,
    lower_end: float = 50.0,
    alpha: float = 0.1,
    previous: np.ndarray | None = None,
) -> Pace:
    """Which items are eligible at ``epoch``; see the module docstring for the rules."""
    d = np.asarray(difficulty, dtype=np.float64)
    if mode not in MODES:
        raise ValueError(f"unknown pacing mode {mode!r} (choose from {', '.join(MODES)})")
    pct = percentile_at(epoch, epochs, start, end, shape)
    if not len(d):
        return Pace(np.zeros(0, dtype=bool), pct, float("nan"))
    known = None if previous is None else ~np.isnan(np.asarray(previous, dtype=np.float64))
    moved = mode == "momentum" and known is not None and bool(known.any())
    values = momentum_difficulty(d, previous, alpha) if moved else d
    thr = float(np.percentile(values, pct))
    mask = values <= thr
    if mode != "band":
        return Pace(mask, pct, thr, momentum_applied=moved)
    low_pct = percentile_at(epoch, epochs, lower_start, lower_end, shape)
    if low_pct > pct:
        raise ValueError(f"band: lower percentile {low_pct:.1f} above upper {pct:.1f} at epoch {epoch}")
    low = float(np.percentile(values, low_pct))
    return Pace(mask & (values >= low), pct, thr, low_pct, low)
