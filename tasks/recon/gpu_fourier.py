"""The Fourier backend on a CUDA GPU: cupy for the preparation, cufinufft for the NUFFT.

Importing this module never needs cupy; the backend reports itself unavailable without a GPU.
The math is fourier.py's, called with xp=cupy.
"""

from __future__ import annotations

import numpy as np
from tomopipe.tasks.recon.base import Backend
from tomopipe.tasks.recon.filters import padded_length
from tomopipe.tasks.recon.fourier import (
    DEFAULT_PAD,
    nufft_strengths,
    pack_padded,
    polar_points,
    spectral_weights,
    unpack_pairs,
)


def gpu_present() -> bool:
    try:
        import cufinufft  # noqa: F401
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no cupy, no driver or no device all mean "no GPU"
        return False


class GpuFourierBackend(Backend):
    name = "gpu-fourier"
    device = "gpu"
    algorithms = ("fbp",)

    def __init__(self, eps: float = 1e-4, pad: float = DEFAULT_PAD, batch: int = 32):
        self.eps, self.pad, self.batch = eps, pad, batch

    def available(self) -> bool:
        return gpu_present()

    def _run(self, sinos, angles, center, algorithm, filter_name, iterations):
        import cufinufft
        import cupy as cp

        rows, _, n = sinos.shape
        n_pad = padded_length(n, self.pad)
        factor = spectral_weights(angles, center, filter_name, n_pad, xp=cp)
        py, px = polar_points(angles, n_pad, xp=cp)

        def fft(a):
            return cp.fft.fft(a, axis=-1, overwrite_x=True)

        out = np.empty((rows, n, n), np.float32)
        step = 2 * self.batch
        plans: dict[int, object] = {}
        for r0 in range(0, rows, step):
            block = cp.asarray(sinos[r0 : r0 + step])
            strengths = nufft_strengths(pack_padded(block, n_pad, xp=cp), factor, fft)
            k = strengths.shape[0]
            if k not in plans:
                plan = cufinufft.Plan(1, (n, n), n_trans=k, eps=self.eps, isign=1,
                                      dtype="complex64")
                plan.setpts(py, px)
                plans[k] = plan
            images = plans[k].execute(strengths if k > 1 else strengths[0]).reshape(k, n, n)
            out[r0 : r0 + block.shape[0]] = cp.asnumpy(unpack_pairs(images, block.shape[0], xp=cp))
        return out

    def bytes_per_row(self, n_angles: int, n_cols: int) -> int:
        # Host memory: input and output of the row (the device holds the batch's temporaries).
        return int(4 * n_angles * n_cols + 4 * n_cols * n_cols)

    def device_bytes_per_row(self, n_angles: int, n_cols: int) -> int:
        n_pad = padded_length(n_cols, self.pad)
        return int(4 * n_angles * n_cols + 8 * n_angles * n_pad + 8 * (2 * n_cols) ** 2 // 2
                   + 4 * n_cols * n_cols)
