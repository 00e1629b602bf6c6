"""APS Data Exchange files: /exchange/data, data_white, data_dark and theta (degrees)."""

from __future__ import annotations

import h5py
from tomopipe.tasks.sources.hdf5io import (
    attr_text,
    build_spec,
    get_dataset,
    has,
    length_um,
    read_angles_deg,
)
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.errors import InputError

DATA = "/exchange/data"
FLATS = "/exchange/data_white"
DARKS = "/exchange/data_dark"
THETA = "/exchange/theta"

# Where Data Exchange files state the effective pixel size, best first (micrometres unless the
# dataset's `units` attribute says otherwise).
_PIXEL_SIZE_PATHS = (
    "/measurement/instrument/detection_system/objective/resolution",
    "/measurement/instrument/detection_system/objective/pixel_size",
    "/measurement/instrument/detector/effective_pixel_size",
)
_DETECTOR_PIXEL = "/measurement/instrument/detector/pixel_size_x"
_MAGNIFICATION = "/measurement/instrument/detection_system/objective/magnification"


def is_dxchange(f: h5py.File) -> bool:
    return has(f, DATA)


def pixel_size_um(f: h5py.File) -> float | None:
    """The effective pixel size where the file states one; None otherwise (best effort)."""
    for name in _PIXEL_SIZE_PATHS:
        if has(f, name) and isinstance(f[name], h5py.Dataset):
            value = length_um(f[name])
            if value is not None:
                return value
    if has(f, _DETECTOR_PIXEL) and isinstance(f[_DETECTOR_PIXEL], h5py.Dataset):
        value = length_um(f[_DETECTOR_PIXEL])
        if value is not None and has(f, _MAGNIFICATION):
            magnification = length_um(f[_MAGNIFICATION], default_units="um")
            if magnification:
                value /= magnification
        return value
    if has(f, "/exchange"):
        for key in ("pixel_size_um", "pixel_size"):
            text = attr_text(f["/exchange"], key)
            if text:
                try:
                    value = float(text)
                except ValueError:
                    continue
                if value > 0:
                    return value
    return None


def scan_from_dxchange(f: h5py.File, *, label: str, data_path: str | None = None,
                       angles_path: str | None = None,
                       pixel_size: float | None = None, require_flats: bool = True) -> ScanSpec:
    """A ScanSpec for a Data Exchange file; ``data_path``/``angles_path`` override the defaults."""
    data = data_path or DATA
    theta = angles_path or THETA
    if not has(f, theta):
        raise InputError(label, "missing angle dataset (Data Exchange keeps projection angles "
                         "in degrees here; give angles_path for another place)", where=theta)
    angles, units = read_angles_deg(f, theta, source=label, default_units="degree")
    # Darks are optional: build_spec treats a missing dark set as zeros and records it.
    darks = [(DARKS, None)] if has(f, DARKS) else []
    if not has(f, FLATS) and require_flats:
        raise InputError(label, "missing flat-field dataset (no flats: cannot normalise)",
                         where=FLATS)
    if has(f, FLATS):
        get_dataset(f, FLATS, source=label, what="flat-field dataset")
    return build_spec(
        f,
        label=label,
        projections=(data, None),
        flats=[(FLATS, None)] if has(f, FLATS) else [],
        require_flats=require_flats,
        darks=darks,
        angles_deg=angles,
        angles_where=theta,
        pixel_size_um=pixel_size if pixel_size is not None else pixel_size_um(f),
        extra={"format": "dxchange", "angle_units": units},
    )
