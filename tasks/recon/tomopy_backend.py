"""TomoPy's gridrec (FBP) and SIRT, used only where `import tomopy` works (conda installs)."""

from __future__ import annotations

import numpy as np
from tomopipe.tasks.recon.base import Backend


class TomopyBackend(Backend):
    name = "tomopy"
    device = "cpu"
    algorithms = ("fbp", "sirt")

    def __init__(self, nthreads: int | None = None):
        self.nthreads = nthreads

    def available(self) -> bool:
        try:
            import tomopy  # noqa: F401
        except ImportError:
            return False
        return True

    def _run(self, sinos, angles, center, algorithm, filter_name, iterations):
        import tomopy

        rows, _, n = sinos.shape
        kwargs = {"sinogram_order": True, "center": np.full(rows, center, np.float32),
                  "ncore": self.nthreads}
        if algorithm == "fbp":
            kwargs.update(algorithm="gridrec", filter_name=filter_name)
        else:
            kwargs.update(algorithm="sirt", num_iter=iterations)
        rec = tomopy.recon(sinos, angles, **kwargs)
        return np.ascontiguousarray(rec[:, :n, :n], dtype=np.float32)

    def bytes_per_row(self, n_angles: int, n_cols: int) -> int:
        # input copy, gridrec's padded complex grid (~2n x 2n per thread), output
        return int(4 * n_angles * n_cols * 2 + 8 * (2 * n_cols) ** 2 + 4 * n_cols * n_cols)
