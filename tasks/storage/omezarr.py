"""OME-Zarr 0.5 volumes: a Zarr v3 group with the ``ome`` attribute and one sharded array per level.

Arrays ``"0"``, ``"1"``, ... hold the levels of a 2 x 2 x 2 mean pyramid, axes ``z, y, x``.
Writers own whole shards (see ``tasks.recon.planning``); this module only lays the volume out,
writes a slab's levels into it and reads back what a volume says about itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tomopipe.errors import InputError

OME_VERSION = "0.5"
# The one place the volume codec is chosen (Blosc with byte shuffle; None: uncompressed).
# benchmarks/bench_write.py, one 32-row 512-wide slab with 4 levels on one thread: lz4 writes in
# 0.57x the time of zstd level 3 (0.131 against 0.229 s) for 4 % more bytes (ratio 1.16 against
# 1.20); zstd 1 is slower than lz4 and no smaller, zstd 5 takes 1.9x for 2 % fewer bytes, and no
# compression 1.2x the bytes. Noisy float32 slices compress little whatever the codec, so the
# write time decides.
DEFAULT_CODEC: dict | None = {"cname": "lz4", "clevel": 5}
# Typical compression ratio (raw / stored) of reconstructed float32 slices per Blosc codec, from
# bench_write.py on a noisy phantom (zstd 1.17-1.23, lz4 1.16), rounded down: the disk-space
# pre-flight (tasks/storage/space.py) divides by it.
CODEC_RATIO = {"zstd": 1.15, "lz4": 1.1}


def codec_ratio(codec: dict | None) -> float:
    return 1.0 if codec is None else CODEC_RATIO.get(codec["cname"], 1.0)
AXES = ("z", "y", "x")
PROVENANCE_ATTR = "tomopipe"


@dataclass(frozen=True)
class LevelLayout:
    """Shape, inner chunk and shard of one pyramid level, all (z, y, x)."""

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "chunks": list(self.chunks), "shards": list(self.shards)}

    @classmethod
    def from_dict(cls, d: dict) -> LevelLayout:
        return cls(tuple(d["shape"]), tuple(d["chunks"]), tuple(d["shards"]))


def ome_metadata(n_levels: int, pixel_size_um: float | None, name: str = "volume") -> dict:
    """The ``ome`` group attribute: one multiscale, axes z/y/x in micrometres when known.

    Level ``k`` voxels are ``2**k`` level-0 voxels wide; their centres sit ``(2**k - 1) / 2``
    level-0 voxels in from the corner, hence the translation.
    """
    step = float(pixel_size_um) if pixel_size_um else 1.0
    axes = []
    for ax in AXES:
        entry = {"name": ax, "type": "space"}
        if pixel_size_um:
            entry["unit"] = "micrometer"
        axes.append(entry)
    datasets = []
    for k in range(n_levels):
        f = 2**k
        datasets.append({
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [step * f] * 3},
                {"type": "translation", "translation": [step * (f - 1) / 2] * 3},
            ],
        })
    return {
        "version": OME_VERSION,
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": datasets,
            "type": "mean",
            "metadata": {"method": "tomopipe.tasks.storage.pyramid.downsample_mean", "factor": 2},
        }],
    }


def _compressors(codec: dict | None) -> tuple:
    from zarr.codecs import BloscCodec

    if codec is None:
        return ()
    return (BloscCodec(cname=codec["cname"], clevel=int(codec["clevel"]), shuffle="shuffle"),)


def create_volume(path: Path, levels: Sequence[LevelLayout], *, pixel_size_um: float | None,
                  provenance: dict, name: str = "volume",
                  codec: dict | None | str = "default") -> None:
    """Create the group, its metadata and one empty sharded float32 array per level.

    ``codec``: Blosc ``{"cname", "clevel"}``, None for none, or "default" (DEFAULT_CODEC).
    """
    import zarr

    codec = DEFAULT_CODEC if codec == "default" else codec
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for k, lev in enumerate(levels):
        group.create_array(
            str(k),
            shape=lev.shape,
            chunks=lev.chunks,
            shards=lev.shards,
            dtype="float32",
            fill_value=0.0,
            compressors=_compressors(codec),
            dimension_names=AXES,
        )
    group.attrs.update({
        "ome": ome_metadata(len(levels), pixel_size_um, name=name),
        PROVENANCE_ATTR: {**provenance, "complete": False},
    })


def write_levels(path: Path, z0: int, levels: Sequence[np.ndarray]) -> None:
    """Write a slab's levels, level 0 starting at plane ``z0`` (a multiple of ``2**k``)."""
    import zarr

    for k, data in enumerate(levels):
        f = 2**k
        if z0 % f:
            raise ValueError(f"slab start {z0} is not aligned to level {k} (multiple of {f})")
        arr = zarr.open_array(str(Path(path) / str(k)), mode="r+")
        zk = z0 // f
        arr[zk:zk + data.shape[0]] = data


def update_provenance(path: Path, **fields) -> dict:
    """Merge ``fields`` into the group's ``tomopipe`` attribute and return the result."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    prov = dict(group.attrs.get(PROVENANCE_ATTR, {}))
    prov.update(fields)
    group.attrs[PROVENANCE_ATTR] = prov
    return prov


def _group_attributes(path: Path) -> dict | None:
    meta = Path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes")
    return attrs if isinstance(attrs, dict) else None


def is_complete(path: str | Path) -> bool:
    """True only for a published volume: marked complete and not a ``.partial`` directory."""
    path = Path(path)
    if path.name.endswith(".partial"):
        return False
    attrs = _group_attributes(path)
    prov = (attrs or {}).get(PROVENANCE_ATTR)
    return isinstance(prov, dict) and prov.get("complete") is True


def read_provenance(path: str | Path) -> dict:
    """The ``tomopipe`` group attribute of a volume (complete or not)."""
    attrs = _group_attributes(Path(path))
    if attrs is None:
        raise InputError(str(path), "not a Zarr v3 group (no readable zarr.json)")
    prov = attrs.get(PROVENANCE_ATTR)
    if not isinstance(prov, dict):
        raise InputError(str(path), "not a tomopipe volume (no 'tomopipe' group attribute)")
    return prov
