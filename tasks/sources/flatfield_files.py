"""Flat and dark fields kept apart from the projections (another file or another entry).

``--flats FILE[:DATASET]`` and ``--darks FILE[:DATASET]`` (and ``flats``/``darks`` in a flow's
parameters) name frame stacks (frames, rows, columns) in other HDF5 files. DATASET defaults to
Data Exchange's place (/exchange/data_white, /exchange/data_dark), else the file's only 3-D
dataset. Given twice, flats are taken as one set before the projections and one after: the
flat-field drift between them is then interpolated (``flat_schedule``).

Only descriptors are built here (shapes checked, one row read to catch a file cut short); the
workers read the frames with the projections' rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import h5py
from tomopipe.tasks.preprocess.drift import FlatSchedule, schedule_from_positions
from tomopipe.tasks.sources.hdf5io import check_last_row, frame_set, frames_dataset, has, open_h5
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

from tomopipe.errors import InputError

DEFAULT_DATASETS = {"flats": "/exchange/data_white", "darks": "/exchange/data_dark"}


def split_location(text: str) -> tuple[str, str | None]:
    """``FILE[:DATASET]`` -> (file, dataset or None)."""
    path, sep, dataset = str(text).partition(":")
    return path.strip(), (dataset.strip() or None) if sep else None


def _only_stack(f: h5py.File) -> str | None:
    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
            found.append("/" + name)

    f.visititems(visit)
    return found[0] if len(found) == 1 else None


def field_frames(text: str, role: str, frame_shape: tuple[int, int], *,
                 option: str | None = None) -> FrameSet:
    """The FrameSet of flat or dark frames (``role``: "flats" or "darks") at ``FILE[:DATASET]``,
    checked: a 3-D numeric stack of frames ``frame_shape`` (rows, columns), not empty."""
    option = option or f"--{role}"
    path, dataset = split_location(text)
    if not path:
        raise InputError(option, f"no file in {text!r}: expected FILE[:DATASET]")
    with open_h5(path) as f:
        if dataset is None:
            dataset = DEFAULT_DATASETS[role] if has(f, DEFAULT_DATASETS[role]) else _only_stack(f)
            if dataset is None:
                raise InputError(path, f"which dataset holds the {role}? No "
                                 f"{DEFAULT_DATASETS[role]} and not exactly one 3-D dataset; "
                                 f"give {option} {path}:DATASET")
        ds = frames_dataset(f, dataset, source=path, what=f"{role[:-1]} field")
        if tuple(ds.shape[1:]) != tuple(frame_shape):
            raise InputError(path, f"{role[:-1]} frames are {ds.shape[1]}x{ds.shape[2]} but the "
                             f"projections are {frame_shape[0]}x{frame_shape[1]} ({option})",
                             where=dataset)
        if ds.shape[0] == 0:
            raise InputError(path, f"holds no {role[:-1]} frames ({option})", where=dataset)
        check_last_row(ds, None, source=path, name=dataset, what=f"{role[:-1]} field")
        fs = frame_set(f, dataset, None, source=path)
        # Explicit indices: the frame count travels with the descriptor (no file to open later).
        return dataclasses.replace(fs, indices=tuple(range(ds.shape[0])))


def with_field_files(spec: ScanSpec, flats: Sequence[str] | None = None,
                     darks: Sequence[str] | None = None) -> ScanSpec:
    """``spec`` with its flats and/or darks replaced by those in other files.

    The identity is left as it is: the volume's key covers the field files through the
    parameters that name them (``flats``, ``darks``), and the flows find a volume by the same
    key without opening those files. ``extra["field_files"]`` records where the fields came
    from.
    """
    if not flats and not darks:
        if not spec.flats:
            raise InputError(spec.label, "no flat-field frames in the scan and none named: give "
                             "--flats FILE[:DATASET] (the flats parameter)")
        return spec
    shape = (spec.n_rows, spec.n_cols)
    changes: dict = {}
    files: dict[str, list[str]] = {}
    for role, given in (("flats", flats), ("darks", darks)):
        if given:
            sets = tuple(field_frames(text, role, shape) for text in given)
            changes[role] = sets
            files[role] = [f"{fs.path}:{fs.dataset}" for fs in sets]
    extra = {**spec.extra, "field_files": files}
    if "flats" in changes:  # the run's flat times (if any) are not those of the files
        changes["flat_positions"] = _file_flat_positions(changes["flats"], spec.n_angles)
    if spec.extra.get("darks") and "darks" in changes:
        extra.pop("darks")  # no longer missing
    return dataclasses.replace(spec, extra=extra, **changes)


def _file_flat_positions(sets: Sequence[FrameSet], n_angles: int) -> tuple[float, ...] | None:
    """Two flat files: the first taken before the projections, the second after."""
    if len(sets) != 2:
        return None
    first, second = (len(fs.indices) for fs in sets)
    return (-0.5,) * first + (n_angles - 0.5,) * second


def check_field_shapes(spec: ScanSpec) -> None:
    """Every flat and dark frame set has the projections' frame shape and the frames it names
    (any source: a file's own fields, a run's flat and dark streams, other files)."""
    shape = (spec.n_rows, spec.n_cols)
    for role, sets in (("flat", spec.flats), ("dark", spec.darks)):
        for fs in sets:
            with open_h5(fs.path) as f:
                ds = frames_dataset(f, fs.dataset, source=fs.path, what=f"{role} field")
                if tuple(ds.shape[1:]) != shape:
                    raise InputError(fs.path, f"{role} frames are {ds.shape[1]}x{ds.shape[2]} "
                                     f"but the projections are {shape[0]}x{shape[1]} (scan "
                                     f"{spec.label})", where=fs.dataset)
                if fs.indices and max(fs.indices) >= ds.shape[0]:
                    raise InputError(fs.path, f"{role} frame {max(fs.indices)} is named but the "
                                     f"dataset has {ds.shape[0]} frames (scan {spec.label})",
                                     where=fs.dataset)


def flat_schedule(spec: ScanSpec) -> FlatSchedule | None:
    """When the flats were taken before and after the projections: where, for the drift
    correction; None when they cannot be placed so (then they are averaged).

    - ``spec.flat_positions`` where known: a run's flat stream (its events' times), or two
      flat files (``--flats`` given twice: the first before the projections, the second after).
    - Flats in the projections' own frame stack (NeXus image keys): their frame indices.
    Both orderings count in frames, in the order the flats are read.
    """
    if spec.flat_positions is not None:
        return schedule_from_positions(spec.flat_positions, range(spec.n_angles))
    proj = spec.projections
    if len(proj) == 1 and proj[0].indices is not None:
        same = [fs for fs in spec.flats if (fs.path, fs.dataset) == (proj[0].path, proj[0].dataset)]
        if len(same) == len(spec.flats) and all(fs.indices for fs in same):
            positions = [i for fs in same for i in fs.indices]
            return schedule_from_positions(positions, proj[0].indices)
    return None
