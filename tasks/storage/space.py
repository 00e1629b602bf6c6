"""Disk space of a volume: what it will take, what its file system has free, and the one-line
errors when it does not fit (before starting) or when the disk fills anyway (while writing).

The estimate covers every pyramid level (a 2x2x2 mean pyramid adds up to 1/7 of level 0) at the
codec's typical compression ratio on reconstructed float32 slices, measured with
``benchmarks/bench_write.py`` (``omezarr.CODEC_RATIO``). Reconstructions are noisy, so they
compress little; the estimate errs towards needing more.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Sequence
from pathlib import Path

from tomopipe.tasks.storage.omezarr import DEFAULT_CODEC, codec_ratio
from tomopipe.tasks.storage.pyramid import level_shape

from tomopipe.errors import InputError

FLOAT32 = 4
# Beyond the arrays: the zarr.json files, shard indexes and done-markers (a few KiB each).
MARGIN_BYTES = 64 << 10


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def volume_bytes(shape: Sequence[int], n_levels: int, codec: dict | None = DEFAULT_CODEC) -> int:
    """Estimated bytes on disk of a float32 volume of ``shape`` (z, y, x) with ``n_levels``."""
    raw = sum(FLOAT32 * _prod(level_shape(tuple(shape), k)) for k in range(n_levels))
    return int(raw / codec_ratio(codec)) + MARGIN_BYTES


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the file system that holds ``path`` or its nearest
    existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_fits(out: str | Path, needed: int, where: str | Path | None = None) -> None:
    """Refuse, before anything is written, a volume ``out`` that does not fit on the file
    system it is written to (``where``, e.g. its ``.partial`` folder; default ``out``)."""
    free = free_bytes(where or out)
    if needed > free:
        raise InputError(str(out), f"not enough disk space: the volume needs about "
                         f"{fmt_bytes(needed)} (all pyramid levels, compressed estimate) but "
                         f"{fmt_bytes(free)} is free there; free space or choose another output")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(out: str | Path, needed: int) -> InputError:
    """The one-line error for a disk that filled while the volume was written."""
    return InputError(str(out), f"the disk filled while writing: the volume needs about "
                      f"{fmt_bytes(needed)} and {fmt_bytes(free_bytes(out))} is free now; "
                      "nothing was published (the unfinished .partial resumes once there is "
                      "space)")
