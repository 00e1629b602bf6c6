"""Reconstruction parameters: one frozen record, hashed into the output key."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass

from tomopipe.errors import ConfigError

# The one list of each choice: the filters, stripe removal and normalisation import these.
FILTERS = ("ramlak", "shepp", "cosine", "hann", "parzen")
ALGORITHMS = ("fbp", "sirt")
RING_METHODS = ("none", "fw", "sort")
FLAT_METHODS = ("mean", "median")


@dataclass(frozen=True)
class ReconParams:
    algorithm: str = "fbp"
    backend: str = "auto"  # auto | fourier | astra | tomopy | gpu-fourier
    filter_name: str = "shepp"
    center: float | str = "auto"  # a pixel index along the detector row (0-based), or "auto"
    rows: tuple[int, int] | None = None  # detector rows [start, stop); None: all
    rings: str = "none"
    zingers: float | None = None  # threshold in normalised intensity; None: off
    flat_method: str = "mean"  # mean | median
    sirt_iterations: int = 100
    pixel_size_um: float | None = None  # overrides the source's

    def __post_init__(self):
        """Refuse bad values here, where they are given (config.yaml, a flow's parameters),
        rather than on a Dask worker after the output has been created."""
        for name, choices in (("algorithm", ALGORITHMS), ("filter_name", FILTERS),
                              ("rings", RING_METHODS), ("flat_method", FLAT_METHODS)):
            if getattr(self, name) not in choices:
                self._refuse(name, f"one of {', '.join(choices)}")
        if self.center != "auto" and not _finite_number(self.center):
            self._refuse("center", '"auto" or a pixel position')
        if self.rows is not None and not (
                len(self.rows) == 2
                and all(isinstance(r, numbers.Integral) and r >= 0 for r in self.rows)
                and self.rows[0] < self.rows[1]):
            self._refuse("rows", "[start, stop) with 0 <= start < stop")
        for name in ("zingers", "pixel_size_um"):
            value = getattr(self, name)
            if value is not None and not (_finite_number(value) and value > 0):
                self._refuse(name, "a positive number, or unset")
        if not (isinstance(self.sirt_iterations, numbers.Integral) and self.sirt_iterations >= 1):
            self._refuse("sirt_iterations", "a whole number of at least 1")

    def _refuse(self, name: str, expected: str):
        raise ConfigError(f"reconstruction parameter {name}: expected {expected}, "
                          f"got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = list(self.rows) if self.rows else None
        return d


def _finite_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def output_key(identity: str, params: ReconParams, code_version: str) -> str:
    """The key of a volume: source identity, every parameter and the code version."""
    blob = json.dumps(
        {"source": identity, "params": params.to_dict(), "version": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
