"""Memory-aware chunk planning: how many detector rows one worker reconstructs at a time.

A slab is the unit of work: a worker reads its rows from the source, reconstructs them, builds
their pyramid levels and writes them. Slab boundaries are aligned to the output's shards at every
pyramid level, so every shard has exactly one writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tomopipe.tasks.storage.omezarr import LevelLayout
from tomopipe.tasks.storage.pyramid import level_shape

from tomopipe.errors import PlanError

MiB = 2**20
# A worker process's own footprint (interpreter, NumPy, Zarr, Dask) before it holds any data.
DEFAULT_OVERHEAD = 160 * MiB
FLOAT32 = 4
# How much of a GPU's memory the planner lets a slab use (the rest: CUDA context, FFT plans).
GPU_FRACTION = 0.8


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def default_levels(n_rows: int, n_cols: int, *, max_levels: int = 4, min_extent: int = 16) -> int:
    """Pyramid levels (level 0 included): halve while slices stay ``min_extent`` wide or more."""
    levels = 1
    while levels < max_levels and n_cols // 2**levels >= min_extent and n_rows >= 2**levels:
        levels += 1
    return levels


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def level_layouts(n_rows: int, n_cols: int, n_levels: int, shard_z: int, *,
                  chunk_z: int = 8, chunk_yx: int = 256, shard_yx: int = 1024) -> tuple:
    """Shape, chunks and shards of every level. Level ``k`` shards hold ``shard_z >> k`` planes
    (at least one), so a slab aligned to ``align_rows(shard_z, n_levels)`` owns whole shards."""
    layouts = []
    for k in range(n_levels):
        z, y, x = level_shape((n_rows, n_cols, n_cols), k)
        sz = max(1, shard_z >> k)
        cz = min(chunk_z, sz)
        cyx = min(chunk_yx, y)
        syx = cyx * max(1, math.ceil(min(shard_yx, y) / cyx))
        layouts.append(LevelLayout((z, y, x), (cz, cyx, cyx), (sz, syx, syx)))
    return tuple(layouts)


def align_rows(shard_z: int, n_levels: int) -> int:
    """Smallest slab height (level-0 rows) whose boundaries fall on shard boundaries everywhere."""
    out = 1
    for k in range(n_levels):
        out = math.lcm(out, max(1, shard_z >> k) * 2**k)
    return out


@dataclass(frozen=True)
class ChunkPlan:
    n_rows: int
    n_angles: int
    n_cols: int
    n_levels: int
    slab_rows: int  # level-0 rows per slab (the last slab may be shorter)
    shard_rows: int  # level-0 planes per shard
    align: int  # slab heights are multiples of this
    levels: tuple[LevelLayout, ...]
    n_slabs: int
    est_bytes_per_slab: int
    bytes_per_row: int
    memory_budget: int
    n_workers: int

    def slabs(self) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` of the slabs, relative to the volume's first row."""
        return [(r, min(r + self.slab_rows, self.n_rows))
                for r in range(0, self.n_rows, self.slab_rows)]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "levels"}
        d["levels"] = [lev.to_dict() for lev in self.levels]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ChunkPlan:
        d = dict(d)
        d["levels"] = tuple(LevelLayout.from_dict(lev) for lev in d["levels"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def slab_memory(rows: int, n_angles: int, n_cols: int, *, raw_itemsize: int, bytes_per_row: int,
                n_flats_darks: int = 0, overhead: int = DEFAULT_OVERHEAD) -> dict[str, int]:
    """Peak bytes a worker needs for a slab of ``rows``, by part."""
    frame = rows * n_cols
    out = rows * n_cols * n_cols * FLOAT32
    return {
        "raw frames": (n_angles + n_flats_darks) * frame * raw_itemsize,
        # two alive at once: normalised (then -log in place) and transposed sinograms, or a
        # filter's input and output (zingers, stripes)
        "float32 copies": 2 * n_angles * frame * FLOAT32,
        "backend": rows * bytes_per_row,
        # the levels add 1/7; the encoded shards about one copy more
        "output + pyramid": int(out * 8 / 7) + out,
        "worker overhead": overhead,
    }


def plan(n_rows: int, n_angles: int, n_cols: int, *, raw_itemsize: int, bytes_per_row: int,
         memory_budget: int, n_workers: int, levels: int | None = None, n_flats_darks: int = 0,
         gpu_memory: int | None = None, shard_z: int = 16, overhead: int = DEFAULT_OVERHEAD,
         chunk_yx: int = 256, max_slab_rows: int | None = None) -> ChunkPlan:
    """Choose the slab height for ``n_workers`` workers of ``memory_budget`` bytes each.

    ``max_slab_rows`` caps the slab height (more, smaller tasks); shards shrink to fit it.

    Raises PlanError when even the smallest shard-aligned slab does not fit.
    """
    if min(n_rows, n_angles, n_cols) < 1:
        raise PlanError(f"nothing to reconstruct: {n_rows} rows, {n_angles} angles, "
                        f"{n_cols} columns")
    n_workers = max(1, int(n_workers))
    n_levels = levels if levels is not None else default_levels(n_rows, n_cols)

    def need(rows: int) -> int:
        return sum(slab_memory(rows, n_angles, n_cols, raw_itemsize=raw_itemsize,
                               bytes_per_row=bytes_per_row, n_flats_darks=n_flats_darks,
                               overhead=overhead).values())

    def gpu_need(rows: int) -> int:
        return rows * (bytes_per_row + n_angles * n_cols * FLOAT32 + n_cols * n_cols * FLOAT32)

    def fits(rows: int) -> bool:
        if need(rows) > memory_budget:
            return False
        return gpu_memory is None or gpu_need(rows) <= gpu_memory * GPU_FRACTION

    # Shards as tall as 16 planes, but low enough that every worker can get a slab.
    shard_z = _pow2_floor(min(shard_z, max(1, n_rows // n_workers), max_slab_rows or shard_z))
    align = align_rows(shard_z, n_levels)
    while not fits(align) and shard_z > 1:
        shard_z //= 2
        align = align_rows(shard_z, n_levels)
    if not fits(align):
        parts = slab_memory(align, n_angles, n_cols, raw_itemsize=raw_itemsize,
                            bytes_per_row=bytes_per_row, n_flats_darks=n_flats_darks,
                            overhead=overhead)
        detail = ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items())
        if need(align) > memory_budget:
            raise PlanError(
                f"the smallest slab ({align} rows of {n_angles} x {n_cols}, aligned to the "
                f"{n_levels}-level pyramid) needs {_fmt(need(align))} per worker ({detail}) but "
                f"each worker has {_fmt(memory_budget)}; raise --memory-limit, use fewer "
                f"--workers (each gets more memory), or reconstruct fewer columns"
            )
        raise PlanError(
            f"the smallest slab ({align} rows) needs {_fmt(gpu_need(align))} of GPU memory but "
            f"{_fmt(gpu_memory * GPU_FRACTION)} is usable per GPU; use a CPU backend "
            f"(--backend fourier) or fewer angles/columns"
        )

    # Balanced slabs: split into n_workers * m pieces for the smallest m whose slab fits.
    m = 1
    while True:
        pieces = n_workers * m
        rows = max(align, math.ceil(math.ceil(n_rows / pieces) / align) * align)
        capped = max_slab_rows is not None and rows > max(align, max_slab_rows)
        if (fits(rows) and not capped) or rows == align:
            break
        m += 1
    n_slabs = math.ceil(n_rows / rows)
    return ChunkPlan(
        n_rows=n_rows, n_angles=n_angles, n_cols=n_cols, n_levels=n_levels,
        slab_rows=rows, shard_rows=shard_z, align=align,
        levels=level_layouts(n_rows, n_cols, n_levels, shard_z, chunk_yx=chunk_yx),
        n_slabs=n_slabs, est_bytes_per_slab=need(rows), bytes_per_row=bytes_per_row,
        memory_budget=memory_budget, n_workers=n_workers,
    )
