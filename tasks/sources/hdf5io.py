"""Open scan files, check their datasets, and read sinogram slabs from them.

Nothing here reads a whole file. ``build_spec`` reads metadata and one row per frame set (to
catch files cut short); ``read_frames`` reads a row range of chosen frames, one hyperslab per
contiguous run of frame indices. Files still being written by a detector are opened in SWMR
mode so that frames appended since the writer started are seen.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from collections.abc import Iterator, Sequence

import h5py
import numpy as np
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

from tomopipe.errors import InputError

# Length units to micrometres, for pixel sizes.
_LENGTH_TO_UM = {
    "um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micrometers": 1.0, "micrometres": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
}
_DEGREES = {"deg", "degree", "degrees", "°"}
_RADIANS = {"rad", "radian", "radians"}


def _text(value) -> str:
    """An HDF5 string attribute or scalar as str (h5py gives bytes, str or 0-d arrays)."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def attr_text(obj, name: str) -> str | None:
    value = obj.attrs.get(name)
    return None if value is None else _text(value).strip()


def _open_error(path: str, err: OSError) -> InputError:
    msg = str(err)
    if isinstance(err, FileNotFoundError) or "No such file" in msg:
        return InputError(path, "no such file")
    if "truncated file" in msg:
        sizes = re.search(r"eof = (\d+).*stored_eof = (\d+)", msg)
        detail = f": {sizes[1]} bytes on disk, HDF5 expects {sizes[2]}" if sizes else ""
        return InputError(path, f"file is truncated (cut short){detail}")
    if "file signature not found" in msg:
        return InputError(path, "not an HDF5 file (no HDF5 signature)")
    if "ermission denied" in msg:
        return InputError(path, "permission denied")
    return InputError(path, f"cannot open as HDF5: {msg}")


@contextlib.contextmanager
def open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only, in SWMR mode when the file allows it.

    A file still being written by a detector is read with ``swmr=True`` (frames appended by
    the writer become visible after a dataset ``refresh``); a file that is not SWMR-capable is
    opened plainly, and one locked by a non-SWMR writer is opened without file locking.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, not an HDF5 file")
    attempts = ({"swmr": True}, {}, {"locking": False})
    f = None
    last: OSError | None = None
    for kwargs in attempts:
        try:
            f = h5py.File(path, "r", **kwargs)
            break
        except OSError as err:
            last = err
            msg = str(err)
            # Faults of the file itself: no other way of opening will help.
            if ("truncated file" in msg or "signature not found" in msg
                    or isinstance(err, FileNotFoundError) or "ermission denied" in msg):
                break
    if f is None:
        raise _open_error(path, last) from None
    try:
        yield f
    finally:
        _REFRESHED.pop(f.id.id, None)
        f.close()


# Datasets already refreshed, per open file. HDF5 breaks (bad reference counts, then a crash)
# when a dataset is refreshed while another handle to it is open, so each is refreshed once,
# when first opened, keyed by (file number, object address) so links to it count as the same.
_REFRESHED: dict[int, set[tuple[int, int]]] = {}


def _refresh_once(f: h5py.File, ds: h5py.Dataset) -> None:
    info = h5py.h5o.get_info(ds.id)
    seen = _REFRESHED.setdefault(f.id.id, set())
    if (info.fileno, info.addr) not in seen:
        seen.add((info.fileno, info.addr))
        ds.refresh()


def get_dataset(f: h5py.File, name: str, *, source: str, what: str = "dataset") -> h5py.Dataset:
    """The dataset at ``name``, refreshed when the file is being written (SWMR)."""
    try:
        obj = f[name]
    except KeyError as err:
        link = None
        with contextlib.suppress(Exception):
            link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise InputError(source, f"external link to {link.path!r} in {link.filename!r} "
                             f"cannot be followed ({err})", where=name) from None
        raise InputError(source, f"missing {what}", where=name) from None
    except OSError as err:
        raise InputError(source, f"cannot open {what}: {err}", where=name) from None
    if not isinstance(obj, h5py.Dataset):
        raise InputError(source, f"is a group, not a {what}", where=name)
    if f.swmr_mode:
        _refresh_once(f, obj)
    return obj


