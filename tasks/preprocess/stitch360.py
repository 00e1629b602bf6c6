"""360-degree scans with the rotation axis off the detector's middle (extended field of view).

With the axis near one edge, each half-turn sees one side of the object; the frame at
theta + 180 degrees, mirrored about the axis, carries the other side. Convention as in
``center.py``: column j sits at u = j - c from the axis c; at theta + 180 degrees the same ray
arrives at column 2c - j. Stitching each frame of the first half-turn with the mirrored frame
180 degrees later gives one 180-degree sinogram of about twice the width, centred on the axis,
which any backend then reconstructs to the full width.

- ``is_full_turn``: the angles cover 360 degrees.
- ``find_axis_360``: the axis from the overlap of the two half-turns, with a confidence.
- ``stitch_half_turns``: the 180-degree sinograms of twice the width.
- ``stitched_width``: their width, for planning the output before any data are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from tomopipe.tasks.preprocess._validate import ArrayInputError, as_angles, as_array, require_finite

# An axis further than this fraction of the row from the middle is "off-centre": the scan is
# stitched. Closer to the middle, the plain reconstruction already sees the whole object and
# uses every frame (the backends weight 360 degrees of views by half).
OFFSET_FRACTION = 0.1
MIN_OVERLAP_PX = 8  # the half-turns must share this many columns for the axis to be found
SEARCH_MAX_COLS = 128  # the coarse axis search bins columns down to at most this many
SMOOTH_MIN_PX, SMOOTH_PER_COLS = 2.0, 256  # Gaussian sigma max(2, cols / 256) before comparing
SEARCH_MAX_PAIRS = 90  # frame pairs per quarter-turn used by the axis search
AGREEMENT_SCALE_PX = 1.0  # confidence = exp(-d^2 / 2) for a disagreement of d pixels, as centre


@dataclass(frozen=True)
class AxisEstimate:
    """The axis of a 360-degree scan from the overlap of its half-turns.

    value: axis column (TomoPy's counting); overlap_px: columns the two half-turns share;
    confidence in [0, 1]: agreement of the estimates from the two halves of the angles,
    exp(-d^2/2) for d pixels apart; estimates: each half's own value.
    """

    value: float
    confidence: float
    overlap_px: float
    estimates: dict[str, float] = field(default_factory=dict)


def angle_step(angles_rad) -> float:
    steps = np.diff(np.sort(np.asarray(angles_rad, dtype=np.float64)))
    steps = steps[steps > 1e-12]
    return float(np.median(steps)) if steps.size else 0.0


def is_full_turn(angles_rad) -> bool:
    """True when the angles span a full turn: 360 degrees less at most 1.5 angular steps."""
    ang = np.asarray(angles_rad, dtype=np.float64)
    if ang.size < 4:
        return False
    step = angle_step(ang)
    return step > 0 and float(np.ptp(ang)) >= 2 * math.pi - 1.5 * step


def is_offset_axis(angles_rad, center: float, n_cols: int) -> bool:
    """Whether a scan is reconstructed by stitching: a full turn with the axis off-centre."""
    return (is_full_turn(angles_rad)
            and abs(float(center) - (n_cols - 1) / 2) > OFFSET_FRACTION * n_cols)


def stitched_width(center: float, n_cols: int) -> int:
    """Columns of the stitched sinogram: odd, centred on the axis, reaching the far edge."""
    reach = max(float(center), n_cols - 1 - float(center))
    return 2 * math.ceil(reach) + 1


def half_turn_pairs(angles_rad) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j): frame i in the first half-turn, frame j 180 degrees after it (the
    nearest, within half an angular step). Raises when the second half-turn has no match."""
    ang = np.asarray(angles_rad, dtype=np.float64)
    step = angle_step(ang)
    first = np.flatnonzero(ang < ang.min() + math.pi - 0.5 * step)
    order = np.argsort(ang, kind="stable")
    target = ang[first] + math.pi
    pos = np.clip(np.searchsorted(ang[order], target), 1, ang.size - 1)
    lo, hi = order[pos - 1], order[pos]
    j = np.where(np.abs(ang[lo] - target) <= np.abs(ang[hi] - target), lo, hi)
    miss = np.abs(ang[j] - target)
    if first.size == 0 or np.any(miss > 0.5 * step + 1e-9):
        k = int(np.argmax(miss)) if first.size else 0
        raise ArrayInputError("angles_rad", "a 360-degree scan needs a frame 180 degrees after "
                              f"each frame of its first half-turn; frame {int(first[k])} has "
                              f"none within half a step ({math.degrees(step) / 2:.3f} degrees)")
    return first, j


def _sample(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of rows (..., W) at fractional columns ``cols`` (K,); also which
    columns fell inside the row."""
    w = rows.shape[-1]
    inside = (cols >= 0) & (cols <= w - 1)
    c = np.clip(cols, 0, w - 1)
    j0 = np.minimum(np.floor(c).astype(np.int64), w - 2)
    t = (c - j0).astype(rows.dtype)
    return rows[..., j0] * (1 - t) + rows[..., j0 + 1] * t, inside


def _mismatch(a: np.ndarray, b: np.ndarray, center: float) -> tuple[float, int]:
    """How badly a (pairs, W) and b mirrored about ``center`` disagree on the columns both see
    (the overlap), and the overlap's width.

    The mean squared difference of their gradients (a level difference between the half-turns,
    such as beam decay, cancels) over the same with b's frames paired with other angles
    (rolled by half the pairs): near 0 at the axis, near 1 where the columns are unrelated. The
    baseline keeps a narrow overlap on smooth data from looking like a match.
    """
    w = a.shape[-1]
    cols = np.arange(w, dtype=np.float64)
    mirrored, inside = _sample(b, 2 * center - cols)
    n = int(inside.sum())
    if n < MIN_OVERLAP_PX:
        return math.inf, n
    da = np.diff(a[:, inside], axis=-1)
    db = np.diff(mirrored[:, inside], axis=-1)
    baseline = float(np.mean((da - np.roll(db, max(1, db.shape[0] // 2), axis=0)) ** 2))
    return float(np.mean((da - db) ** 2)) / (baseline + 1e-30), n


def _bin_columns(rows: np.ndarray, factor: int) -> np.ndarray:
    n = rows.shape[-1] // factor * factor
    return rows[..., :n].reshape(rows.shape[0], -1, factor).mean(axis=-1)


def _best_axis(a: np.ndarray, b: np.ndarray, lo: float, hi: float, step: float) -> float:
    """The axis with the least mismatch: a coarse pass on columns binned to at most
    SEARCH_MAX_COLS, then 1-px steps at full resolution, then refinement down to ``step``."""
    def search(a, b, cands):
        values = np.array([_mismatch(a, b, c)[0] for c in cands])
        return float(cands[int(np.argmin(values))])

    f = max(1, math.ceil(a.shape[-1] / SEARCH_MAX_COLS))
    if f > 1:  # binned column J sits at f*J + (f-1)/2: a centre c is (c - (f-1)/2) / f there
        ab, bb = _bin_columns(a, f), _bin_columns(b, f)
        lo_b = max((lo - (f - 1) / 2) / f, (MIN_OVERLAP_PX - 1) / 2)
        hi_b = min((hi - (f - 1) / 2) / f, ab.shape[-1] - 1 - (MIN_OVERLAP_PX - 1) / 2)
        coarse = search(ab, bb, np.arange(lo_b, hi_b + 1e-9, 1.0))
        centre = f * coarse + (f - 1) / 2
        lo, hi = max(lo, centre - 2 * f), min(hi, centre + 2 * f)
    best = search(a, b, np.arange(lo, hi + 1e-9, 1.0))
    spacing = 1.0
    while spacing > step + 1e-9:
        new = max(spacing / 4, step)
        cands = best + np.arange(-spacing, spacing + 1e-9, new)
        best = search(a, b, cands[(cands >= lo) & (cands <= hi)])
        spacing = new
    return best


def find_axis_360(sinos, angles_rad, *, step: float = 0.25) -> AxisEstimate:
    """The rotation axis of a 360-degree scan from sinograms (rows, angles, cols), minus-log.

    Every axis position from the row's edge to its other edge is tried (keeping at least
    MIN_OVERLAP_PX shared columns): the frames of the first half-turn are compared with the
    frames 180 degrees later mirrored about it, on the columns both see (the band's mean
    sinogram, smoothed along the row); the least ``_mismatch`` of their gradients wins. The
    search runs on the two halves of the pairs (first and second quarter-turns) separately:
    they are independent estimates, averaged for the value, and their disagreement d gives the
    confidence exp(-d^2/2) (``center.auto_center``'s formula).
    """
    arr = as_array(sinos, "sinos", (3,), "3-D (rows, angles, cols)")
    require_finite(arr, "sinos")
    angles = as_angles(angles_rad, "angles_rad", arr.shape[1])
    if not is_full_turn(angles):
        raise ArrayInputError("angles_rad", f"span {math.degrees(float(np.ptp(angles))):.1f} "
                              "degrees: the overlap of half-turns needs a 360-degree scan")
    w = arr.shape[2]
    if w < 2 * MIN_OVERLAP_PX:
        raise ArrayInputError("sinos", f"has {w} columns: too few to find an axis")
    i, j = half_turn_pairs(angles)
    band = arr.mean(axis=0, dtype=np.float64)  # the band's mean sinogram: less noise
    # Gradients of raw rows are mostly photon noise on wide detectors; a Gaussian along the
    # row (which moves nothing) keeps the object's edges and drops the noise.
    band = ndimage.gaussian_filter1d(band, max(SMOOTH_MIN_PX, w / SMOOTH_PER_COLS), axis=-1,
                                     mode="nearest")
    a, b = band[i], band[j]
    lo, hi = (MIN_OVERLAP_PX - 1) / 2, w - 1 - (MIN_OVERLAP_PX - 1) / 2
    half = i.size // 2
    estimates = {}
    for name, part in (("first quarter-turn", slice(0, half)),
                       ("second quarter-turn", slice(half, i.size))):
        k = np.arange(part.start, part.stop)
        k = k[np.linspace(0, k.size - 1, min(k.size, SEARCH_MAX_PAIRS)).round().astype(int)]
        estimates[name] = _best_axis(a[k], b[k], lo, hi, step)
    e1, e2 = estimates.values()
    value = 0.5 * (e1 + e2)
    d = abs(e1 - e2)
    confidence = math.exp(-0.5 * (d / AGREEMENT_SCALE_PX) ** 2)
    _, overlap = _mismatch(a, b, value)
    return AxisEstimate(float(value), float(confidence), float(overlap), estimates)


def stitch_half_turns(sinos, angles_rad, center: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One 180-degree sinogram of about twice the width from a 360-degree scan.

    sinos: (rows, angles, cols) after minus-log; center: the axis column. Returns
    (rows, n_first, W') float32 sinograms, the first half-turn's angles, and the new axis
    column (W' - 1) / 2, with W' = ``stitched_width``. Each frame of the first half-turn is
    joined with the frame 180 degrees later mirrored about the axis; where both see a column
    they are blended with weights that fall linearly to zero at each frame's own edge, so the
    join leaves no step.
    """
    arr = as_array(sinos, "sinos", (3,), "3-D (rows, angles, cols)")
    angles = as_angles(angles_rad, "angles_rad", arr.shape[1])
    w = arr.shape[2]
    center = float(center)
    if not 0 <= center <= w - 1:
        raise ArrayInputError("center", f"{center} lies outside the detector row 0:{w}")
    i, j = half_turn_pairs(angles)
    width = stitched_width(center, w)
    mid = (width - 1) // 2
    u = np.arange(width, dtype=np.float64) - mid  # distance from the axis
    overlap = 2 * min(center, w - 1 - center) + 1
    ramp = max(1.0, overlap / 2)

    def weight(cols, inside):
        edge = np.minimum(cols, w - 1 - cols)
        return np.where(inside, np.clip((edge + 0.5) / ramp, 1e-3, 1.0), 0.0)

    cols_a, cols_b = center + u, center - u
    out = np.empty((arr.shape[0], i.size, width), np.float32)
    for r in range(arr.shape[0]):
        va, ina = _sample(arr[r, i].astype(np.float64), cols_a)
        vb, inb = _sample(arr[r, j].astype(np.float64), cols_b)
        wa, wb = weight(cols_a, ina), weight(cols_b, inb)
        out[r] = (va * wa + vb * wb) / np.maximum(wa + wb, 1e-12)
    return out, angles[i], float(mid)
