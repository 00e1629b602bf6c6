"""Flat/dark-field normalisation and the minus-log transform, float32 throughout."""

from __future__ import annotations

import numpy as np
from tomopipe.tasks.preprocess._validate import ArrayInputError, as_array, require_finite
from tomopipe.tasks.recon.params import FLAT_METHODS as METHODS

# Below this flat-minus-dark difference (in counts) a detector pixel carries no usable signal.
DEAD_PIXEL_EPS = 1e-6


def _field(fields, name: str, shape: tuple[int, int], method: str) -> np.ndarray:
    """Reduce a stack of flats or darks (n, rows, cols), or one (rows, cols) field, to float32."""
    arr = as_array(fields, name, (2, 3), "(n, rows, cols) or (rows, cols)")
    require_finite(arr, name)
    if arr.shape[-2:] != shape:
        raise ArrayInputError(
            name, f"frame shape {arr.shape[-2:]} does not match the projections' {shape}"
        )
    if arr.ndim == 2:
        return arr.astype(np.float32)
    reduce = np.mean if method == "mean" else np.median
    return reduce(arr.astype(np.float32, copy=False), axis=0).astype(np.float32, copy=False)


def normalize(projections, flats, darks=None, method: str = "mean", *, out=None) -> np.ndarray:
    """Flat/dark normalisation ``(proj - dark) / (flat - dark)`` in float32.

    projections: (angles, rows, cols) or one (rows, cols) frame, any numeric dtype.
    flats, darks: stacks (n, rows, cols) or single frames (rows, cols); ``darks=None`` means zero.
    method: how the stacks are reduced to one field, "mean" or "median". With "mean" the result
    equals TomoPy's ``normalize`` bit for bit where the detector pixel is alive.
    out: optional float32 array of the projections' shape to write into; pass the projections
    themselves (when float32) to work in place on big slabs and save one slab of memory.

    Dead pixels (flat - dark <= 1e-6, including flat == dark) are MARKED, not clipped: their
    output is set to 1.0 (full transmission, so zero attenuation after minus_log) in every frame,
    instead of TomoPy's huge values from clipping the denominator. No inf or NaN comes out.
    """
    if method not in METHODS:
        raise ArrayInputError("method", f"must be one of {METHODS}, got {method!r}")
    proj = as_array(projections, "projections", (2, 3), "(angles, rows, cols) or (rows, cols)")
    require_finite(proj, "projections")
    frame_shape = proj.shape[-2:]
    flat = _field(flats, "flats", frame_shape, method)
    dark = (
        np.zeros(frame_shape, np.float32)
        if darks is None
        else _field(darks, "darks", frame_shape, method)
    )
    denom = flat - dark
    dead = ~(denom > DEAD_PIXEL_EPS)
    denom[dead] = 1.0

    if out is None:
        out = proj.astype(np.float32, copy=True)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != proj.shape:
            raise ArrayInputError(
                "out", f"must be a float32 array of shape {proj.shape}, got {type(out).__name__}"
            )
        if out is not proj:
            out[...] = proj
    # In place on `out`: the only temporaries are frame-sized (dark, denom).
    np.subtract(out, dark, out=out)
    np.divide(out, denom, out=out)
    if dead.any():
        out[..., dead] = 1.0
    return out


def minus_log(x, floor: float = 1e-6, *, out=None) -> np.ndarray:
    """``-log(max(x, floor))`` in float32: non-positive (and tiny) transmissions are clipped to
    ``floor`` so no inf or NaN comes out. ``out=x`` (float32) works in place."""
    if not floor > 0:
        raise ArrayInputError("floor", f"must be > 0, got {floor}")
    arr = as_array(x, "x", (1, 2, 3, 4), "an array of transmissions")
    require_finite(arr, "x")
    if out is None:
        out = arr.astype(np.float32, copy=True)
    elif out is not arr:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != arr.shape:
            raise ArrayInputError("out", f"must be a float32 array of shape {arr.shape}")
        out[...] = arr
    np.maximum(out, np.float32(floor), out=out)
    np.log(out, out=out)
    np.negative(out, out=out)
    return out
