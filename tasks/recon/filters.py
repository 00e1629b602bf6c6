"""Reconstruction filters as frequency responses on a zero-padded detector grid.

The ramp is the exact discrete one: the FFT of the spatial Ram-Lak kernel (h[0] = 1/4,
h[k] = -1/(pi k)^2 for odd k, 0 for even k), so its DC term is right (small and positive) and a
constant object reconstructs to its value. Windows shape the ramp over the normalised frequency
w = |f| / 0.5 in [0, 1] (f in cycles per pixel).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
from tomopipe.tasks.recon.params import FILTERS

# astra-toolbox's names for the same windows.
ASTRA_FILTER_NAMES = {
    "ramlak": "ram-lak",
    "shepp": "shepp-logan",
    "cosine": "cosine",
    "hann": "hann",
    "parzen": "parzen",
}


def check_filter(name: str) -> str:
    if name not in FILTERS:
        raise ValueError(f"filter_name: unknown filter {name!r}; "
                         f"choose one of {', '.join(FILTERS)}")
    return name


def padded_length(n_cols: int, factor: float = 2.0) -> int:
    """An even FFT-friendly length >= factor * n_cols (2x avoids wrap-around of the ramp)."""
    target = max(int(np.ceil(factor * n_cols)), n_cols + 2)
    length = scipy.fft.next_fast_len(target)
    while length % 2:
        length = scipy.fft.next_fast_len(length + 1)
    return length


def ramp_response(n_pad: int) -> np.ndarray:
    """Exact discrete ramp, FFT order, length n_pad (real, even)."""
    k = np.arange(n_pad)
    dist = np.minimum(k, n_pad - k)  # circular distance: the kernel is symmetric
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = dist % 2 == 1
    h[odd] = -1.0 / (np.pi * dist[odd]) ** 2
    return np.fft.fft(h).real


def window(name: str, w: np.ndarray) -> np.ndarray:
    """The window of filter ``name`` at normalised frequency w in [0, 1]."""
    check_filter(name)
    w = np.abs(w)
    if name == "ramlak":
        return np.ones_like(w)
    if name == "shepp":
        return np.sinc(w / 2)  # sin(pi w / 2) / (pi w / 2)
    if name == "cosine":
        return np.cos(np.pi * w / 2)
    if name == "hann":
        return 0.5 * (1 + np.cos(np.pi * w))
    # parzen
    return np.where(w <= 0.5, 1 - 6 * w**2 * (1 - w), 2 * (1 - w) ** 3)


@lru_cache(maxsize=32)
def _response(name: str, n_pad: int) -> np.ndarray:
    w = np.abs(np.fft.fftfreq(n_pad)) / 0.5
    out = ramp_response(n_pad) * window(name, w)
    out.setflags(write=False)
    return out


def filter_response(name: str, n_pad: int) -> np.ndarray:
    """Ramp times window, FFT order, length n_pad: multiply a projection's padded FFT by it."""
    return _response(check_filter(name), int(n_pad))
