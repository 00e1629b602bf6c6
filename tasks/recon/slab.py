"""The per-slab pipeline as one plain function on arrays (no Dask, no files)."""

from __future__ import annotations

import numpy as np
from tomopipe.tasks.preprocess.normalize import minus_log, normalize
from tomopipe.tasks.preprocess.stripes import remove_stripes
from tomopipe.tasks.preprocess.zingers import remove_zingers
from tomopipe.tasks.recon.params import ReconParams

UM_PER_CM = 1e4


def to_sinograms(projections: np.ndarray) -> np.ndarray:
    """(angles, rows, cols) -> (rows, angles, cols), contiguous."""
    return np.ascontiguousarray(np.swapaxes(projections, 0, 1))


def preprocess_slab(projections: np.ndarray, flats: np.ndarray, darks: np.ndarray,
                    params: ReconParams) -> np.ndarray:
    """Raw frames to sinograms of attenuation line integrals, (rows, angles, cols) float32."""
    norm = normalize(projections, flats, darks, method=params.flat_method)
    if params.zingers is not None:
        norm = remove_zingers(norm, params.zingers)
    sinos = to_sinograms(minus_log(norm, out=norm))  # in place: two float32 copies at most
    del norm
    if params.rings and params.rings != "none":
        sinos = remove_stripes(sinos, params.rings)
    return np.asarray(sinos, dtype=np.float32)


def reconstruct_slab(projections: np.ndarray, flats: np.ndarray, darks: np.ndarray,
                     angles_rad: np.ndarray, center: float, params: ReconParams, *,
                     backend=None, pixel_size_um: float | None = None) -> np.ndarray:
    """Raw frames of some detector rows to their reconstructed slices, (rows, n, n) float32.

    Values are attenuation per pixel, or per cm when ``pixel_size_um`` is known.
    """
    if backend is None:
        from tomopipe.tasks.recon.backends import get_backend

        backend = get_backend(params.backend, params.algorithm)
    sinos = preprocess_slab(projections, flats, darks, params)
    recon = backend.reconstruct(
        sinos, np.asarray(angles_rad, dtype=np.float64), float(center),
        algorithm=params.algorithm, filter_name=params.filter_name,
        iterations=params.sirt_iterations,
    )
    recon = np.asarray(recon, dtype=np.float32)
    if pixel_size_um:
        recon /= np.float32(pixel_size_um / UM_PER_CM)
    return recon
