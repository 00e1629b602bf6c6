"""Synthetic scans and the files they are written to, for the demo and the tests.

``make_phantom_scan`` turns the analytic phantom's line integrals into detector counts the way
a beamline records them: a smooth, non-uniform beam profile (the same in flats and
projections), Poisson photon noise and a dark offset. ``write_dxchange`` and ``write_nexus``
store such a scan as APS Data Exchange or NeXus NXtomo, one frame per chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tomopipe.tasks.phantom import (
    DEFAULT_FEATURES,
    phantom_projections,
    phantom_volume,
    rescale_geometry,
    scale_features,
)

DARK_LEVEL = 100.0  # counts the detector reads with the shutter closed
REFERENCE_N = 512  # DEFAULT_FEATURES are sized for n = 512


def flat_field(n_rows: int, n_cols: int, photons: float) -> np.ndarray:
    """Expected open-beam counts: a bright middle falling off to the sides, with a gentle
    vertical ripple and a tilt, as a real beam and scintillator give."""
    x = (np.arange(n_cols) + 0.5) / n_cols - 0.5
    y = (np.arange(n_rows) + 0.5) / n_rows - 0.5
    across = 1.0 - 0.8 * x**2 + 0.06 * x
    ripple = 1.0 + 0.05 * np.sin(2 * np.pi * 1.5 * y + 0.4)
    return (photons * ripple[:, None] * across[None, :]).astype(np.float64)


def make_phantom_scan(
    n: int,
    n_rows: int,
    n_angles: int,
    *,
    angle_range: tuple[float, float] = (0.0, 180.0),
    center: float | None = None,
    n_flats: int = 10,
    n_darks: int = 10,
    photons: float = 20000.0,
    seed: int = 0,
    features=None,
    with_truth: bool = True,
) -> dict:
    """Raw detector counts of the phantom: projections, flats and darks as uint16.

    Returns dict(projections (angles, rows, n), flats (n_flats, rows, n), darks (n_darks, rows,
    n), angles_deg (n_angles,), center, truth (rows, n, n) attenuation per pixel or None,
    flat_field (rows, n) expected open-beam counts, dark_level, features).
    Angles run from angle_range[0] up to, not including, angle_range[1]. When ``features`` is
    None the default materials are rescaled to ``n`` so the transmission stays realistic.
    """
    if features is None:
        features = scale_features(DEFAULT_FEATURES, REFERENCE_N / n)
    rng = np.random.default_rng(seed)
    angles_deg = np.linspace(angle_range[0], angle_range[1], n_angles, endpoint=False)
    center = n / 2 if center is None else float(center)
    field = flat_field(n_rows, n, photons)

    def counts(expected: np.ndarray) -> np.ndarray:
        raw = rng.poisson(expected) + rng.poisson(DARK_LEVEL, expected.shape)
        return np.clip(raw, 0, np.iinfo(np.uint16).max).astype(np.uint16)

    projections = np.empty((n_angles, n_rows, n), np.uint16)
    block = max(1, 2**24 // max(1, n_rows * n))  # a few tens of MB of float64 at a time
    for a0 in range(0, n_angles, block):
        a1 = min(n_angles, a0 + block)
        line = phantom_projections(n, n_rows, np.radians(angles_deg[a0:a1]), center, features)
        projections[a0:a1] = counts(field * np.exp(-line.astype(np.float64)))
    flats = counts(np.broadcast_to(field, (n_flats, n_rows, n)))
    darks = counts(np.zeros((n_darks, n_rows, n)))
    truth = phantom_volume(n, n_rows, features) if with_truth else None
    return dict(projections=projections, flats=flats, darks=darks, angles_deg=angles_deg,
                center=center, truth=truth, flat_field=field, dark_level=DARK_LEVEL,
                features=tuple(features))


def make_offset_axis_scan(
    n_cols: int,
    n_rows: int,
    n_angles: int,
    *,
    axis: float,
    object_width: float,
    with_truth: bool = True,
    **kwargs,
) -> dict:
    """A 360-degree scan with the rotation axis at column ``axis`` of an ``n_cols`` detector,
    of the default phantom made ``object_width`` pixels wide (its body's full width): wider
    than the detector when object_width > n_cols (extended field of view).

    Returns ``make_phantom_scan``'s dict; ``truth`` is sampled on the stitched slice, as wide as
    ``stitch360.stitched_width(axis, n_cols)`` (``full_width``), centred on the axis.
    """
    from tomopipe.tasks.preprocess.stitch360 import stitched_width

    full = stitched_width(axis, n_cols)
    body_a = DEFAULT_FEATURES[0].a  # the body's semi-axis, a fraction of the slice width
    n_body = object_width / (2 * body_a)  # the slice width the default phantom would fill
    geometry = rescale_geometry(DEFAULT_FEATURES, n_body, n_cols)
    features = scale_features(geometry, REFERENCE_N / n_body)  # realistic transmission
    scan = make_phantom_scan(n_cols, n_rows, n_angles, angle_range=(0.0, 360.0), center=axis,
                             features=features, with_truth=False, **kwargs)
    scan["full_width"] = full
    scan["truth"] = (phantom_volume(full, n_rows, rescale_geometry(features, n_cols, full))
                     if with_truth else None)
    return scan


def _frames(group: h5py.Group, name: str, frames: np.ndarray) -> h5py.Dataset:
    frames = np.asarray(frames)
    return group.create_dataset(name, data=frames, chunks=(1,) + frames.shape[1:])


def write_dxchange(path: str | os.PathLike, projections: np.ndarray, flats: np.ndarray | None,
                   darks: np.ndarray | None, theta_deg: Sequence[float],
                   pixel_size_um: float | None = None) -> Path:
    """An APS Data Exchange file: /exchange/data, data_white, data_dark, theta (degrees).

    ``flats`` or ``darks`` None leaves that dataset out (for tests of incomplete files).
    """
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.attrs["implements"] = "exchange:measurement"
        ex = f.create_group("exchange")
        _frames(ex, "data", projections)
        if flats is not None:
            _frames(ex, "data_white", flats)
        if darks is not None:
            _frames(ex, "data_dark", darks)
        theta = ex.create_dataset("theta", data=np.asarray(theta_deg, dtype=np.float64))
        theta.attrs["units"] = "degree"
        if pixel_size_um is not None:
            res = f.create_dataset("measurement/instrument/detection_system/objective/resolution",
                                   data=float(pixel_size_um))
            res.attrs["units"] = "um"
    return path


def _split(frames: np.ndarray | None, after: bool) -> tuple[np.ndarray, np.ndarray]:
    """Frames taken before the projections and after them (half each when ``after``)."""
    if frames is None or len(frames) == 0:
        return np.empty((0,)), np.empty((0,))
    k = (len(frames) + 1) // 2 if after else len(frames)
    return frames[:k], frames[k:]


def write_nexus(path: str | os.PathLike, projections: np.ndarray, flats: np.ndarray | None,
                darks: np.ndarray | None, angles_deg: Sequence[float], *,
                flats_after: bool = True, darks_after: bool = True, external: bool = False,
                angle_units: str = "degree", pixel_size_um: float | None = None) -> Path:
    """A NeXus NXtomo file: every frame in /entry/instrument/detector/data with an image_key.

    Frames run darks, flats (the first half when ``*_after``), projections, then the other
    half of the flats and darks. ``angle_units`` "degree" or "rad" sets how rotation_angle is
    stored. ``external=True`` puts the frame stack in ``<stem>_frames.h5`` beside the file and
    links it with an HDF5 external link (relative, so the pair can be moved together).
    """
    path = Path(path)
    projections = np.asarray(projections)
    angles_deg = np.asarray(angles_deg, dtype=np.float64)
    darks_before, darks_later = _split(darks, darks_after)
    flats_before, flats_later = _split(flats, flats_after)
    pieces = [(darks_before, 2), (flats_before, 1), (projections, 0), (flats_later, 1),
              (darks_later, 2)]
    stack = np.concatenate([p for p, _ in pieces if len(p)], axis=0).astype(projections.dtype)
    image_key = np.concatenate([np.full(len(p), k, np.uint8) for p, k in pieces if len(p)])
    n_before = len(darks_before) + len(flats_before)
    angles = np.concatenate([np.full(n_before, angles_deg[0]), angles_deg,
                             np.full(len(stack) - n_before - len(projections), angles_deg[-1])])
    if angle_units in ("rad", "radian", "radians"):
        angles = np.radians(angles)
    elif angle_units not in ("degree", "degrees", "deg"):
        raise ValueError(f"angle_units must be 'degree' or 'rad', not {angle_units!r}")

    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXtomo"
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        if external:
            frames_path = path.with_name(f"{path.stem}_frames.h5")
            with h5py.File(frames_path, "w") as g:
                _frames(g, "data", stack)
            detector["data"] = h5py.ExternalLink(frames_path.name, "/data")
        else:
            _frames(detector, "data", stack)
        detector["image_key"] = image_key
        if pixel_size_um is not None:
            for axis in ("x", "y"):
                ds = detector.create_dataset(f"{axis}_pixel_size", data=float(pixel_size_um))
                ds.attrs["units"] = "um"
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        rot = sample.create_dataset("rotation_angle", data=angles)
        rot.attrs["units"] = angle_units
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        data["data"] = h5py.SoftLink("/entry/instrument/detector/data")
        data["image_key"] = h5py.SoftLink("/entry/instrument/detector/image_key")
        data["rotation_angle"] = h5py.SoftLink("/entry/sample/rotation_angle")
    return path
