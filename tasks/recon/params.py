"""Reconstruction parameters: one frozen record, hashed into the output key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass

from tomopipe.errors import ConfigError

# The one list of each choice: the filters, stripe removal and normalisation import these.
FILTERS = ("ramlak", "shepp", "cosine", "hann", "parzen")
ALGORITHMS = ("fbp", "sirt", "cgls")
ITERATIVE = ("sirt", "cgls")
RING_METHODS = ("none", "fw", "sort")
FLAT_METHODS = ("mean", "median")
PHASE_METHODS = ("none", "paganin")
# Paganin's three physical parameters: all needed with phase="paganin", none without.
PHASE_FIELDS = ("energy_kev", "distance_mm", "delta_beta")
# Fields added after volumes were first published: they enter the key only when set, so the
# keys of volumes made without them stay the same.
LATER_FIELDS = {"phase": "none", "energy_kev": None, "distance_mm": None, "delta_beta": None,
                "flats": None, "darks": None}


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
    iterations: int = 100  # of SIRT or CGLS
    pixel_size_um: float | None = None  # overrides the source's
    phase: str = "none"  # none | paganin (single-distance, on the normalised projections)
    energy_kev: float | None = None  # photon energy, keV (Paganin)
    distance_mm: float | None = None  # sample-to-detector distance, mm (Paganin)
    delta_beta: float | None = None  # delta / beta of the sample's material (Paganin)
    # Flat and dark fields from other files: "FILE[:DATASET]" each (the first taken before the
    # projections, the last after: flat-field drift is then interpolated); None: the source's.
    flats: tuple[str, ...] | None = None
    darks: tuple[str, ...] | None = None

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
        if not (isinstance(self.iterations, numbers.Integral)
                and not isinstance(self.iterations, bool) and self.iterations >= 1):
            self._refuse("iterations", "a whole number of at least 1")
        if self.phase not in PHASE_METHODS:
            self._refuse("phase", f"one of {', '.join(PHASE_METHODS)}")
        for name in PHASE_FIELDS:
            value = getattr(self, name)
            if value is not None and not (_finite_number(value) and value > 0):
                self._refuse(name, "a positive number, or unset")
            if self.phase == "paganin" and value is None:
                self._refuse(name, "a positive number with phase 'paganin' (energy_kev, "
                             "distance_mm and delta_beta are all needed: --energy KEV "
                             "--distance MM --delta-beta RATIO)")
            if self.phase == "none" and value is not None:
                self._refuse(name, "unset without phase retrieval (set phase: paganin, "
                             "--phase paganin)")
        for name in ("flats", "darks"):
            value = getattr(self, name)
            if isinstance(value, str):  # one file given as a plain string (config.yaml, the UI)
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            value = getattr(self, name)
            if value is not None and not (
                    1 <= len(value) <= 2
                    and all(isinstance(v, str) and v.split(":", 1)[0].strip() for v in value)):
                self._refuse(name, '"FILE[:DATASET]", or a list of one or two of them '
                             "(taken before and after the projections)")

    def _refuse(self, name: str, expected: str):
        raise ConfigError(f"reconstruction parameter {name}: expected {expected}, "
                          f"got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = list(self.rows) if self.rows else None
        for name in ("flats", "darks"):
            d[name] = list(d[name]) if d[name] else None
        return d

    def key_dict(self) -> dict:
        """What the output key hashes: every parameter, except later ones left at their
        defaults (so volumes published before they existed keep their key)."""
        d = self.to_dict()
        d["sirt_iterations"] = d.pop("iterations")  # its name when the first keys were made
        for name, default in LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @property
    def iterative(self) -> bool:
        return self.algorithm in ITERATIVE


def _finite_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def output_key(identity: str, params: ReconParams, code_version: str) -> str:
    """The key of a volume: source identity, every parameter and the code version."""
    blob = json.dumps(
        {"source": identity, "params": params.key_dict(), "version": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def recon_params(settings, overrides: dict | None = None) -> ReconParams:
    """ReconParams from the home's defaults (``settings.recon`` of a ``config.Settings``; the
    science layer does not import the configuration) and the flow's overrides."""
    fields = {f.name for f in dataclasses.fields(ReconParams)}
    given = {**settings.recon, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = set(given) - fields
    if unknown:
        raise ConfigError(f"reconstruction parameters {sorted(unknown)} are not known; "
                          f"known: {sorted(fields)}")
    if isinstance(given.get("rows"), list):
        given["rows"] = tuple(given["rows"])
    return ReconParams(**given)
