"""An analytic 3-D phantom: exact parallel-beam line integrals and a matching voxel volume.

Geometry (shared with every reconstruction backend):
- image pixel (iy, ix) of an n x n slice has its centre at x = ix - n//2, y = iy - n//2
  (pixel units), so the rotation axis sits at pixel (n//2, n//2), the middle of the output image;
- at angle theta a ray meets the detector at u = x cos(theta) + y sin(theta), and detector column j
  has its centre at u = j - center (TomoPy's counting, default center = n/2);
- row r of the detector and of the volume samples the height t = (r + 0.5) / n_rows in [0, 1].

Features are additive ellipses in each slice (a cylinder or an ellipsoid along z); ``value`` is the
attenuation per pixel added inside. Projections are exact integrals averaged over sub-rays across
each detector pixel; the volume is rasterised with supersampling. Neither is derived from the other,
so tests that reconstruct the projections and compare with the volume avoid the inverse crime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Feature:
    """One ellipse per slice. Lengths: fractions of the slice width n; z: fractions of the rows."""

    name: str
    value: float  # attenuation per pixel added inside (negative to carve out)
    cx: float = 0.0  # centre, fraction of n from the rotation axis (x along columns)
    cy: float = 0.0  # (y along image rows)
    a: float = 0.1  # semi-axis along the feature's own x, fraction of n
    b: float = 0.1
    phi: float = 0.0  # rotation of the ellipse, radians
    z0: float = 0.0  # the feature occupies heights z0 <= t < z1 (fractions of the rows)
    z1: float = 1.0
    shape: str = "cylinder"  # "cylinder": same ellipse at every height; "ellipsoid": sections

    def section(self, t: float) -> tuple[float, float] | None:
        """Semi-axes (fractions of n) of the cross-section at height t, or None outside it."""
        if not (self.z0 <= t < self.z1):
            return None
        if self.shape == "cylinder":
            return self.a, self.b
        half = 0.5 * (self.z1 - self.z0)
        s = 1.0 - ((t - 0.5 * (self.z0 + self.z1)) / half) ** 2
        if s <= 0:
            return None
        return self.a * np.sqrt(s), self.b * np.sqrt(s)


# Materials, as absolute attenuation per pixel (sized for n = 512: the longest ray integrates to
# about 2, i.e. ~14 % transmission). Smaller n gives weaker, larger n stronger absorption; use
# scale_features to keep the transmission realistic at another size.
BODY_MU = 0.0040
MATERIALS = {"body": BODY_MU, "bone": 0.0080, "tissue": 0.0055, "dense": 0.0120, "air": 0.0}

DEFAULT_FEATURES: tuple[Feature, ...] = (
    Feature("body", BODY_MU, a=0.40, b=0.36),
    Feature("bone", MATERIALS["bone"] - BODY_MU, cx=-0.15, cy=-0.10, a=0.08, b=0.08,
            z0=0.0, z1=0.75),
    Feature("tissue", MATERIALS["tissue"] - BODY_MU, cx=0.17, cy=-0.05, a=0.10, b=0.06, phi=0.5,
            z0=0.2, z1=1.0),
    Feature("dense", MATERIALS["dense"] - BODY_MU, cx=0.05, cy=0.20, a=0.05, b=0.05, z0=0.1,
            z1=0.9, shape="ellipsoid"),
    Feature("air", MATERIALS["air"] - BODY_MU, cx=-0.12, cy=0.18, a=0.07, b=0.045, phi=-0.3,
            z0=0.3, z1=1.0),
)


def unit_disk(radius: float = 0.3) -> tuple[Feature, ...]:
    """A single disk (cylinder over all rows) of attenuation 1.0 per pixel."""
    return (Feature("disk", 1.0, a=radius, b=radius),)


def scale_features(features: Sequence[Feature], factor: float) -> tuple[Feature, ...]:
    """The same geometry with every attenuation multiplied by ``factor``."""
    return tuple(replace(f, value=f.value * factor) for f in features)


def _row_heights(n_rows: int) -> np.ndarray:
    return (np.arange(n_rows) + 0.5) / n_rows


def _check_size(n: int, n_rows: int) -> None:
    if int(n) < 2 or int(n_rows) < 1:
        raise ValueError(f"phantom size: need n >= 2 and n_rows >= 1, got n={n}, n_rows={n_rows}")


def _slice_key(features: Sequence[Feature], t: float) -> tuple:
    return tuple((i, f.section(t)) for i, f in enumerate(features) if f.section(t) is not None)


def phantom_volume(
    n: int, n_rows: int, features: Sequence[Feature] | None = None, supersample: int = 4
) -> np.ndarray:
    """(n_rows, n, n) float32 attenuation per pixel, each averaged over supersample^2 points."""
    _check_size(n, n_rows)
    features = DEFAULT_FEATURES if features is None else tuple(features)
    ss = max(1, int(supersample))
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    coords = (np.arange(n)[:, None] + sub[None, :]).ravel() - n // 2  # pixel-centre grid, x and y
    vol = np.zeros((n_rows, n, n), np.float32)
    cache: dict[tuple, np.ndarray] = {}  # rows with the same sections share one raster
    for r, t in enumerate(_row_heights(n_rows)):
        key = _slice_key(features, t)
        if key not in cache:
            img = np.zeros((n, n), np.float64)
            for i, (a, b) in key:
                _add_ellipse(img, coords, n, ss, features[i], a, b)
            cache[key] = img.astype(np.float32)
        vol[r] = cache[key]
    return vol


def _add_ellipse(img, coords, n, ss, f: Feature, a: float, b: float) -> None:
    x0, y0, a, b = f.cx * n, f.cy * n, a * n, b * n
    reach = max(a, b) + 1.0  # bounding box in pixels: only rasterise what the ellipse can touch
    lo_x, hi_x = _pixel_span(x0, reach, n)
    lo_y, hi_y = _pixel_span(y0, reach, n)
    if lo_x >= hi_x or lo_y >= hi_y:
        return
    xs = coords[lo_x * ss : hi_x * ss] - x0
    ys = coords[lo_y * ss : hi_y * ss] - y0
    c, s = np.cos(f.phi), np.sin(f.phi)
    xr = xs[None, :] * c + ys[:, None] * s
    yr = -xs[None, :] * s + ys[:, None] * c
    inside = (xr / a) ** 2 + (yr / b) ** 2 <= 1.0
    cover = inside.reshape(hi_y - lo_y, ss, hi_x - lo_x, ss).mean(axis=(1, 3))
    img[lo_y:hi_y, lo_x:hi_x] += f.value * cover


def _pixel_span(centre: float, reach: float, n: int) -> tuple[int, int]:
    lo = int(np.floor(centre - reach + n // 2))
    hi = int(np.ceil(centre + reach + n // 2)) + 1
    return max(lo, 0), min(hi, n)


# Elements of one block of sinograms (rows x angles x sub-rays): a frame at a time, every row
# of a detector is one block; a whole scan goes a few rows at a time.
_BLOCK_ELEMENTS = 1 << 22


def phantom_projections(
    n: int,
    n_rows: int,
    angles_rad: Sequence[float] | np.ndarray,
    center: float | None = None,
    features: Sequence[Feature] | None = None,
    subrays: int = 4,
) -> np.ndarray:
    """(angles, n_rows, n) float32 exact line integrals, rotation axis at column ``center``.

    Each detector pixel averages ``subrays`` exact integrals spread across its width.
    """
    return projector(n, n_rows, center=center, features=features, subrays=subrays)(angles_rad)


def projector(
    n: int,
    n_rows: int,
    *,
    center: float | None = None,
    features: Sequence[Feature] | None = None,
    subrays: int = 4,
) -> Callable[[Sequence[float] | np.ndarray], np.ndarray]:
    """``phantom_projections`` with everything but the angles worked out once: a simulated
    camera calls it for each frame. Distinct rows are computed together in blocks (one feature
    at a time over all the rows it crosses), so a frame costs a few array operations per
    feature, not per row."""
    _check_size(n, n_rows)
    features = DEFAULT_FEATURES if features is None else tuple(features)
    center = n / 2 if center is None else float(center)
    k = max(1, int(subrays))
    offsets = (np.arange(k) + 0.5) / k - 0.5
    u = (np.arange(n)[:, None] + offsets[None, :]).ravel() - center  # (n * k,)
    # semi-axes (pixels) of each feature's section in each row; 0 where the row misses it
    axes = np.zeros((n_rows, len(features), 2))
    for r, t in enumerate(_row_heights(n_rows)):
        for i, f in enumerate(features):
            section = f.section(t)
            if section is not None:
                axes[r, i] = section[0] * n, section[1] * n
    # rows crossing the same sections (a cylinder's) have the same sinogram: compute each once
    unique, which = np.unique(axes.reshape(n_rows, -1), axis=0, return_inverse=True)
    unique = unique.reshape(-1, len(features), 2)
    which = which.ravel()
    present = unique[:, :, 0] > 0  # (distinct rows, features)

    def project(angles_rad: Sequence[float] | np.ndarray) -> np.ndarray:
        theta = np.asarray(angles_rad, dtype=np.float64).ravel()
        sinos = np.empty((unique.shape[0], theta.size, n), np.float32)
        step = max(1, _BLOCK_ELEMENTS // max(1, theta.size * u.size))
        for r0 in range(0, unique.shape[0], step):
            block, rows_in = unique[r0:r0 + step], present[r0:r0 + step]
            sino = np.zeros((block.shape[0], theta.size, u.size))
            for i, f in enumerate(features):
                rows = rows_in[:, i]
                if rows.all():
                    sino += _ellipse_integrals(f, block[:, i, 0], block[:, i, 1], n, theta, u)
                elif rows.any():
                    sino[rows] += _ellipse_integrals(f, block[rows, i, 0], block[rows, i, 1], n,
                                                     theta, u)
            sinos[r0:r0 + block.shape[0]] = sino.reshape(block.shape[0], theta.size, n,
                                                         k).mean(axis=3)
        out = np.empty((theta.size, n_rows, n), np.float32)
        for r, j in enumerate(which):
            out[:, r, :] = sinos[j]
        return out

    return project


def _ellipse_integrals(f: Feature, a: np.ndarray, b: np.ndarray, n: int, theta, u) -> np.ndarray:
    """Exact integrals of value * indicator(ellipse) along the rays (theta, u), for ellipses of
    semi-axes ``a[m]``, ``b[m]`` (pixels) at the feature's centre: (m, angles, len(u))."""
    a = np.asarray(a, dtype=np.float64)[:, None]
    b = np.asarray(b, dtype=np.float64)[:, None]
    x0, y0 = f.cx * n, f.cy * n
    shift = x0 * np.cos(theta) + y0 * np.sin(theta)  # where the ellipse centre projects
    alpha = theta - f.phi
    s2 = (a * np.cos(alpha)) ** 2 + (b * np.sin(alpha)) ** 2  # squared half-width of the shadow
    d = u[None, :] - shift[:, None]
    inside = np.clip(s2[:, :, None] - d**2, 0.0, None)
    return f.value * 2.0 * a[:, :, None] * b[:, :, None] * np.sqrt(inside) / s2[:, :, None]


