"""Gridrec-class Fourier reconstruction: filtered back-projection via the Fourier slice theorem.

Per slab: pack two real sinogram rows into one complex row (the operator is real, so the real and
imaginary parts of the result are the two slices), FFT each zero-padded projection, multiply by
filter x angle weight x a phase ramp that moves the rotation axis to the image centre, then one
2-D type-1 NUFFT from the polar samples to the n x n image, batched over the slab (n_trans).

The preparation takes an array module ``xp`` (numpy or cupy) so the GPU backend shares the math.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import scipy.fft
from tomopipe.tasks.recon.base import Backend
from tomopipe.tasks.recon.filters import filter_response, padded_length

# Tuned on 512 x 720 (benchmarks/bench_backends.py): against eps 1e-6, upsampfac 2, pad 2 the
# result correlates 0.999995 at about half the time; pad 1.5 still covers the square image
# (|u| <= 0.71 n < 0.75 n, the period of the padded projection).
DEFAULT_EPS = 1e-3
DEFAULT_UPSAMPFAC = 1.25
DEFAULT_PAD = 1.5


def angle_weights(angles_rad: np.ndarray) -> np.ndarray:
    """Quadrature weights for the angular integral over [0, pi) from any set of angles.

    Each angle gets half the gap to its neighbours once folded into [0, pi) (so 0-360 data, where
    every line is seen twice, gets half weight per view). A gap over ten times the median one and
    over 10 degrees (the missing wedge of a limited-angle scan) counts as a median gap, so the
    views at its edges are not over-weighted; ordinary irregular gaps keep their own width.
    """
    theta = np.mod(np.asarray(angles_rad, dtype=np.float64), np.pi)
    m = theta.size
    if m == 1:
        return np.array([np.pi])
    order = np.argsort(theta, kind="stable")
    s = theta[order]
    gaps = np.diff(np.concatenate([s, [s[0] + np.pi]]))  # gap after each sorted angle (circular)
    typical = np.median(gaps[gaps > 1e-9]) if np.any(gaps > 1e-9) else np.pi / m
    wedge = gaps > max(10.0 * typical, np.deg2rad(10.0))
    gaps = np.where(wedge, typical, gaps)
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty(m)
    w[order] = w_sorted
    return w


def polar_points(angles_rad: np.ndarray, n_pad: int, xp=np, dtype=np.float32):
    """NUFFT points (radians/pixel) in (angle, frequency) order: image row axis, column axis.

    Frequencies are the padded FFT's, in FFT order, so spectra need no reordering.
    """
    f = np.fft.fftfreq(n_pad)
    theta = np.asarray(angles_rad, dtype=np.float64)
    rad = 2 * np.pi * f[None, :]
    py = (rad * np.sin(theta)[:, None]).ravel().astype(dtype)
    px = (rad * np.cos(theta)[:, None]).ravel().astype(dtype)
    return xp.asarray(py), xp.asarray(px)


def spectral_weights(angles_rad, center, filter_name, n_pad, xp=np, dtype=np.complex64):
    """(angles, n_pad) factor: angle weight x filter x centre phase ramp / n_pad.

    The unpaired Nyquist bin is zeroed: without its mirror it would leak the real slice into the
    imaginary one (and back) when two slices share a complex sinogram.
    """
    f = np.fft.fftfreq(n_pad)
    h = filter_response(filter_name, n_pad) * (f != -0.5)
    w = angle_weights(angles_rad)
    # Column j sits at u = j - center: the FT over u is the FFT times exp(+2 pi i f center).
    ramp = np.exp(2j * np.pi * f * center)
    factor = (w[:, None] / n_pad) * (h * ramp)[None, :]
    return xp.asarray(factor.astype(dtype))


def pack_padded(sinos, n_pad: int, xp=np):
    """(rows, angles, cols) real -> (ceil(rows/2), angles, n_pad) complex64, zero-padded:
    row 2k in the real part, row 2k+1 in the imaginary part."""
    rows, n_angles, n = sinos.shape
    half = (rows + 1) // 2
    packed = xp.zeros((half, n_angles, n_pad), dtype=np.complex64)
    if xp is np:  # write through views, no temporaries
        packed.real[:, :, :n] = sinos[0::2]
        packed.imag[: rows // 2, :, :n] = sinos[1::2]
    else:  # array modules whose .real/.imag may be copies
        packed[:, :, :n] = sinos[0::2]
        packed[: rows // 2, :, :n] += 1j * sinos[1::2]
    return packed


def unpack_pairs(images, rows: int, xp=np):
    """(half, n, n) complex -> (rows, n, n) float32, undoing pack_padded."""
    out = xp.empty((rows,) + tuple(images.shape[1:]), dtype=np.float32)
    out[0::2] = images.real
    out[1::2] = images.imag[: rows // 2]
    return out


def nufft_strengths(packed, factor, fft):
    """Filtered, weighted, centre-shifted spectra: (half, angles * n_pad) complex64.

    ``fft(a)`` transforms the last axis (in place where the library can).
    """
    spec = fft(packed)
    spec *= factor[None]
    return spec.reshape(spec.shape[0], -1)


class _PlanCache:
    """A few finufft plans per thread: setting points (a sort) costs about as much as a slice."""

    def __init__(self, size: int = 2):
        self.size = size
        self.local = threading.local()

    def get(self, key, make):
        plans = getattr(self.local, "plans", None)
        if plans is None:
            plans = self.local.plans = OrderedDict()
        if key in plans:
            plans.move_to_end(key)
            return plans[key]
        plan = make()
        plans[key] = plan
        while len(plans) > self.size:
            plans.popitem(last=False)
        return plan


_PLANS = _PlanCache()


class FourierBackend(Backend):
    """CPU gridrec-class FBP on finufft."""

    name = "fourier"
    device = "cpu"
    algorithms = ("fbp",)

    def __init__(self, nthreads: int | None = None, eps: float = DEFAULT_EPS,
                 upsampfac: float = DEFAULT_UPSAMPFAC, pad: float = DEFAULT_PAD,
                 batch: int = 16):
        self.nthreads = nthreads  # None: finufft's default (all cores); Dask workers pass 1
        self.eps, self.upsampfac, self.pad, self.batch = eps, upsampfac, pad, batch

    def available(self) -> bool:
        try:
            import finufft  # noqa: F401
        except ImportError:
            return False
        return True

    def _plan(self, n, angles, n_pad, n_trans):
        import finufft

        key = (n, n_pad, n_trans, self.eps, self.upsampfac, self.nthreads,
               angles.tobytes())

        def make():
            opts = {"upsampfac": self.upsampfac}
            if self.nthreads:
                opts["nthreads"] = int(self.nthreads)
            plan = finufft.Plan(1, (n, n), n_trans=n_trans, eps=self.eps, isign=1,
                                dtype="complex64", **opts)
            py, px = polar_points(angles, n_pad)
            plan.setpts(py, px)
            return plan

        return _PLANS.get(key, make)

    def _run(self, sinos, angles, center, algorithm, filter_name, iterations):
        rows, _, n = sinos.shape
        n_pad = padded_length(n, self.pad)
        factor = spectral_weights(angles, center, filter_name, n_pad)
        workers = int(self.nthreads) if self.nthreads else -1

        def fft(a):
            return scipy.fft.fft(a, axis=-1, workers=workers, overwrite_x=True)

        out = np.empty((rows, n, n), np.float32)
        step = 2 * self.batch  # rows per NUFFT call
        for r0 in range(0, rows, step):
            block = sinos[r0 : r0 + step]
            strengths = nufft_strengths(pack_padded(block, n_pad), factor, fft)
            plan = self._plan(n, angles, n_pad, strengths.shape[0])
            images = plan.execute(strengths if strengths.shape[0] > 1 else strengths[0])
            images = images.reshape(strengths.shape[0], n, n)
            out[r0 : r0 + block.shape[0]] = unpack_pairs(images, block.shape[0])
        return out

    def bytes_per_row(self, n_angles: int, n_cols: int) -> int:
        n_pad = padded_length(n_cols, self.pad)
        sino = 4 * n_angles * n_cols  # float32 input
        spectra = 8 * n_angles * n_pad  # complex64 per packed pair, half a row each, x2 for a copy
        image = 4 * n_cols * n_cols + 8 * n_cols * n_cols // 2  # output + complex result share
        grid = 8 * int(np.ceil(self.upsampfac * n_cols)) ** 2 // 2  # finufft's fine grid (batched)
        return int(sino + spectra + image + grid)
