"""NeXus NXtomo files, and any layout named by explicit dataset paths.

An NXtomo entry keeps every frame in one stack with an ``image_key`` per frame (0 projection,
1 flat, 2 dark, 3 invalid) and a ``rotation_angle`` per frame whose ``units`` attribute says
degrees or radians. Flats and darks may be taken before and after the projections.
"""

from __future__ import annotations

import h5py
import numpy as np
from tomopipe.tasks.sources.hdf5io import (
    _text,
    attr_text,
    build_spec,
    frames_dataset,
    get_dataset,
    has,
    length_um,
    read_angles_deg,
)
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.errors import InputError

PROJECTION, FLAT, DARK, INVALID = 0, 1, 2, 3


def _nx_class(obj) -> str | None:
    return attr_text(obj, "NX_class")


def _groups(group: h5py.Group, nx_class: str) -> list[h5py.Group]:
    out = []
    for key in group:
        try:
            obj = group[key]
        except (KeyError, OSError):
            continue
        if isinstance(obj, h5py.Group) and _nx_class(obj) == nx_class:
            out.append(obj)
    return out


def _definition(group: h5py.Group) -> str | None:
    if has(group, "definition") and isinstance(group["definition"], h5py.Dataset):
        return _text(group["definition"][()]).strip()
    return attr_text(group, "definition")


def find_nxtomo_entry(f: h5py.File) -> h5py.Group | None:
    """The first NXentry (or NXsubentry inside one) whose definition is NXtomo."""
    for entry in _groups(f["/"], "NXentry"):
        if _definition(entry) == "NXtomo":
            return entry
        for sub in _groups(entry, "NXsubentry"):
            if _definition(sub) == "NXtomo":
                return sub
    return None


def _detector_paths(entry: h5py.Group) -> list[str]:
    paths = []
    if has(entry, "instrument"):
        paths += [f"instrument/{d.name.rsplit('/', 1)[-1]}"
                  for d in _groups(entry["instrument"], "NXdetector")]
    return paths + ["instrument/detector"]


def _pixel_size_um(entry: h5py.Group) -> float | None:
    for det in _detector_paths(entry):
        for key in ("x_pixel_size", "pixel_size", "x_pixel_size_um"):
            rel = f"{det}/{key}"
            if has(entry, rel) and isinstance(entry[rel], h5py.Dataset):
                ds = entry[rel]
                # NeXus lengths without units are most often metres when tiny, else micrometres.
                try:
                    raw = float(np.asarray(ds[()]).reshape(-1)[0])
                except (TypeError, ValueError, IndexError, OSError):
                    continue
                default = "m" if raw < 1e-3 else "um"
                value = length_um(ds, default_units=default)
                if value is not None:
                    return value
    return None


def _absolute(entry: h5py.Group, rel: str) -> str:
    return f"{entry.name.rstrip('/')}/{rel}"


def scan_from_nexus(f: h5py.File, entry: h5py.Group, *, label: str,
                    data_path: str | None = None, image_key_path: str | None = None,
                    angles_path: str | None = None, pixel_size: float | None = None,
                    require_flats: bool = True) -> ScanSpec:
    """A ScanSpec for an NXtomo entry; explicit paths override what is found in it."""
    dets = _detector_paths(entry)
    data = data_path or _found(entry, [f"{d}/data" for d in dets] + ["data/data"], label,
                               "frame data")
    keys = image_key_path or _found(entry, [f"{d}/image_key" for d in dets] + ["data/image_key"],
                                    label, "image_key dataset")
    angles = angles_path or _found(entry, ["sample/rotation_angle", "data/rotation_angle"], label,
                                   "rotation_angle dataset")
    return scan_from_paths(f, label=label, data_path=data, image_key_path=keys,
                           angles_path=angles, pixel_size=pixel_size
                           if pixel_size is not None else _pixel_size_um(entry),
                           extra={"format": "nxtomo", "entry": entry.name},
                           require_flats=require_flats)


