"""The per-slab pipeline as plain functions on arrays (no Dask, no files).

Raw frames -> normalised (one flat, or flats interpolated between before and after) -> zingers
-> Paganin phase retrieval -> minus log -> sinograms -> stripe removal -> reconstruction, where a
360-degree scan with its axis off-centre is first stitched into a 180-degree sinogram of about
twice the width.
"""

from __future__ import annotations

import numpy as np
from tomopipe.tasks.preprocess.drift import FlatSchedule, normalize_drift
from tomopipe.tasks.preprocess.normalize import minus_log, normalize
from tomopipe.tasks.preprocess.phase import paganin_filter, paganin_margin, paganin_strength
from tomopipe.tasks.preprocess.stitch360 import is_offset_axis, stitch_half_turns, stitched_width
from tomopipe.tasks.preprocess.stripes import remove_stripes
from tomopipe.tasks.preprocess.zingers import remove_zingers
from tomopipe.tasks.recon.params import ReconParams

from tomopipe.errors import ConfigError

UM_PER_CM = 1e4


def to_sinograms(projections: np.ndarray) -> np.ndarray:
    """(angles, rows, cols) -> (rows, angles, cols), contiguous."""
    return np.ascontiguousarray(np.swapaxes(projections, 0, 1))


def require_pixel_size(params: ReconParams, pixel_size_um: float | None, source: str) -> None:
    """Phase retrieval needs the pixel size: refuse before anything runs when it is unknown."""
    if params.phase != "none" and not pixel_size_um:
        raise ConfigError(f"{source}: phase retrieval ({params.phase}) needs the pixel size, and "
                          "the file states none: give --pixel-size UM (pixel_size_um)")


def phase_margin(params: ReconParams, pixel_size_um: float | None) -> int:
    """Detector rows beyond a slab that phase retrieval needs (0 without it)."""
    if params.phase == "none":
        return 0
    return paganin_margin(paganin_strength(pixel_size_um, params.distance_mm, params.energy_kev,
                                           params.delta_beta))


def read_window(rows: tuple[int, int], n_rows: int, margin: int
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows to read for slab ``rows`` (up to ``margin`` more on each side, inside the
    detector) and the halo (rows read above, rows read below) to crop after filtering."""
    r0, r1 = int(rows[0]), int(rows[1])
    a, b = max(0, r0 - margin), min(int(n_rows), r1 + margin)
    return (a, b), (r0 - a, b - r1)


def preprocess_slab(projections: np.ndarray, flats: np.ndarray, darks: np.ndarray,
                    params: ReconParams, *, pixel_size_um: float | None = None,
                    schedule: FlatSchedule | None = None,
                    halo: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Raw frames to sinograms of attenuation line integrals, (rows, angles, cols) float32.

    schedule: where the flats were taken (before and after the projections) for the drift
    correction; None averages them. halo: rows read above and below the slab for the phase
    filter, cropped before the sinograms are formed.
    """
    if schedule is not None:
        norm = normalize_drift(projections, flats, darks, schedule, method=params.flat_method)
    else:
        norm = normalize(projections, flats, darks, method=params.flat_method)
    if params.zingers is not None:
        norm = remove_zingers(norm, params.zingers)
    if params.phase == "paganin":
        require_pixel_size(params, pixel_size_um, "phase retrieval")
        norm = paganin_filter(norm, pixel_size_um=pixel_size_um, distance_mm=params.distance_mm,
                              energy_kev=params.energy_kev, delta_beta=params.delta_beta,
                              out=norm)
    top, bottom = (int(h) for h in halo)
    if top or bottom:
        norm = norm[:, top:norm.shape[1] - bottom]
    sinos = to_sinograms(minus_log(norm, out=norm))  # in place: two float32 copies at most
    del norm
    if params.rings and params.rings != "none":
        sinos = remove_stripes(sinos, params.rings)
    return np.asarray(sinos, dtype=np.float32)


def output_width(angles_rad, center: float, n_cols: int) -> int:
    """Width of the reconstructed slices: the detector's, or the stitched width of a
    360-degree scan whose axis is off-centre."""
    if is_offset_axis(angles_rad, center, n_cols):
        return stitched_width(center, n_cols)
    return int(n_cols)


def reconstruct_sinograms(sinos: np.ndarray, angles_rad: np.ndarray, center: float,
                          params: ReconParams, backend) -> np.ndarray:
    """(rows, angles, cols) sinograms -> (rows, n, n) attenuation per pixel; n = output_width.

    A 360-degree scan with its axis off-centre is stitched first (``stitch360``).
    """
    angles = np.asarray(angles_rad, dtype=np.float64)
    if is_offset_axis(angles, center, sinos.shape[-1]):
        sinos, angles, center = stitch_half_turns(sinos, angles, center)
    return backend.reconstruct(sinos, angles, float(center), algorithm=params.algorithm,
                               filter_name=params.filter_name, iterations=params.iterations)


def reconstruct_slab(projections: np.ndarray, flats: np.ndarray, darks: np.ndarray,
                     angles_rad: np.ndarray, center: float, params: ReconParams, *,
                     backend=None, pixel_size_um: float | None = None,
                     schedule: FlatSchedule | None = None,
                     halo: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Raw frames of some detector rows to their reconstructed slices, (rows, n, n) float32.

    Values are attenuation per pixel, or per cm when ``pixel_size_um`` is known.
    """
    if backend is None:
        from tomopipe.tasks.recon.backends import get_backend

        backend = get_backend(params.backend, params.algorithm)
    sinos = preprocess_slab(projections, flats, darks, params, pixel_size_um=pixel_size_um,
                            schedule=schedule, halo=halo)
    recon = reconstruct_sinograms(sinos, np.asarray(angles_rad, dtype=np.float64), center,
                                  params, backend)
    recon = np.asarray(recon, dtype=np.float32)
    if pixel_size_um:
        recon /= np.float32(pixel_size_um / UM_PER_CM)
    return recon
