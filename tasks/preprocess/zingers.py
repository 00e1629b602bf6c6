"""Zinger (isolated bright spike) removal: pixels far above their local median get the median."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from tomopipe.tasks.preprocess._validate import ArrayInputError, as_array, require_finite

AXES = ("image", "angle")


def _median(arr: np.ndarray, size: int, axis: str) -> np.ndarray:
    if axis == "image":  # 2-D median within each projection
        footprint = (size, size) if arr.ndim == 2 else (1, size, size)
    else:  # 1-D median along the angle axis, per detector pixel
        footprint = (size, 1) if arr.ndim == 2 else (size, 1, 1)
    # "mirror" (not "reflect"): an edge pixel must not be repeated inside its own window
    return ndimage.median_filter(arr, size=footprint, mode="mirror")


def find_zingers(proj, threshold: float, size: int = 3, *, axis: str = "image") -> np.ndarray:
    """Boolean mask of pixels exceeding their local median by more than ``threshold``.

    proj: (angles, rows, cols) or one (rows, cols) frame. threshold: in the data's units (> 0).
    size: odd median window (>= 3). axis: "image" (size x size window within each projection) or
    "angle" (window of ``size`` frames along the angle axis; needs 3-D data or a sinogram).
    """
    arr, size = _check(proj, threshold, size, axis)
    return (arr - _median(arr, size, axis)) > threshold


def remove_zingers(proj, threshold: float, size: int = 3, *, axis: str = "image") -> np.ndarray:
    """Copy of ``proj`` (float32) with zingers replaced by the local median.

    Only pixels ABOVE the median by more than ``threshold`` are changed (zingers are bright);
    everything else is returned unchanged. Arguments as in ``find_zingers``.
    """
    arr, size = _check(proj, threshold, size, axis)
    med = _median(arr, size, axis)
    mask = (arr - med) > threshold
    out = arr.copy()
    out[mask] = med[mask]
    return out


def _check(proj, threshold, size, axis) -> tuple[np.ndarray, int]:
    arr = as_array(proj, "proj", (2, 3), "(angles, rows, cols) or (rows, cols)")
    require_finite(arr, "proj")
    if axis not in AXES:
        raise ArrayInputError("axis", f"must be one of {AXES}, got {axis!r}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ArrayInputError("threshold", f"must be a finite number > 0, got {threshold}")
    if int(size) != size or size < 3 or size % 2 == 0:
        raise ArrayInputError("size", f"must be an odd integer >= 3, got {size}")
    return arr.astype(np.float32, copy=False), int(size)