def _found(entry: h5py.Group, candidates: list[str], label: str, what: str) -> str:
    for rel in candidates:
        if has(entry, rel):
            return _absolute(entry, rel)
    raise InputError(label, f"missing {what} in NXtomo entry (looked for "
                     f"{', '.join(candidates)})", where=_absolute(entry, candidates[0]))


def scan_from_paths(f: h5py.File, *, label: str, data_path: str,
                    image_key_path: str | None = None, angles_path: str | None = None,
                    pixel_size: float | None = None, extra: dict | None = None,
                    require_flats: bool = True) -> ScanSpec:
    """A ScanSpec from explicit dataset paths.

    With an image key, the frame stack holds projections, flats and darks; without one, every
    frame is a projection and flats and darks are looked for in Data Exchange's places. Angles
    are in degrees unless the dataset's ``units`` attribute says radians.
    """
    extra = dict(extra or {"format": "paths"})
    if angles_path is None:
        raise InputError(label, "no angles: give angles_path (the dataset of rotation angles)",
                         where=data_path)
    all_angles, units = read_angles_deg(f, angles_path, source=label)
    extra["angle_units"] = units
    if image_key_path is None:
        from tomopipe.tasks.sources.dxchange import DARKS, FLATS

        flats = [(FLATS, None)] if has(f, FLATS) else []
        darks = [(DARKS, None)] if has(f, DARKS) else []
        return build_spec(f, label=label, projections=(data_path, None), flats=flats, darks=darks,
                          angles_deg=all_angles, angles_where=angles_path,
                          pixel_size_um=pixel_size, extra=extra, require_flats=require_flats)

    frames = frames_dataset(f, data_path, source=label, what="frame data")
    key_ds = get_dataset(f, image_key_path, source=label, what="image_key dataset")
    if key_ds.ndim != 1 or key_ds.dtype.kind not in "iuf":
        raise InputError(label, f"image_key must be a 1-D integer array, found {key_ds.dtype} "
                         f"{key_ds.shape}", where=image_key_path)
    image_key = np.asarray(key_ds[()]).astype(np.int64)
    n_frames = frames.shape[0]
    if len(image_key) != n_frames:
        raise InputError(label, f"{len(image_key)} image keys for {n_frames} frames in "
                         f"{data_path}", where=image_key_path)
    unknown = sorted(set(np.unique(image_key).tolist()) - {PROJECTION, FLAT, DARK, INVALID})
    if unknown:
        raise InputError(label, f"unknown image_key values {unknown} (0 projection, 1 flat, "
                         f"2 dark, 3 invalid)", where=image_key_path)
    proj_idx = np.flatnonzero(image_key == PROJECTION)
    flat_idx = np.flatnonzero(image_key == FLAT)
    dark_idx = np.flatnonzero(image_key == DARK)
    # rotation_angle has one value per frame in NXtomo; accept one per projection too.
    if len(all_angles) == n_frames:
        angles = all_angles[proj_idx]
    elif len(all_angles) == len(proj_idx):
        angles = all_angles
    else:
        raise InputError(label, f"{len(all_angles)} angles for {n_frames} frames "
                         f"({len(proj_idx)} projections) in {data_path}", where=angles_path)
    first_proj = proj_idx[0] if len(proj_idx) else n_frames
    last_proj = proj_idx[-1] if len(proj_idx) else -1
    extra.update({
        "flats_before": int(np.sum(flat_idx < first_proj)),
        "flats_after": int(np.sum(flat_idx > last_proj)),
        "darks_before": int(np.sum(dark_idx < first_proj)),
        "darks_after": int(np.sum(dark_idx > last_proj)),
        "invalid_frames": int(np.sum(image_key == INVALID)),
    })
    if len(flat_idx) == 0 and require_flats:
        raise InputError(label, "no flat-field frames (no image_key == 1): cannot normalise",
                         where=image_key_path)
    return build_spec(
        f,
        label=label,
        projections=(data_path, proj_idx),
        flats=[(data_path, flat_idx)] if len(flat_idx) else [],
        require_flats=require_flats,
        darks=[(data_path, dark_idx)] if len(dark_idx) else [],
        angles_deg=angles,
        angles_where=angles_path,
        pixel_size_um=pixel_size,
        extra=extra,
    )
