"""What a slab needs from the files beyond its own rows, for the science options.

- ``prepare_spec``: flats and darks from other files (``flats``/``darks`` parameters).
- ``load_slab``: a slab's raw frames, with the rows around it that phase retrieval needs, the
  flat-field drift schedule and the pixel size, ready for ``slab.reconstruct_slab``.
- ``science_provenance``: what these options did, for the volume's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tomopipe.tasks.preprocess.stitch360 import is_offset_axis, stitched_width
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.slab import phase_margin, read_window
from tomopipe.tasks.sources.flatfield_files import (
    check_field_shapes,
    flat_schedule,
    with_field_files,
)
from tomopipe.tasks.sources.hdf5io import read_slab
from tomopipe.tasks.sources.spec import ScanSpec


@dataclass
class SlabInputs:
    """Raw frames of a slab (and its halo rows) and the keyword options of ``reconstruct_slab``
    and ``preprocess_slab`` (pixel_size_um, schedule, halo)."""

    projections: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    options: dict = field(default_factory=dict)

    @property
    def frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.projections, self.flats, self.darks


def prepare_spec(spec: ScanSpec, params: ReconParams) -> ScanSpec:
    """The scan with the flats and darks the parameters name in other files; every flat and
    dark frame set checked against the projections' frame shape (a run's streams included)."""
    spec = with_field_files(spec, params.flats, params.darks)
    check_field_shapes(spec)
    return spec


def pixel_size_of(spec: ScanSpec, params: ReconParams) -> float | None:
    return params.pixel_size_um if params.pixel_size_um is not None else spec.pixel_size_um


def load_slab(spec: ScanSpec, rows: tuple[int, int], params: ReconParams) -> SlabInputs:
    """Rows ``rows`` of the scan's frames, plus the halo rows phase retrieval needs."""
    px = pixel_size_of(spec, params)
    window, halo = read_window(rows, spec.n_rows, phase_margin(params, px))
    projections, flats, darks = read_slab(spec, window)
    return SlabInputs(projections, flats, darks,
                      {"pixel_size_um": px, "schedule": flat_schedule(spec), "halo": halo})


def halo_bytes(spec: ScanSpec, params: ReconParams) -> int:
    """Memory a slab needs beyond its own rows: the halo rows phase retrieval reads above and
    below it, as raw frames and two float32 copies (for the chunk planner's overhead)."""
    margin = phase_margin(params, pixel_size_of(spec, params))
    if not margin:
        return 0
    per_row = spec.n_angles * spec.n_cols * (np.dtype(spec.dtype).itemsize + 2 * 4)
    return int(2 * min(margin, spec.n_rows) * per_row)


def science_provenance(spec: ScanSpec, params: ReconParams, center: float) -> dict:
    """The flat-field drift, field files, phase retrieval and 360-degree stitching applied."""
    angles = np.deg2rad(np.asarray(spec.angles_deg, dtype=np.float64))
    schedule = flat_schedule(spec)
    out: dict = {
        "flat_field": (schedule.to_dict() if schedule is not None
                       else {"method": f"{params.flat_method} of all flats"}),
        "field_files": spec.extra.get("field_files"),
        "phase": None,
        "geometry": {"kind": "parallel", "width": spec.n_cols},
        "iterations": params.iterations if params.iterative else None,
    }
    if params.phase == "paganin":
        px = pixel_size_of(spec, params)
        out["phase"] = {"method": "paganin", "energy_kev": params.energy_kev,
                        "distance_mm": params.distance_mm, "delta_beta": params.delta_beta,
                        "pixel_size_um": px, "margin_rows": phase_margin(params, px),
                        "values": "mu = 4 pi beta / lambda (attenuation-equivalent)"}
    if is_offset_axis(angles, center, spec.n_cols):
        c = float(center)
        out["geometry"] = {"kind": "360 degrees, axis off-centre: half-turns stitched",
                           "axis": c, "overlap_px": 2 * min(c, spec.n_cols - 1 - c) + 1,
                           "width": stitched_width(c, spec.n_cols)}
    return out
