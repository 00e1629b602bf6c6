"""Read what the analysis needs from a published volume: a pyramid level small enough to
measure quickly, the full shape, and the live views' figures when the run streamed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_level(path: str | Path, max_px: int = 256) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(the finest level no wider than ``max_px``, the full volume's shape (z, y, x))."""
    import zarr
    from tomopipe.tasks.preview import finest_level

    level = finest_level(path, max_px)
    full = tuple(int(s) for s in zarr.open_group(str(path), mode="r")["0"].shape)
    return np.asarray(level[...], dtype=np.float32), full


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
