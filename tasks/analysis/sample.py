"""Where the sample is in a reconstructed volume: its bounding box, its offset from the rotation
axis and the rows it occupies. Plain NumPy and SciPy on a (z, y, x) array.

Geometry (tasks/phantom.py, shared by every backend): voxel (iy, ix) of an n x n slice sits at
x = ix - n//2, y = iy - n//2 pixels from the rotation axis. A sample off the axis by (dx, dy)
pixels is centred at voxel (n//2 + dy, n//2 + dx).

How the sample is told from the background: each slice is smoothed (Gaussian, ``smooth_px``)
and the volume split in two by Otsu's threshold; specks are removed (binary opening) and the
components at least a tenth the size of the largest kept (FBP streaks are thin). The sample is
*found* when it stands out from the background by ``min_contrast`` times the background's
spread (the two classes' means apart, in the lower class's standard deviations: pure noise
split by Otsu gives about 2.7) and holds at least ``min_voxels`` voxels; otherwise ``reason``
says why not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

MIN_CONTRAST = 4.0  # foreground minus background, in background standard deviations
MIN_VOXELS = 20
ROW_FRACTION = 0.1  # a row holds the sample when its area is at least this share of the largest


@dataclass(frozen=True)
class SampleBox:
    """The sample in a volume of ``shape`` (z, y, x), in voxels of that volume.

    box: (z0, z1, y0, y1, x0, x1), stop-exclusive. offset_px: (dx, dy) of the box centre from
    the rotation axis (x along columns, y along image rows). rows: (z0, z1) the rows whose
    cross-section holds the sample. contrast: (sample - background) / background spread.
    found False: ``reason`` says why, and box, offset and rows are None.
    """

    found: bool
    shape: tuple[int, int, int]
    contrast: float
    reason: str = ""
    box: tuple[int, int, int, int, int, int] | None = None
    offset_px: tuple[float, float] | None = None
    rows: tuple[int, int] | None = None
    voxels: int = 0
    threshold: float = field(default=float("nan"))

    def to_dict(self) -> dict:
        return asdict(self)


def _check(volume) -> np.ndarray:
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or min(vol.shape) < 1 or vol.shape[1] < 4 or vol.shape[2] < 4:
        raise ValueError(f"volume: expected a (z, y, x) array of slices at least 4 x 4, "
                         f"got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("volume: holds NaN or infinite values")
    return vol


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the value that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m / w0
        mu1 = (m[-1] - m) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def find_sample(volume, *, smooth_px: float = 1.0, min_contrast: float = MIN_CONTRAST,
                min_voxels: int = MIN_VOXELS, row_fraction: float = ROW_FRACTION) -> SampleBox:
    """The sample's bounding box, offset from the axis and rows in ``volume`` (z, y, x)."""
    vol = _check(volume)
    shape = tuple(int(s) for s in vol.shape)
    smooth = ndimage.gaussian_filter(vol, sigma=(0, smooth_px, smooth_px)) if smooth_px else vol
    if float(smooth.max()) <= float(smooth.min()):
        return SampleBox(False, shape, 0.0, reason="no sample: the volume is uniform")
    threshold = otsu_threshold(smooth)
    mask = smooth > threshold
    below = smooth[~mask]
    spread = float(below.std()) if below.size > 1 else 0.0
    contrast = (float(smooth[mask].mean()) - float(below.mean())) / max(spread, 1e-12)
    if not np.isfinite(contrast) or contrast < min_contrast:
        return SampleBox(False, shape, float(contrast), reason=(
            f"no sample: what stands out is {contrast:.1f} background spreads above the "
            f"background, fewer than {min_contrast:g}"), threshold=threshold)
    mask = ndimage.binary_opening(mask, structure=np.ones((1, 3, 3), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return SampleBox(False, shape, float(contrast), reason="no sample: nothing is left "
                         "above the threshold once single-voxel specks are removed",
                         threshold=threshold)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    # the sample: every component at least a tenth the size of the largest (streaks are small)
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max()))
    voxels = int(keep.sum())
    if voxels < min_voxels:
        return SampleBox(False, shape, float(contrast), reason=(
            f"no sample: only {voxels} voxels stand out (at least {min_voxels} needed)"),
            voxels=voxels, threshold=threshold)
    area = keep.sum(axis=(1, 2))
    rows = np.flatnonzero(area >= row_fraction * area.max())
    ys = np.flatnonzero(keep.any(axis=(0, 2)))
    xs = np.flatnonzero(keep.any(axis=(0, 1)))
    z0, z1 = int(rows[0]), int(rows[-1]) + 1
    box = (z0, z1, int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
    ny, nx = shape[1], shape[2]
    dx = 0.5 * (box[4] + box[5] - 1) - nx // 2
    dy = 0.5 * (box[2] + box[3] - 1) - ny // 2
    return SampleBox(True, shape, float(contrast), box=box, offset_px=(float(dx), float(dy)),
                     rows=(z0, z1), voxels=voxels, threshold=threshold)


def scale_box(found: SampleBox, factor: int, full_shape: tuple[int, int, int]) -> SampleBox:
    """A box measured on a pyramid level ``factor`` times coarser in y and x (z is not binned
    by the pyramid... unless it is: ``full_shape`` says), in the full volume's voxels."""
    if not found.found or factor == 1:
        return found
    fz = full_shape[0] / found.shape[0]
    fy, fx = full_shape[1] / found.shape[1], full_shape[2] / found.shape[2]
    z0, z1, y0, y1, x0, x1 = found.box
    box = (int(round(z0 * fz)), int(round(z1 * fz)), int(round(y0 * fy)), int(round(y1 * fy)),
           int(round(x0 * fx)), int(round(x1 * fx)))
    dx, dy = found.offset_px
    return SampleBox(True, tuple(full_shape), found.contrast, box=box,
                     offset_px=(dx * fx, dy * fy), rows=(box[0], box[1]),
                     voxels=int(found.voxels * fz * fy * fx), threshold=found.threshold)
