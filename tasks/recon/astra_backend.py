"""astra-toolbox backends: CPU FBP, SIRT and CGLS (`linear` projector); CUDA variants when a GPU
works. SIRT and CGLS start from zero and run the given number of iterations.

Geometry is made to match the phantom and the Fourier backend: pixel (iy, ix) centred at
(x, y) = (ix - n//2, iy - n//2); astra's image rows run with decreasing y, so results are flipped.
astra's CPU FBP takes no parallel_vec geometry, so the sinogram is shifted (in Fourier space,
zero-padded) to bring column `center` onto astra's detector centre (n - 1) / 2.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from tomopipe.tasks.recon.base import Backend
from tomopipe.tasks.recon.filters import ASTRA_FILTER_NAMES, padded_length


def shift_columns(sinos: np.ndarray, shift: float) -> np.ndarray:
    """Move sinogram content by ``shift`` columns (positive: to higher indices), float32."""
    if abs(shift) < 1e-9:
        return np.ascontiguousarray(sinos, dtype=np.float32)
    n = sinos.shape[-1]
    n_pad = padded_length(n, 2.0)
    spec = scipy.fft.rfft(sinos, n=n_pad, axis=-1)
    f = np.fft.rfftfreq(n_pad)
    spec *= np.exp(-2j * np.pi * f * shift)
    out = scipy.fft.irfft(spec, n=n_pad, axis=-1)[..., :n]
    return np.ascontiguousarray(out, dtype=np.float32)


# Where an NVIDIA driver shows itself (Linux; WSL2). Without one, astra need not be imported
# (0.7 s) to learn there is no CUDA: that import sat on every `tomopipe recon`'s critical path.
_NVIDIA_DRIVER = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")


def nvidia_driver_present() -> bool:
    import os

    return any(os.path.exists(p) for p in _NVIDIA_DRIVER)


def cuda_usable() -> bool:
    """True only when astra has CUDA and a GPU answers (FBP_CUDA fails late otherwise)."""
    if not nvidia_driver_present():
        return False
    try:
        import astra

        return bool(astra.use_cuda())
    except Exception:  # noqa: BLE001 - any failure to load or probe means no CUDA
        return False


class AstraBackend(Backend):
    """astra-toolbox FBP / SIRT / CGLS, on the CPU or (cuda=True) the GPU."""

    algorithms = ("fbp", "sirt", "cgls")

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.name = "astra-cuda" if cuda else "astra"
        self.device = "gpu" if cuda else "cpu"

    def available(self) -> bool:
        if self.cuda and not nvidia_driver_present():
            return False
        try:
            import astra  # noqa: F401
        except ImportError:
            return False
        return cuda_usable() if self.cuda else True

    def _run(self, sinos, angles, center, algorithm, filter_name, iterations):
        import astra

        rows, _, n = sinos.shape
        # Column `center` must land on astra's detector centre (n - 1) / 2.
        sinos = shift_columns(sinos, (n - 1) / 2 - center)
        m0 = -(n // 2) - 0.5
        vol_geom = astra.create_vol_geom(n, n, m0, m0 + n, m0, m0 + n)
        proj_geom = astra.create_proj_geom("parallel", 1.0, n, angles)
        projector = astra.create_projector("cuda" if self.cuda else "linear", proj_geom, vol_geom)
        sino_id = astra.data2d.create("-sino", proj_geom, 0.0)
        rec_id = astra.data2d.create("-vol", vol_geom, 0.0)
        kind = {"fbp": "FBP", "sirt": "SIRT", "cgls": "CGLS"}[algorithm]
        kind += "_CUDA" if self.cuda else ""
        out = np.empty((rows, n, n), np.float32)
        try:
            for r in range(rows):
                astra.data2d.store(sino_id, sinos[r])
                astra.data2d.store(rec_id, 0.0)
                cfg = astra.astra_dict(kind)
                cfg["ProjectorId"] = projector
                cfg["ProjectionDataId"] = sino_id
                cfg["ReconstructionDataId"] = rec_id
                if algorithm == "fbp":
                    cfg["option"] = {"FilterType": ASTRA_FILTER_NAMES[filter_name]}
                alg = astra.algorithm.create(cfg)
                try:
                    astra.algorithm.run(alg, 1 if algorithm == "fbp" else iterations)
                finally:
                    astra.algorithm.delete(alg)
                out[r] = astra.data2d.get_shared(rec_id)[::-1]  # astra rows run with -y
        finally:
            astra.data2d.delete([sino_id, rec_id])
            astra.projector.delete(projector)
        return out

    def bytes_per_row(self, n_angles: int, n_cols: int) -> int:
        n_pad = padded_length(n_cols, 2.0)
        sino = 4 * n_angles * n_cols * 2  # input + shifted copy
        shift_tmp = 16 * n_angles * (n_pad // 2 + 1)  # rfft spectrum (complex128)
        image = 4 * n_cols * n_cols * 4  # output + astra's volume (+ SIRT/CGLS temporaries)
        return int(sino + shift_tmp + image)
