"""When a live reconstruction has converged: plain functions on the figures its updates leave.

The figure is the Pearson correlation of the live xy slice with its previous update
(``tomopipe_live.correlation``, tasks/recon/streaming.py). In a golden-ratio scan every update
adds angles spread over the whole half-turn, so the slice changes less and less; once successive
updates correlate above ``threshold`` for ``patience`` updates in a row, and at least
``min_fraction`` of the planned angles are in, more angles change little. The benchmark
(benchmarks/bench_steering.py) and tests/test_analysis.py hold the figure against the final
volume: the correlation of the early-stopped slice with the full scan's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

THRESHOLD = 0.995
PATIENCE = 2
MIN_FRACTION = 0.2


def correlation(a, b) -> float:
    """Pearson correlation of two arrays (1: the same up to scale and offset; 0 when either is
    constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"correlation: the arrays differ in size ({a.size} and {b.size})")
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


@dataclass(frozen=True)
class Convergence:
    """converged: whether to stop; correlation and fraction: the last update's; streak: how many
    updates in a row reached the threshold; reason: why (not)."""

    converged: bool
    correlation: float | None
    fraction: float | None
    streak: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def assess(updates: Sequence[tuple[float, float | None]], *, threshold: float = THRESHOLD,
           patience: int = PATIENCE, min_fraction: float = MIN_FRACTION) -> Convergence:
    """``updates``: (fraction of the angles in, correlation with the previous update) of each
    live update, oldest first (the correlation is None for the first)."""
    if not updates:
        return Convergence(False, None, None, 0, "no live update yet")
    streak = 0
    for _, corr in updates:
        streak = streak + 1 if corr is not None and corr >= threshold else 0
    fraction, corr = updates[-1]
    if fraction < min_fraction:
        return Convergence(False, corr, fraction, streak,
                           f"only {fraction:.0%} of the angles are in (at least "
                           f"{min_fraction:.0%} before stopping)")
    if streak < patience:
        return Convergence(False, corr, fraction, streak,
                           f"{streak} update(s) in a row correlate at >= {threshold} with the "
                           f"one before ({patience} needed)")
    return Convergence(True, corr, fraction, streak,
                       f"{streak} updates in a row correlate at >= {threshold} with the one "
                       f"before, with {fraction:.0%} of the angles in")
