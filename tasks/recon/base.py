"""What every reconstruction backend provides, and the checks on its inputs."""

from __future__ import annotations

import numpy as np
from tomopipe.tasks.preprocess._validate import require_finite
from tomopipe.tasks.recon.filters import check_filter

from tomopipe.errors import InputError

SOURCE = "reconstruction input"


def check_inputs(sinos, angles_rad, center) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate (rows, angles, cols) sinograms, their angles and the centre; return clean arrays."""
    sinos = np.asarray(sinos)
    if sinos.ndim != 3:
        raise InputError(SOURCE, "expected sinograms shaped (rows, angles, cols), "
                         f"got a {sinos.ndim}-D array of shape {sinos.shape}", "sinograms")
    if min(sinos.shape) < 1 or sinos.shape[2] < 2:
        raise InputError(SOURCE, f"empty or too narrow sinograms, shape {sinos.shape}", "sinograms")
    angles = np.asarray(angles_rad, dtype=np.float64).ravel()
    if angles.size != sinos.shape[1]:
        raise InputError(SOURCE, f"{angles.size} angles given for {sinos.shape[1]} projections "
                         "(sinogram axis 1)", "angles")
    if not np.all(np.isfinite(angles)):
        raise InputError(SOURCE, "angles contain NaN or infinity", "angles")
    require_finite(sinos, "sinograms")  # without a slab-sized boolean temporary
    try:
        center = float(center)
    except (TypeError, ValueError):
        raise InputError(SOURCE, f"centre must be a number of pixels, got {center!r}",
                         "center") from None
    if not np.isfinite(center):
        raise InputError(SOURCE, f"centre must be finite, got {center!r}", "center")
    return np.ascontiguousarray(sinos, dtype=np.float32), angles, center


class Backend:
    """A reconstruction backend. Subclasses set name, device, algorithms and implement _run."""

    name = "base"
    device = "cpu"
    algorithms: tuple[str, ...] = ()

    def available(self) -> bool:
        return True

    def reconstruct(self, sinos, angles_rad, center=None, *, algorithm="fbp", filter_name="shepp",
                    iterations=100) -> np.ndarray:
        """(rows, angles, cols) sinograms -> (rows, n, n) float32 attenuation/pixel, n = cols."""
        if algorithm not in self.algorithms:
            raise ValueError(f"algorithm: backend {self.name!r} does not do {algorithm!r}; "
                             f"it does {', '.join(self.algorithms)}")
        if center is None:
            center = np.asarray(sinos).shape[-1] / 2
        sinos, angles, center = check_inputs(sinos, angles_rad, center)
        check_filter(filter_name)
        if int(iterations) < 1:
            raise ValueError(f"iterations: need at least 1, got {iterations}")
        return self._run(sinos, angles, center, algorithm, filter_name, int(iterations))

    def _run(self, sinos, angles, center, algorithm, filter_name, iterations) -> np.ndarray:
        raise NotImplementedError

    def bytes_per_row(self, n_angles: int, n_cols: int) -> int:
        """Working memory per sinogram row (input, output and temporaries), in bytes."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.device}>"
