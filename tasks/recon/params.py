"""Reconstruction parameters: one frozen record, hashed into the output key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

FILTERS = ("ramlak", "shepp", "cosine", "hann", "parzen")
ALGORITHMS = ("fbp", "sirt")
RING_METHODS = ("none", "fw", "sort")


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = list(self.rows) if self.rows else None
        return d


def output_key(identity: str, params: ReconParams, code_version: str) -> str:
    """The key of a volume: source identity, every parameter and the code version."""
    blob = json.dumps(
        {"source": identity, "params": params.to_dict(), "version": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