def has(f: h5py.File | h5py.Group, name: str) -> bool:
    """Whether ``name`` exists and can be opened (broken links count as absent)."""
    try:
        return name in f
    except (OSError, KeyError):
        return False


def resolve_location(f: h5py.File, name: str) -> tuple[str, str]:
    """The file and the dataset path that actually hold ``name``, following soft and external links.

    h5py follows links for us but reports the dataset under the name it was reached by, so
    the links are walked here. A Dask worker then opens the file holding the frames directly.
    """
    path = os.path.abspath(f.filename)
    group: h5py.Group = f["/"]
    current = "/"
    parts = [p for p in name.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        link = group.get(part, getlink=True)
        if isinstance(link, h5py.SoftLink):
            hops += 1
            if hops > 32:
                raise InputError(path, "too many links", where=name)
            target = link.path if link.path.startswith("/") else posixpath.join(current, link.path)
            parts = [p for p in target.split("/") if p] + parts
            group, current = group.file["/"], "/"
            continue
        obj = group[part]
        if isinstance(link, h5py.ExternalLink):
            path = os.path.abspath(obj.file.filename)
            current = "/" + link.path.strip("/")
        else:
            current = posixpath.join(current, part)
        group = obj
    return path, current


def index_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Increasing frame indices as (start, stop) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        i = int(i)
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def read_angles_deg(f: h5py.File, name: str, *, source: str,
                    default_units: str = "degree") -> tuple[np.ndarray, str]:
    """A 1-D angle dataset in degrees, converted by its ``units`` attribute; also the units used."""
    ds = get_dataset(f, name, source=source, what="angle dataset")
    if ds.ndim != 1:
        raise InputError(source, f"angles must be 1-D, found rank {ds.ndim} {ds.shape}", where=name)
    if ds.dtype.kind not in "fiu":
        raise InputError(source, f"angles must be numbers, found {ds.dtype}", where=name)
    try:
        values = np.asarray(ds[()], dtype=np.float64)
    except OSError as err:
        raise InputError(source, f"cannot read angles: {err}", where=name) from None
    units = (attr_text(ds, "units") or attr_text(ds, "unit") or default_units).lower()
    if units in _RADIANS:
        values = np.degrees(values)
    elif units not in _DEGREES:
        raise InputError(source, f"angle units {units!r} not understood (use degree or rad)",
                         where=name)
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InputError(source, f"non-finite angle at index {bad}", where=name)
    return values, units


def length_um(ds: h5py.Dataset, default_units: str = "um") -> float | None:
    """A scalar length dataset in micrometres, or None when it cannot be understood."""
    try:
        value = float(np.asarray(ds[()]).reshape(-1)[0])
    except (OSError, TypeError, ValueError, IndexError):
        return None
    units = (attr_text(ds, "units") or default_units).lower()
    factor = _LENGTH_TO_UM.get(units)
    if factor is None or not np.isfinite(value) or value <= 0:
        return None
    return value * factor


def frames_dataset(f: h5py.File, name: str, *, source: str, what: str) -> h5py.Dataset:
    """A frame stack: a 3-D numeric dataset (frames, rows, columns)."""
    ds = get_dataset(f, name, source=source, what=what)
    if ds.ndim != 3:
        raise InputError(source, f"{what} must be 3-D (frames, rows, columns), "
                         f"found rank {ds.ndim} {ds.shape}", where=name)
    if ds.dtype.kind not in "fiu":
        raise InputError(source, f"{what} must be numbers, found {ds.dtype}", where=name)
    return ds


def check_last_row(ds: h5py.Dataset, indices: Sequence[int] | None, *, source: str,
                   name: str, what: str) -> None:
    """Read the last frame's last row: a file cut short fails here, at open, not mid-run."""
    last = (ds.shape[0] - 1) if indices is None else int(indices[-1])
    if last < 0:
        return
    try:
        ds[last, ds.shape[1] - 1 :, :]
    except OSError as err:
        raise InputError(source, f"{what} truncated or unreadable: cannot read frame {last} "
                         f"({err})", where=name) from None


def frame_set(f: h5py.File, name: str, indices: Sequence[int] | None, *, source: str) -> FrameSet:
    """A FrameSet naming the file and dataset that hold the frames, after links."""
    path, dataset = os.path.abspath(f.filename), name
    try:
        path, dataset = resolve_location(f, name)
    except (KeyError, OSError, ValueError, InputError):
        pass  # keep the link path: h5py follows it from any process
    if indices is not None:
        indices = tuple(int(i) for i in indices)
    return FrameSet(path, dataset, indices)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def available_memory() -> int:
    """Bytes this process may still allocate (psutil's ``available``: free plus reclaimable)."""
    import psutil

    return int(psutil.virtual_memory().available)


def require_memory(source: str, dataset: str, declared: tuple, dtype, shape: tuple[int, ...], *,
                   what: str) -> None:
    """Refuse, before allocating, a read of ``shape`` that this machine has no memory for.

    A file's declared shape is not proof of its size (HDF5 allocates chunks lazily, and a
    corrupt or hostile header can declare anything): the bytes a read needs are compared with
    the memory available now, and the error names the dataset, its declared shape and both
    figures.
    """
    need = int(np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize)
    have = available_memory()
    if need > have:
        raise InputError(source, f"declared shape {tuple(int(s) for s in declared)} "
                         f"{np.dtype(dtype).name}: reading {what} needs {_fmt_bytes(need)} but "
                         f"only {_fmt_bytes(have)} of memory is available", where=dataset)


def _middle_row_mean(ds: h5py.Dataset, indices: Sequence[int] | None) -> np.ndarray:
    """The mean over (up to 4 of) the chosen frames of the middle detector row."""
    picks = list(range(ds.shape[0]) if indices is None else indices)[:4]
    row = ds.shape[1] // 2
    return np.mean([np.asarray(ds[i, row, :], dtype=np.float64) for i in picks], axis=0)


def check_beam(f: h5py.File, flats: list[tuple[str, Sequence[int] | None]],
               darks: list[tuple[str, Sequence[int] | None]], *, source: str) -> None:
    """Refuse flat fields that hold no beam: flats no brighter than the darks on average.

    Dead pixels (a flat equal to its dark) are normal and handled by normalisation; flats that
    equal the darks everywhere would make every value zero (or inf) and only mean that the
    shutter was closed, or the wrong dataset holds the flats. One row of each is read.
    """
    flat_name, flat_idx = flats[0]
    flat = _middle_row_mean(f[flat_name], flat_idx)
    if darks:
        dark_name, dark_idx = darks[0]
        dark = _middle_row_mean(f[dark_name], dark_idx)
    else:
        dark_name, dark = "no darks (zeros)", np.zeros_like(flat)
    signal = float(np.nanmean(flat - dark)) if np.isfinite(flat - dark).any() else np.nan
    if np.isnan(signal):
        return  # no finite values to judge by: the read reports the NaNs by frame and row
    if signal <= 0:
        raise InputError(source, f"flat fields hold no beam: their middle row averages "
                         f"{float(np.mean(flat)):.6g} counts against {float(np.mean(dark)):.6g} "
                         f"in the darks ({dark_name}); nothing to normalise by", where=flat_name)


def _n(f: h5py.File, name: str, indices: Sequence[int] | None) -> int:
    return f[name].shape[0] if indices is None else len(indices)


def check_angles(angles_deg: np.ndarray, *, source: str, where: str) -> None:
    """Refuse angles that cannot make a tomogram: one projection, or a rotation that never moved."""
    if len(angles_deg) < 2:
        raise InputError(source, f"{len(angles_deg)} projection angle(s): a reconstruction needs "
                         "projections at two angles at least", where=where)
    span = float(np.max(angles_deg) - np.min(angles_deg))
    if span == 0:
        raise InputError(source, f"all {len(angles_deg)} angles are {float(angles_deg[0]):g} "
                         "degrees: the sample never rotated", where=where)


def build_spec(f: h5py.File, *, label: str, projections: tuple[str, Sequence[int] | None],
               flats: list[tuple[str, Sequence[int] | None]],
               darks: list[tuple[str, Sequence[int] | None]], angles_deg: np.ndarray,
               angles_where: str, pixel_size_um: float | None = None,
               extra: dict | None = None, require_flats: bool = True) -> ScanSpec:
    """Check the datasets a format reader found and describe them as a ScanSpec.

    ``projections``, ``flats`` and ``darks`` are (dataset name, frame indices or None for all).
    Darks may be empty: they are then treated as zeros, and ``extra["darks"]`` says so. Flats
    may be empty only with ``require_flats=False`` (they come from other files).
    """
    source = label
    extra = dict(extra or {})
    proj_name, proj_idx = projections
    proj = frames_dataset(f, proj_name, source=source, what="projection data")
    n_proj = proj.shape[0] if proj_idx is None else len(proj_idx)
    if n_proj == 0:
        raise InputError(source, "no projections", where=proj_name)
    if len(angles_deg) != n_proj:
        raise InputError(source, f"{len(angles_deg)} angles for {n_proj} projections "
                         f"(in {proj_name})", where=angles_where)
    check_angles(np.asarray(angles_deg, dtype=np.float64), source=source, where=angles_where)
    check_last_row(proj, proj_idx, source=source, name=proj_name, what="projection data")
    frame_shape = proj.shape[1:]

    def sets(items, what):
        out = []
        for name, idx in items:
            ds = frames_dataset(f, name, source=source, what=what)
            if ds.shape[1:] != frame_shape:
                raise InputError(source, f"{what} frames are {ds.shape[1]}x{ds.shape[2]} but "
                                 f"projections are {frame_shape[0]}x{frame_shape[1]}", where=name)
            if (ds.shape[0] if idx is None else len(idx)) == 0:
                continue
            check_last_row(ds, idx, source=source, name=name, what=what)
            out.append(frame_set(f, name, idx, source=source))
        return tuple(out)

    flat_sets = sets(flats, "flat field")
    if not flat_sets and require_flats:
        where = ", ".join(name for name, _ in flats) or proj_name
        raise InputError(source, "no flat-field frames (cannot normalise)", where=where)
    dark_sets = sets(darks, "dark field")
    if not dark_sets:
        extra["darks"] = "missing: treated as zeros"
    if flat_sets:  # (without flats here, they come from other files: flatfield_files)
        check_beam(f, [(fs_name, idx) for fs_name, idx in flats if _n(f, fs_name, idx)],
                   [(d_name, idx) for d_name, idx in darks if _n(f, d_name, idx)],
                   source=source)
    return ScanSpec(
        label=label,
        projections=(frame_set(f, proj_name, proj_idx, source=source),),
        flats=flat_sets,
        darks=dark_sets,
        angles_deg=tuple(float(a) for a in angles_deg),
        n_rows=int(frame_shape[0]),
        n_cols=int(frame_shape[1]),
        dtype=np.dtype(proj.dtype).name,
        pixel_size_um=pixel_size_um,
        extra=extra,
    )


def _check_finite(block: np.ndarray, frames: Sequence[int], r0: int, *, source: str,
                  where: str) -> None:
    bad = ~np.isfinite(block)
    if bad.any():
        k, r, c = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(source, f"non-finite value ({block[k, r, c]}) in frame {frames[k]}, "
                         f"row {r0 + r}", where=where)


def read_frames(frames: FrameSet | Sequence[FrameSet], rows: tuple[int, int] | None = None, *,
                label: str | None = None, _files: dict | None = None) -> np.ndarray:
    """Rows ``r0:r1`` of the chosen frames, as (n_frames, r1 - r0, columns).

    Consecutive frame indices are read as one hyperslab each, and each file is opened once.
    Float data are checked for NaN and infinity; a bad value is reported with its file,
    dataset, frame and row. ``label`` (the scan's name) is added to messages when it differs
    from the file.
    """
    sets = (frames,) if isinstance(frames, FrameSet) else tuple(frames)
    if not sets:
        raise ValueError("read_frames needs at least one FrameSet")
    if _files is None:
        with contextlib.ExitStack() as stack:
            return read_frames(sets, rows, label=label, _files=_OpenFiles(stack))
    parts = [_read_one(_files.get(fs.path), fs, rows, label) for fs in sets]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class _OpenFiles(dict):
    """Files opened on first use, closed when the enclosing ExitStack closes."""

    def __init__(self, stack: contextlib.ExitStack):
        super().__init__()
        self._stack = stack

    def get(self, path: str) -> h5py.File:  # type: ignore[override]
        if path not in self:
            self[path] = self._stack.enter_context(open_h5(path))
        return self[path]


def _read_one(f: h5py.File, fs: FrameSet, rows: tuple[int, int] | None,
              label: str | None) -> np.ndarray:
    def fault(text: str) -> str:
        return text if not label or label == fs.path else f"{text} (scan {label})"

    ds = frames_dataset(f, fs.dataset, source=fs.path, what="frame data")
    n_frames, n_rows, n_cols = ds.shape
    r0, r1 = (0, n_rows) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= r0 < r1 <= n_rows:
        raise InputError(fs.path, fault(f"row range {r0}:{r1} outside 0:{n_rows}"),
                         where=fs.dataset)
    indices = range(n_frames) if fs.indices is None else fs.indices
    if len(indices) and (min(indices) < 0 or max(indices) >= n_frames):
        raise InputError(fs.path, fault(f"frame {max(indices)} requested but the dataset has "
                                        f"{n_frames} frames"), where=fs.dataset)
    require_memory(fs.path, fs.dataset, ds.shape, ds.dtype, (len(indices), r1 - r0, n_cols),
                   what=f"rows {r0}:{r1} of {len(indices)} frames")
    out = np.empty((len(indices), r1 - r0, n_cols), dtype=ds.dtype)
    k = 0
    for start, stop in index_runs(indices):
        try:
            ds.read_direct(out, np.s_[start:stop, r0:r1, :], np.s_[k : k + stop - start])
        except OSError as err:
            raise InputError(fs.path, fault(f"cannot read frames {start}:{stop}, rows "
                                            f"{r0}:{r1} (truncated or corrupt: {err})"),
                             where=fs.dataset) from None
        k += stop - start
    if out.dtype.kind == "f":
        _check_finite(out, list(indices), r0, source=fs.path, where=fs.dataset)
    return out


def read_slab(spec: ScanSpec, rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projections, flats and darks for rows ``r0:r1``: each (frames, r1 - r0, columns).

    A scan without darks gets one frame of zeros, so normalisation needs no special case.
    """
    r0, r1 = int(rows[0]), int(rows[1])
    if not 0 <= r0 < r1 <= spec.n_rows:
        raise InputError(spec.label, f"row range {r0}:{r1} outside 0:{spec.n_rows}")
    with contextlib.ExitStack() as stack:
        files = _OpenFiles(stack)
        projections = read_frames(spec.projections, (r0, r1), label=spec.label, _files=files)
        if projections.shape[0] != spec.n_angles:
            raise InputError(spec.label, f"read {projections.shape[0]} projections but the scan "
                             f"has {spec.n_angles} angles", where=spec.projections[0].dataset)
        flats = read_frames(spec.flats, (r0, r1), label=spec.label, _files=files)
        if spec.darks:
            darks = read_frames(spec.darks, (r0, r1), label=spec.label, _files=files)
        else:
            darks = np.zeros((1, r1 - r0, spec.n_cols), dtype=projections.dtype)
    return projections, flats, darks
