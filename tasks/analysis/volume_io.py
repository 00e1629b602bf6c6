"""Read what the analysis needs from a published volume: a pyramid level small enough to
measure quickly, the full shape, and the live views' figures when the run streamed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tomopipe.errors import InputError


def read_level(path: str | Path, max_px: int = 256) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(the finest level no wider than ``max_px``, the full volume's shape (z, y, x))."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise InputError(str(path), f"not a readable OME-Zarr volume: {exc}") from exc
    levels = sorted((k for k in group.array_keys() if k.isdigit()), key=int)
    if not levels:
        raise InputError(str(path), "no pyramid levels (arrays 0, 1, ...)")
    full = tuple(int(s) for s in group[levels[0]].shape)
    chosen = next((k for k in levels if max(group[k].shape[1:]) <= max_px), levels[-1])
    return np.asarray(group[chosen][...], dtype=np.float32), full


def read_live(volume: str | Path) -> dict:
    """The ``tomopipe_live`` figures of the run's live views; {} when it did not stream."""
    from tomopipe.tasks.storage.live_views import live_path, read_live_attrs

    path = live_path(volume)
    if not path.exists():
        return {}
    try:
        return dict(read_live_attrs(path))
    except Exception:  # a live group being removed or rewritten: no figure
        return {}
