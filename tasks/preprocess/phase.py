"""Single-distance phase retrieval (Paganin et al., J. Microsc. 206, 33-40, 2002).

For a homogeneous object (one delta/beta) in the near field, the normalised intensity at the
detector is, to first order, a low-passed copy of the contact transmission exp(-mu t):

    F[I/I0](f) = F[exp(-mu t)](f) * (1 + pi * lambda * z * (delta/beta) * |f|^2)

with f in cycles per unit length. Dividing by that factor and taking minus the log gives mu t,
the attenuation line integral of the same object as absorption tomography would see, but
without the edge fringes and with far less noise. mu = 4 pi beta / lambda; the reconstruction
therefore holds mu (per pixel, or per cm), and delta = mu * (delta/beta) * lambda / (4 pi).

Frames are padded by replicating their edges (as TomoPy does) to at least the filter's reach on
every side, so nothing wraps round from the opposite edge.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
from tomopipe.tasks.preprocess._validate import ArrayInputError, as_array, require_finite

# h * c in keV * m: lambda [m] = HC_KEV_M / E [keV]
HC_KEV_M = 1.239841984e-9
# The filter's real-space kernel falls off as exp(-2 pi r / sqrt(a)) (r in pixels); 1.5 sqrt(a)
# leaves less than 1e-4 of it beyond the margin.
REACH = 1.5


def wavelength_m(energy_kev: float) -> float:
    """X-ray wavelength in metres for a photon energy in keV."""
    return HC_KEV_M / float(energy_kev)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArrayInputError(name, f"must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ArrayInputError(name, f"must be a positive number, got {value!r}")
    return v


def paganin_strength(pixel_size_um: float, distance_mm: float, energy_kev: float,
                     delta_beta: float) -> float:
    """``a`` in the filter 1 / (1 + a |f|^2) with f in cycles per pixel:
    pi * lambda * z * (delta/beta) / pixel_size^2 (dimensionless)."""
    px = _check_positive("pixel_size_um", pixel_size_um) * 1e-6
    z = _check_positive("distance_mm", distance_mm) * 1e-3
    lam = wavelength_m(_check_positive("energy_kev", energy_kev))
    return math.pi * lam * z * _check_positive("delta_beta", delta_beta) / px**2


def paganin_margin(strength: float) -> int:
    """Pixels of neighbourhood that change a pixel's filtered value by 1e-4 or more: how far to
    pad, and how many rows beyond a slab to read so slabs filtered apart join without seams."""
    return max(1, math.ceil(REACH * math.sqrt(strength)))


def paganin_response(shape: tuple[int, int], strength: float) -> np.ndarray:
    """The filter 1 / (1 + a (fy^2 + fx^2)) in ``rfft2`` layout for frames of ``shape``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return (1.0 / (1.0 + strength * (fy**2 + fx**2))).astype(np.float32)


def fourier_filter_frames(frames, response: np.ndarray, pad: tuple[int, int], *,
                          out=None) -> np.ndarray:
    """Each (rows, cols) frame padded by ``pad`` = (rows, cols) edge pixels on every side,
    multiplied in Fourier space by ``response`` (``rfft2`` layout of the padded shape) and
    cropped back. (angles, rows, cols) float32 in, the same out (``out=frames`` works in place)."""
    arr = as_array(frames, "frames", (3,), "(angles, rows, cols)")
    py, px = (int(p) for p in pad)
    padded = (arr.shape[1] + 2 * py, arr.shape[2] + 2 * px)
    if response.shape != (padded[0], padded[1] // 2 + 1):
        raise ArrayInputError("response", f"shape {response.shape} does not fit frames padded "
                              f"to {padded}")
    if out is None:
        out = np.empty(arr.shape, np.float32)
    for k in range(arr.shape[0]):
        frame = np.pad(arr[k].astype(np.float32, copy=False), ((py, py), (px, px)), mode="edge")
        spec = scipy.fft.rfft2(frame)
        spec *= response
        out[k] = scipy.fft.irfft2(spec, s=padded)[py:py + arr.shape[1], px:px + arr.shape[2]]
    return out


def paganin_filter(frames, *, pixel_size_um: float, distance_mm: float, energy_kev: float,
                   delta_beta: float, out=None) -> np.ndarray:
    """Paganin's filter on normalised projections (angles, rows, cols) -> float32, same shape.

    Take ``minus_log`` of the result for the attenuation line integrals. ``out=frames`` (float32)
    works in place. Frames are padded with their edge values to a fast FFT size at least
    ``paganin_margin`` pixels beyond every side.
    """
    arr = as_array(frames, "frames", (3,), "(angles, rows, cols)")
    require_finite(arr, "frames")
    a = paganin_strength(pixel_size_um, distance_mm, energy_kev, delta_beta)
    margin = paganin_margin(a)
    pad = tuple((scipy.fft.next_fast_len(n + 2 * margin, real=True) - n + 1) // 2
                for n in arr.shape[1:])
    padded = (arr.shape[1] + 2 * pad[0], arr.shape[2] + 2 * pad[1])
    return fourier_filter_frames(arr, paganin_response(padded, a), pad, out=out)
