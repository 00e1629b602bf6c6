"""Multiscale levels by 2 x 2 x 2 mean downsampling: a plain function on arrays.

A slab computes its own coarser levels, so the pyramid is built in the same pass as level 0.
Odd extents are padded by repeating the last plane, so a level's extent is always
``ceil(previous / 2)``; a slab that starts at a multiple of ``2**k`` lands exactly on its rows
of level ``k``.
"""

from __future__ import annotations

import math

import numpy as np


def level_shape(shape: tuple[int, ...], level: int) -> tuple[int, ...]:
    """Extent of ``level`` (0 = full resolution) for a volume of ``shape``."""
    return tuple(math.ceil(s / 2**level) for s in shape)


def downsample_mean(volume: np.ndarray) -> np.ndarray:
    """Halve every axis of a 3-D array by averaging 2 x 2 x 2 blocks (float32 out)."""
    if volume.ndim != 3:
        raise ValueError(f"downsample_mean expects a 3-D array, got shape {volume.shape}")
    pad = [(0, s % 2) for s in volume.shape]
    if any(p[1] for p in pad):
        volume = np.pad(volume, pad, mode="edge")
    # Pairwise sums along each axis, then one scale: 7x faster than a mean over the axes of a
    # 6-D view (which NumPy walks element by element), same values within float32 rounding.
    v = np.asarray(volume, dtype=np.float32)
    v = v[0::2] + v[1::2]
    v = v[:, 0::2] + v[:, 1::2]
    v = v[:, :, 0::2] + v[:, :, 1::2]
    v *= np.float32(0.125)
    return v


def build_levels(volume: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """``[volume, volume/2, volume/4, ...]``: ``n_levels`` arrays, level 0 first."""
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    levels = [np.asarray(volume, dtype=np.float32)]
    for _ in range(n_levels - 1):
        levels.append(downsample_mean(levels[-1]))
    return levels
