"""What the simulated camera sees: counts from line integrals, a non-uniform beam and a dark offset.

Plain NumPy. A frame is ``Poisson(flat * exp(-line_integral)) + dark`` as unsigned 16-bit counts,
so normalising with the flat and dark fields and taking -log gives back the line integrals (up to
noise): the reconstruction of a simulated scan can be checked against the phantom it came from.
"""

from __future__ import annotations

import numpy as np

FULL_WELL = 65535  # uint16


def flat_field(rows: int, cols: int, *, peak_counts: float = 20000.0, seed: int = 7) -> np.ndarray:
    """(rows, cols) float64 expected open-beam counts: a bent, drooping beam with pixel gain noise.

    The beam falls to ~70 % of its peak at the edges (a Gaussian vertical profile and a tilted
    horizontal one), and each pixel has a fixed gain within about +-2 % (scintillator grain), so a
    scan normalised without its flat field shows it.
    """
    y = (np.arange(rows) + 0.5) / rows - 0.5
    x = (np.arange(cols) + 0.5) / cols - 0.5
    vertical = np.exp(-((y / 0.6) ** 2))
    horizontal = (1.0 - 0.25 * (2 * x) ** 2) * (1.0 + 0.08 * x)
    gain = 1.0 + 0.02 * np.random.default_rng(seed).standard_normal((rows, cols))
    return peak_counts * vertical[:, None] * horizontal[None, :] * gain


def dark_offset(rows: int, cols: int, *, level: float = 100.0, seed: int = 11) -> np.ndarray:
    """(rows, cols) float64 expected counts with the shutter closed: offset with column banding."""
    rng = np.random.default_rng(seed)
    columns = rng.normal(0.0, 3.0, cols)  # readout amplifiers differ per column
    return level + columns[None, :] + rng.normal(0.0, 1.0, (rows, cols))


def counts(
    line_integrals: np.ndarray | None,
    flat: np.ndarray,
    dark: np.ndarray,
    rng: np.random.Generator,
    *,
    read_noise: float = 2.0,
) -> np.ndarray:
    """One uint16 frame: photon (Poisson) noise on the transmitted beam, plus the dark offset.

    ``line_integrals`` None means the shutter is closed (a dark frame); zeros mean an open beam
    with no sample (a flat frame).
    """
    if line_integrals is None:
        photons = np.zeros_like(flat)
    else:
        photons = rng.poisson(flat * np.exp(-np.asarray(line_integrals, dtype=np.float64)))
    signal = photons + dark + rng.normal(0.0, read_noise, flat.shape)
    return np.clip(np.rint(signal), 0, FULL_WELL).astype(np.uint16)
