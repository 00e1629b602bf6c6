"""Flat-field drift: flats taken before and after the projections, interpolated in between.

The beam and the scintillator change during a scan (top-up, heat load); one mean flat then
leaves a slow error in the projections far from when it was taken. With flats before and after,
each projection is divided by the flat interpolated linearly at its own position in the
acquisition (frame index or time):

    flat(p) = (1 - w_p) * flat_before + w_p * flat_after,
    w_p = clip((pos_p - pos_before) / (pos_after - pos_before), 0, 1)

where pos_before and pos_after are the mean positions of the two flat groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tomopipe.tasks.preprocess._validate import ArrayInputError, as_array, require_finite
from tomopipe.tasks.preprocess.normalize import DEAD_PIXEL_EPS, _field
from tomopipe.tasks.recon.params import FLAT_METHODS


@dataclass(frozen=True)
class FlatSchedule:
    """Where the flats and projections were taken, in one ordering (frame index or time).

    n_before: how many of the flats (as read, in order) were taken before the projections; the
    rest were taken after. before/after: the two groups' mean positions; projections: one
    position per projection.
    """

    n_before: int
    before: float
    after: float
    projections: tuple[float, ...]

    def weights(self) -> np.ndarray:
        """w_p per projection: 0 at the flats before, 1 at the flats after."""
        span = self.after - self.before
        pos = np.asarray(self.projections, dtype=np.float64)
        return np.clip((pos - self.before) / span, 0.0, 1.0)

    def to_dict(self) -> dict:
        w = self.weights()
        return {"method": "linear between flats before and after", "n_before": self.n_before,
                "position_before": self.before, "position_after": self.after,
                "weight_first": float(w[0]), "weight_last": float(w[-1])}


def schedule_from_positions(flat_positions, projection_positions) -> FlatSchedule | None:
    """The schedule when some flats come before every projection and some after every one;
    None otherwise (no drift correction: the flats are averaged). Flats must be listed in the
    order they are read, those before first."""
    flats = np.asarray(flat_positions, dtype=np.float64)
    proj = np.asarray(projection_positions, dtype=np.float64)
    if flats.size < 2 or proj.size < 1:
        return None
    before = flats < proj.min()
    after = flats > proj.max()
    n_before = int(before.sum())
    if n_before == 0 or not after.any() or not (before | after).all():
        return None
    if not (before[:n_before].all() and after[n_before:].all()):
        raise ArrayInputError("flat positions", "flats taken before the projections must be "
                              "listed before those taken after")
    return FlatSchedule(n_before, float(flats[before].mean()), float(flats[after].mean()),
                        tuple(float(p) for p in proj))


def normalize_drift(projections, flats, darks, schedule: FlatSchedule, method: str = "mean", *,
                    out=None) -> np.ndarray:
    """``(proj - dark) / (flat(p) - dark)`` with flat(p) interpolated per projection, float32.

    projections (angles, rows, cols); flats (n, rows, cols), the first ``schedule.n_before``
    taken before; darks (n, rows, cols) or None (zeros). Dead pixels (flat - dark <= 1e-6 in
    either group) give 1.0, as in ``normalize``. ``out=projections`` (float32) works in place.
    """
    if method not in FLAT_METHODS:
        raise ArrayInputError("method", f"must be one of {FLAT_METHODS}, got {method!r}")
    proj = as_array(projections, "projections", (3,), "(angles, rows, cols)")
    require_finite(proj, "projections")
    flats = as_array(flats, "flats", (3,), "(n, rows, cols)")
    if not 0 < schedule.n_before < flats.shape[0]:
        raise ArrayInputError("flats", f"{flats.shape[0]} frames cannot be split into "
                              f"{schedule.n_before} before and the rest after the projections")
    if len(schedule.projections) != proj.shape[0]:
        raise ArrayInputError("schedule", f"has {len(schedule.projections)} projection "
                              f"positions for {proj.shape[0]} projections")
    shape = proj.shape[-2:]
    f0 = _field(flats[:schedule.n_before], "flats before", shape, method)
    f1 = _field(flats[schedule.n_before:], "flats after", shape, method)
    dark = np.zeros(shape, np.float32) if darks is None else _field(darks, "darks", shape, method)
    d0, d1 = f0 - dark, f1 - dark
    dead = ~((d0 > DEAD_PIXEL_EPS) & (d1 > DEAD_PIXEL_EPS))
    d0[dead] = 1.0
    d1[dead] = 1.0
    if out is None:
        out = proj.astype(np.float32, copy=True)
    elif out is not proj:
        out[...] = proj
    denom = np.empty(shape, np.float32)
    for k, w in enumerate(schedule.weights().astype(np.float32)):
        np.multiply(d0, 1 - w, out=denom)
        denom += w * d1
        out[k] -= dark
        out[k] /= denom
    if dead.any():
        out[..., dead] = 1.0
    return out
