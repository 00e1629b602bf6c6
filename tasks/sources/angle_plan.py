"""Acquisition orders of the rotation angles, and the angles a run declares before its scan.

Plain Python and NumPy. Orders (frame ``i`` of ``n`` over an arc of ``arc`` degrees):

- ``sequential``: ``i * arc / n``, the usual sweep.
- ``interlaced``: the same ``n`` evenly spaced angles taken in ``INTERLACE_LOOPS`` (4) passes,
  each pass every 4th angle, the passes offset in bit-reversed order (0, 2, 1, 3), so that
  after each pass the angles seen are evenly spread.
- ``golden``: ``(i * arc * (phi - 1)) mod arc`` with ``phi`` the golden ratio: every prefix
  of the sequence covers the arc almost evenly (the gaps take at most three sizes).

A run that declares its angles lets a reader weight every frame for the final volume before the
scan ends (streaming). The start document's ``tomo`` mapping may carry either
``planned_angles_deg`` (one angle per projection, acquisition order) or
``angle_plan: {order, n_angles, arc_deg, start_deg}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

ORDERS = ("sequential", "interlaced", "golden")
INTERLACE_LOOPS = 4
GOLDEN_FRACTION = (math.sqrt(5.0) - 1.0) / 2.0  # phi - 1 = 1 / phi


def _bit_reversed(k: int) -> list[int]:
    bits = max(1, (k - 1).bit_length())
    return sorted(range(k), key=lambda j: int(f"{j:0{bits}b}"[::-1], 2))


def angle_sequence(n_angles: int, order: str = "sequential", *, arc_deg: float = 180.0,
                   start_deg: float = 0.0) -> np.ndarray:
    """The ``n_angles`` rotation angles in degrees, in acquisition order."""
    n = int(n_angles)
    if n < 1:
        raise ValueError(f"n_angles: need at least 1, got {n_angles}")
    if order not in ORDERS:
        raise ValueError(f"order: unknown angle order {order!r}; choose one of "
                         f"{', '.join(ORDERS)}")
    if order == "golden":
        angles = np.mod(np.arange(n) * arc_deg * GOLDEN_FRACTION, arc_deg)
    else:
        even = np.arange(n) * (arc_deg / n)
        if order == "sequential":
            angles = even
        else:
            loops = min(INTERLACE_LOOPS, n)
            index = np.concatenate([np.arange(j, n, loops) for j in _bit_reversed(loops)])
            angles = even[index]
    return start_deg + angles


def angle_plan_metadata(n_angles: int, order: str, *, arc_deg: float = 180.0,
                        start_deg: float = 0.0) -> dict:
    """The ``tomo.angle_plan`` mapping a start document carries for ``angle_sequence``."""
    angle_sequence(1, order)  # checks the order
    return {"order": order, "n_angles": int(n_angles), "arc_deg": float(arc_deg),
            "start_deg": float(start_deg)}


def planned_angles_deg(tomo: Mapping | None) -> np.ndarray | None:
    """The angles a run's ``tomo`` metadata declares before the scan, or None when it declares
    none (or declares them in a form we do not read: then the reader does without)."""
    if not isinstance(tomo, Mapping):
        return None
    listed = tomo.get("planned_angles_deg")
    if isinstance(listed, list | tuple) and listed:
        try:
            values = np.asarray([float(v) for v in listed])
        except (TypeError, ValueError):
            return None
        return values if np.all(np.isfinite(values)) else None
    plan = tomo.get("angle_plan")
    if not isinstance(plan, Mapping):
        return None
    try:
        return angle_sequence(int(plan["n_angles"]), str(plan.get("order", "sequential")),
                              arc_deg=float(plan.get("arc_deg", 180.0)),
                              start_deg=float(plan.get("start_deg", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None
