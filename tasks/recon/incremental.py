"""Incremental filtered back-projection: the reconstruction grows as projections arrive.

Plain NumPy (and finufft), no Prefect, no Dask, no files. FBP is linear in the projections:
the slice is a sum over angles of ``weight(angle) x backproject(filter(projection))``. So each
new batch of projections, in any order (sequential, interlaced, golden-ratio), is filtered,
weighted and back-projected on its own and added to a running sum; once every angle is in,
the sum is the one-shot reconstruction of the same angles with the same weights.

The back-projection is the gridrec-class one of ``fourier.py`` (FFT of the padded projection,
filter x weight x centre phase ramp, one type-1 NUFFT from the batch's polar samples to the
image), with its pieces reused, so the final sum equals ``FourierBackend`` on the whole scan
within the NUFFT's tolerance (``eps``).

Angular weights (what the one-shot method would use):

- When the run declares its angles before the scan (``planned_angles``), every frame gets the
  weight ``fourier.angle_weights`` gives it within the whole planned set (half the gap to its
  neighbours). The final sum is then exactly the one-shot reconstruction.
- Otherwise every frame gets ``pi / n_expected`` (uniform weights over the expected number of
  frames; what ``angle_weights`` gives evenly spaced angles over 180 or 360 degrees).

A partial sum holds only the weight of the frames seen so far; ``partial_view`` rescales it by
``total weight / weight seen``, which for an interlaced or golden-ratio order, whose first
frames already spread over the half-turn, is the reconstruction from the angles seen so far.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
from tomopipe.tasks.recon.filters import filter_response, padded_length
from tomopipe.tasks.recon.fourier import (
    DEFAULT_EPS,
    DEFAULT_PAD,
    DEFAULT_UPSAMPFAC,
    angle_weights,
    nufft_strengths,
    pack_padded,
    polar_points,
    unpack_pairs,
)


def frame_weights(n_expected: int, planned_angles_rad=None) -> np.ndarray:
    """Weight of frame ``i`` (acquisition order) in the final sum, for ``n_expected`` frames.

    With the planned angles: ``angle_weights`` of the whole planned set (exact one-shot
    weights); without them: ``pi / n_expected`` each.
    """
    if planned_angles_rad is not None:
        planned = np.asarray(planned_angles_rad, dtype=np.float64).ravel()
        if planned.size != n_expected:
            raise ValueError(f"planned_angles_rad: {planned.size} angles planned for "
                             f"{n_expected} frames")
        return angle_weights(planned)
    if n_expected < 1:
        raise ValueError(f"n_expected: need at least one frame, got {n_expected}")
    return np.full(int(n_expected), math.pi / n_expected)


def batch_factor(weights, center: float, filter_name: str, n_pad: int) -> np.ndarray:
    """(frames, n_pad) complex64: weight x filter x centre phase ramp / n_pad, per frame.

    The same factor as ``fourier.spectral_weights``, with the weights given instead of taken
    from the batch's own angles (a batch is a subset of the scan's angles).
    """
    f = np.fft.fftfreq(n_pad)
    h = filter_response(filter_name, n_pad) * (f != -0.5)  # unpaired Nyquist bin zeroed
    ramp = np.exp(2j * np.pi * f * center)
    w = np.asarray(weights, dtype=np.float64).ravel()
    return ((w[:, None] / n_pad) * (h * ramp)[None, :]).astype(np.complex64)


def backproject_batch(sinos: np.ndarray, angles_rad, weights, center: float, filter_name: str,
                      *, eps: float = DEFAULT_EPS, upsampfac: float = DEFAULT_UPSAMPFAC,
                      pad: float = DEFAULT_PAD, nthreads: int | None = 1,
                      rows_per_call: int = 32) -> np.ndarray:
    """The weighted FBP contribution of one batch: (rows, frames, cols) -> (rows, n, n)."""
    import finufft

    sinos = np.ascontiguousarray(sinos, dtype=np.float32)
    rows, k, n = sinos.shape
    angles = np.asarray(angles_rad, dtype=np.float64).ravel()
    if angles.size != k:
        raise ValueError(f"angles_rad: {angles.size} angles for {k} projections")
    n_pad = padded_length(n, pad)
    factor = batch_factor(weights, center, filter_name, n_pad)
    threads = int(nthreads) if nthreads else -1
    py, px = polar_points(angles, n_pad)
    out = np.empty((rows, n, n), np.float32)
    opts = {"upsampfac": upsampfac}
    if nthreads:
        opts["nthreads"] = int(nthreads)
    plan, plan_trans = None, None
    for r0 in range(0, rows, rows_per_call):
        block = sinos[r0:r0 + rows_per_call]

        def fft(a):
            return scipy.fft.fft(a, axis=-1, workers=threads, overwrite_x=True)

        strengths = nufft_strengths(pack_padded(block, n_pad), factor, fft)
        n_trans = strengths.shape[0]
        if plan is None or plan_trans != n_trans:
            plan = finufft.Plan(1, (n, n), n_trans=n_trans, eps=eps, isign=1,
                                dtype="complex64", **opts)
            plan.setpts(py, px)
            plan_trans = n_trans
        images = plan.execute(strengths if n_trans > 1 else strengths[0])
        out[r0:r0 + block.shape[0]] = unpack_pairs(images.reshape(n_trans, n, n),
                                                   block.shape[0])
    return out


class FBPAccumulator:
    """A running FBP sum over the frames added so far, for ``rows`` slices of ``n`` x ``n``.

    ``weights``: the final weight of every frame by its index in acquisition order
    (``frame_weights``). ``add`` takes any frames, once each, in any order.
    """

    def __init__(self, rows: int, n_cols: int, center: float, weights, *,
                 filter_name: str = "shepp", eps: float = DEFAULT_EPS,
                 upsampfac: float = DEFAULT_UPSAMPFAC, pad: float = DEFAULT_PAD,
                 nthreads: int | None = 1):
        self.rows, self.n = int(rows), int(n_cols)
        self.center, self.filter_name = float(center), filter_name
        self.weights = np.asarray(weights, dtype=np.float64).ravel()
        self.total_weight = float(self.weights.sum())
        self.options = {"eps": eps, "upsampfac": upsampfac, "pad": pad, "nthreads": nthreads}
        self.sum = np.zeros((self.rows, self.n, self.n), np.float32)
        self.seen = np.zeros(self.weights.size, bool)
        self.weight_in = 0.0

    @staticmethod
    def bytes_needed(rows: int, n_cols: int) -> int:
        """The running sum's own memory (float32 slices)."""
        return 4 * int(rows) * int(n_cols) ** 2

    @property
    def frames_in(self) -> int:
        return int(self.seen.sum())

    @property
    def fraction(self) -> float:
        """The share of the final weight held so far (the fraction of the angles, weighted)."""
        return self.weight_in / self.total_weight if self.total_weight else 0.0

    def add(self, sinos: np.ndarray, angles_rad, frame_indices) -> None:
        """Add frames ``frame_indices`` (their sinograms (rows, frames, cols) and angles)."""
        idx = np.asarray(frame_indices, dtype=np.int64).ravel()
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.weights.size:
            raise ValueError(f"frame_indices: frames {idx.min()}..{idx.max()} outside the "
                             f"{self.weights.size} expected")
        if np.any(self.seen[idx]) or np.unique(idx).size != idx.size:
            raise ValueError("frame_indices: a frame was added twice")
        if sinos.shape[0] != self.rows or sinos.shape[2] != self.n:
            raise ValueError(f"sinos: shape {sinos.shape} does not match {self.rows} rows of "
                             f"{self.n} columns")
        w = self.weights[idx]
        self.sum += backproject_batch(sinos, angles_rad, w, self.center, self.filter_name,
                                      **self.options)
        self.seen[idx] = True
        self.weight_in += float(w.sum())

    def partial_view(self, rows: slice | int | None = None) -> np.ndarray:
        """The running sum rescaled to the final weight: the reconstruction from the frames
        seen so far (the final one once all are in)."""
        data = self.sum if rows is None else self.sum[rows]
        if self.weight_in <= 0:
            return np.zeros_like(data)
        return data * np.float32(self.total_weight / self.weight_in)


def correlation(a, b) -> float:
    """Pearson correlation of two images (1 for identical up to scale and offset; 0 when
    either is constant): how much a partial reconstruction still changes between updates."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0
