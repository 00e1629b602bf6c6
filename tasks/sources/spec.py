"""What a scan is, as small picklable descriptors: files, datasets and frame indices.

Every source (Data Exchange, NeXus, a Bluesky run) resolves to a ``ScanSpec``. Only this
descriptor travels to Dask workers; each worker opens the files and reads its own rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FrameSet:
    """Frames stored along axis 0 of one HDF5 dataset (frames, rows, columns).

    ``indices`` are positions along axis 0, increasing; ``None`` means every frame.
    """

    path: str
    dataset: str
    indices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ScanSpec:
    """A tomography scan: projections, flat and dark fields, and one angle per projection."""

    label: str  # what the user knows it by: a file path or a run uid
    projections: tuple[FrameSet, ...]
    flats: tuple[FrameSet, ...]
    darks: tuple[FrameSet, ...]
    angles_deg: tuple[float, ...]  # one per projection, in acquisition order
    n_rows: int
    n_cols: int
    dtype: str
    identity: str | None = None  # run uid or file checksum ("blake3:...")
    pixel_size_um: float | None = None
    # When each flat frame was taken (in the order read), in projection indices: -0.5 before
    # the first projection, k - 0.5 just before projection k; None when not known (then only
    # frame indices in a shared stack can place flats before and after the projections).
    flat_positions: tuple[float, ...] | None = None
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def n_angles(self) -> int:
        return len(self.angles_deg)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(angles, rows, columns) of the projections."""
        return (self.n_angles, self.n_rows, self.n_cols)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScanSpec:
        def frames(items):
            return tuple(
                FrameSet(f["path"], f["dataset"], _indices(f["indices"]))
                for f in items
            )

        return cls(
            label=d["label"],
            projections=frames(d["projections"]),
            flats=frames(d["flats"]),
            darks=frames(d["darks"]),
            angles_deg=tuple(d["angles_deg"]),
            n_rows=d["n_rows"],
            n_cols=d["n_cols"],
            dtype=d["dtype"],
            identity=d.get("identity"),
            pixel_size_um=d.get("pixel_size_um"),
            flat_positions=_positions(d.get("flat_positions")),
            extra=d.get("extra", {}),
        )


def _indices(value) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


def _positions(value) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)
