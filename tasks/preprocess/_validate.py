"""Input checks shared by the preprocessing functions: errors name the array and the fault."""

from __future__ import annotations

import numpy as np

from tomopipe.errors import InputError


class ArrayInputError(InputError, ValueError):
    """An array argument that cannot be used: also a ValueError for callers that expect one."""


def as_array(x, name: str, ndims: tuple[int, ...], layout: str) -> np.ndarray:
    """``x`` as an ndarray, checked to have one of ``ndims`` dimensions and real numbers."""
    arr = np.asarray(x)
    if arr.ndim not in ndims:
        raise ArrayInputError(name, f"must be {layout}, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ArrayInputError(name, f"must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ArrayInputError(name, "must be real, got complex values")
    if arr.size == 0:
        raise ArrayInputError(name, f"is empty (shape {arr.shape})")
    return arr


def require_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` holds NaN or inf. One float64 reduction; no array-sized temporary."""
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return
    # A NaN or inf anywhere makes the sum non-finite; only then pay for the exact count.
    if np.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64)):
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ArrayInputError(name, f"holds {bad} NaN or infinite value(s)")


def as_angles(angles_rad, name: str, n_angles: int) -> np.ndarray:
    """Check a 1-D array of finite angles in radians whose length matches the data."""
    ang = np.asarray(angles_rad, dtype=np.float64)
    if ang.ndim != 1:
        raise ArrayInputError(name, f"must be 1-D (angles in radians), got shape {ang.shape}")
    if ang.size != n_angles:
        raise ArrayInputError(
            name, f"has {ang.size} angles but the data has {n_angles} along the angle axis"
        )
    if not np.all(np.isfinite(ang)):
        raise ArrayInputError(name, "holds NaN or infinite angles")
    return ang
