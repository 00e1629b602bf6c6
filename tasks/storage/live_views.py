"""The live views of a streaming run: three orthogonal slices in an OME-Zarr group that grows.

Layout of ``<volume>.live.zarr`` (Zarr v3, uncompressed, readable while it is written):

- ``xy/0``: the plane at height ``z`` (n x n), written by the worker that owns that row;
- ``xz/0``: the plane at image row ``y``, (rows x n); ``yz/0``: the plane at column ``x``,
  (rows x n). One chunk per worker's block of rows (``block_rows``; one per row when not
  given), so every worker writes only its own chunk: one write a view (a chunk costs zarr a
  few ms to write, and a block of 32 one-row chunks took 70 ms idle, 230 ms on a busy machine).
- each of ``xy``, ``xz``, ``yz`` is an OME-Zarr 0.5 image (2-D multiscales, one level);
- the group attribute ``tomopipe_live`` says what the views hold: ``fraction`` (the share of the
  final angular weight in the views, the least of the workers'), ``frames_in``,
  ``frames_landed``, ``lag`` (frames landed minus frames in), ``updated`` (Unix time),
  ``positions`` ``{z, y, x}`` and ``correlation`` (of the xy view with its previous update);
  each view's group has its own ``fraction``.

Worker progress files (``.blocks/rows-<r0>-<r1>.json``) and the stop request (``.control.json``)
sit beside the arrays, outside the Zarr hierarchy. Plain functions, no Prefect, no Dask.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from tomopipe.errors import InputError

VIEWS = ("xy", "xz", "yz")
LIVE_ATTR = "tomopipe_live"
BLOCKS_DIR = ".blocks"
CONTROL_FILE = ".control.json"


def live_path(volume: str | Path) -> Path:
    """``<volume>.live.zarr`` beside the volume (``vol.zarr`` -> ``vol.live.zarr``)."""
    volume = Path(volume)
    stem = volume.name[:-5] if volume.name.endswith(".zarr") else volume.name
    return volume.with_name(f"{stem}.live.zarr")


def view_positions(shape: tuple[int, int, int], positions: dict | None = None) -> dict:
    """``{z, y, x}`` plane indices: the middle unless given; each checked against ``shape``."""
    out = {}
    for axis, extent in zip("zyx", shape, strict=True):
        value = (positions or {}).get(axis)
        value = extent // 2 if value is None else value
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise InputError("live positions", f"{axis} must be a plane index, got "
                             f"{value!r}") from None
        if not 0 <= value < extent:
            raise InputError("live positions", f"{axis}={value} lies outside 0:{extent}")
        out[axis] = value
    return out


def _ome_2d(axes: tuple[str, str], pixel_size_um: float | None, name: str) -> dict:
    step = float(pixel_size_um) if pixel_size_um else 1.0
    return {"version": "0.5", "multiscales": [{
        "name": name,
        "axes": [{"name": a, "type": "space", **({"unit": "micrometer"} if pixel_size_um
                                                  else {})} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [step, step]}]}],
    }]}


def create_live_group(path: str | Path, shape: tuple[int, int, int], positions: dict, *,
                      pixel_size_um: float | None = None, run: str | None = None,
                      block_rows: int = 1) -> Path:
    """Create (or start over) the live group for a volume of ``shape`` (z, y, x), whose
    workers write blocks of ``block_rows`` volume rows starting at 0."""
    import shutil

    import zarr

    path = Path(path)
    if path.exists():
        if not (path / "zarr.json").exists():
            raise InputError(str(path), "exists and is not a live OME-Zarr group; move it away")
        shutil.rmtree(path)
    nz, ny, nx = shape
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    planes = {"xy": ((ny, nx), (ny, nx), ("y", "x")),
              "xz": ((nz, nx), (block_rows, nx), ("z", "x")),
              "yz": ((nz, ny), (block_rows, ny), ("z", "y"))}
    for view, (vshape, chunks, axes) in planes.items():
        sub = group.create_group(view)
        sub.create_array("0", shape=vshape, chunks=chunks, dtype="float32", fill_value=0.0,
                         compressors=(), dimension_names=axes)
        sub.attrs.update({"ome": _ome_2d(axes, pixel_size_um, view), "fraction": 0.0})
    group.attrs[LIVE_ATTR] = {"run": run, "positions": positions, "shape": list(shape),
                              "fraction": 0.0, "frames_in": 0, "frames_landed": 0, "lag": 0,
                              "updated": time.time(), "state": "waiting"}
    (path / BLOCKS_DIR).mkdir(exist_ok=True)
    return path


def write_block_views(path: str | Path, rows: tuple[int, int], positions: dict,
                      block: np.ndarray) -> None:
    """Write the views of volume rows ``rows`` from ``block`` (rows, n, n): their rows of the
    xz and yz planes, and the xy plane when it lies in them."""
    import zarr

    path = Path(path)
    z0, z1 = rows
    zarr.open_array(str(path / "xz" / "0"), mode="r+")[z0:z1] = block[:, positions["y"], :]
    zarr.open_array(str(path / "yz" / "0"), mode="r+")[z0:z1] = block[:, :, positions["x"]]
    if z0 <= positions["z"] < z1:
        zarr.open_array(str(path / "xy" / "0"), mode="r+")[:] = block[positions["z"] - z0]


def read_views(path: str | Path) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {v: np.asarray(group[v]["0"][:]) for v in VIEWS}


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_block_status(path: str | Path, rows: tuple[int, int], status: dict) -> None:
    """A worker's progress for its rows (atomic replace)."""
    _write_json(Path(path) / BLOCKS_DIR / f"rows-{rows[0]:07d}-{rows[1]:07d}.json",
                {"rows": list(rows), **status})


def read_block_status(path: str | Path) -> list[dict]:
    folder = Path(path) / BLOCKS_DIR
    found = [_read_json(p) for p in sorted(folder.glob("rows-*.json"))]
    return [d for d in found if d is not None]


def _update_control(path: str | Path, **fields) -> None:
    """Merge ``fields`` into the workers' control file (the flow is its only writer)."""
    _write_json(Path(path) / CONTROL_FILE, {**read_control(path), **fields})


def request_stop(path: str | Path, n_frames: int | None = None, *,
                 abort: str | None = None) -> None:
    """Tell the workers the scan has ended with ``n_frames`` projections (or is abandoned)."""
    _update_control(path, stop_frames=n_frames, abort=abort)


def request_center(path: str | Path, center: float) -> None:
    """Tell the workers to reconstruct with this centre from now on: a worker whose
    accumulator holds another starts it again from the first frame."""
    _update_control(path, center=float(center))


def read_control(path: str | Path) -> dict:
    return _read_json(Path(path) / CONTROL_FILE) or {}


def update_live_attrs(path: str | Path, summary: dict, view_fractions: dict | None = None) -> dict:
    """Merge ``summary`` into the group's ``tomopipe_live`` attribute (and each view's
    ``fraction``); returns the attribute."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    live = {**dict(group.attrs.get(LIVE_ATTR, {})), **summary}
    group.attrs[LIVE_ATTR] = live
    for view, fraction in (view_fractions or {}).items():
        group[view].attrs["fraction"] = float(fraction)
    return live


def read_live_attrs(path: str | Path) -> dict:
    doc = _read_json(Path(path) / "zarr.json") or {}
    return dict((doc.get("attributes") or {}).get(LIVE_ATTR, {}))