def rescale_geometry(features: Sequence[Feature], n_from: int, n_to: int) -> tuple[Feature, ...]:
    """The same objects (in pixels) described for slices ``n_to`` wide instead of ``n_from``:
    positions and semi-axes, fractions of the width, are multiplied by n_from / n_to."""
    k = float(n_from) / float(n_to)
    return tuple(replace(f, cx=f.cx * k, cy=f.cy * k, a=f.a * k, b=f.b * k) for f in features)


def fresnel_intensity(mu_t: np.ndarray, delta_beta: float, fresnel_px2: float) -> np.ndarray:
    """Near-field intensity behind a homogeneous object, by exact Fresnel propagation.

    mu_t: (rows, cols) attenuation line integrals (the projected mu * thickness) of an object of
    one material with refractive index decrement delta and absorption index beta; the exit wave
    is exp(-mu_t / 2) * exp(-i (delta/beta) mu_t / 2) (phase k delta t, with mu = 2 k beta).
    fresnel_px2: lambda * z / pixel_size^2 (propagation distance z). The wave is propagated by
    multiplying its spectrum by exp(-i pi lambda z |f|^2); the field must fade to the open beam
    before its edges (the transform is periodic). Returns I / I0, float64.
    """
    wave = np.exp(-0.5 * mu_t * (1 + 1j * float(delta_beta)))
    fy = np.fft.fftfreq(mu_t.shape[0])[:, None]
    fx = np.fft.fftfreq(mu_t.shape[1])[None, :]
    kernel = np.exp(-1j * np.pi * float(fresnel_px2) * (fx**2 + fy**2))
    return np.abs(np.fft.ifft2(np.fft.fft2(wave) * kernel)) ** 2
