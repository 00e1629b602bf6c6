"""Centre-of-rotation estimation on sinograms after minus-log.

Convention (TomoPy's): the centre is a position along the detector row in pixels, 0-based, with
column j centred at coordinate j. A feature at column x at angle theta appears at 2*c - x at
theta + 180 degrees; mirroring a row of W pixels maps x to W - 1 - x. Hence, if the mirrored
180-degree row equals the 0-degree row shifted by ``s`` pixels, c = (W - 1 + s) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from tomopipe.tasks.preprocess._validate import ArrayInputError, as_angles, as_array, require_finite

COARSE_MAX_COLS = 128  # the coarse Vo search bins columns down to at most this many
COARSE_MAX_ANGLES = 180
FINE_MAX_ANGLES = 360
AGREEMENT_SCALE_PX = 1.0  # confidence = exp(-d^2 / (2 * scale^2)) for a disagreement d in pixels
DISAGREE_PX = 2.0  # beyond this the two methods are not averaged; Vo's value is kept
SINGLE_METHOD_CONFIDENCE = 0.5
VO_WEIGHT = 2 / 3  # in the combined value; Vo uses every angle, registration two frames


@dataclass(frozen=True)
class CenterEstimate:
    """One centre with how far to trust it.

    value: centre in pixels (TomoPy's counting). confidence in [0, 1] (see ``auto_center``).
    method: "vo+registration", "vo", "registration", "vo (registration disagrees)" or "default".
    estimates: each method's own value. notes: why a method was not usable, if any.
    """

    value: float
    confidence: float
    method: str
    estimates: dict[str, float]
    notes: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- Vo's method


def _half_turn(sino: np.ndarray, angles: np.ndarray) -> np.ndarray | None:
    """The frames of the first 180 degrees from the smallest angle, sorted by angle (any
    acquisition order: interlaced, golden-ratio); None if < 180. Unevenly spaced angles (a
    golden-ratio scan) are resampled onto an even grid, which Vo's spectrum needs."""
    order = np.argsort(angles, kind="stable")
    ang = angles[order] - angles[order[0]]
    steps = np.diff(ang)
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 0.0
    if step <= 0 or ang[-1] < math.pi - 1.5 * step:
        return None
    keep = ang < math.pi - 0.5 * step  # a frame at exactly 180 degrees would repeat frame 0
    half, ang = sino[order[keep]], ang[keep]
    gaps = np.diff(ang)
    if gaps.size and (gaps.max() > 1.05 * step or gaps.min() < 0.95 * step):
        half = _even_angles(half, ang)
    return half


def _even_angles(half: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Rows of ``half`` (sorted angles ``ang`` from 0) linearly interpolated onto as many
    evenly spaced angles over [0, 180) degrees; repeated angles are averaged first."""
    uniq, inverse = np.unique(ang, return_inverse=True)
    if uniq.size < ang.size:
        sums = np.zeros((uniq.size, half.shape[1]))
        np.add.at(sums, inverse, half)
        half = sums / np.bincount(inverse)[:, None]
    grid = np.arange(ang.size) * (math.pi / ang.size)
    j = np.clip(np.searchsorted(uniq, grid, side="right") - 1, 0, uniq.size - 1)
    k = np.minimum(j + 1, uniq.size - 1)
    span = np.where(k > j, uniq[k] - uniq[j], 1.0)
    t = np.clip((grid - uniq[j]) / span, 0.0, 1.0)[:, None]
    return (1 - t) * half[j] + t * half[k]


def _bin_columns(sino: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return sino
    n = sino.shape[1] // factor * factor
    return sino[:, :n].reshape(sino.shape[0], -1, factor).mean(axis=2)


def _wedge_mask(n_rows: int, n_cols: int, radius_px: float) -> np.ndarray:
    """Vo's inverse double-wedge for a 360-degree sinogram (n_rows angles), in the layout of
    ``rfft2`` and weighted so that ``sum(|rfft2| * mask)`` equals ``sum(|fft2| * full mask)``.

    A point at radius r from the axis traces x = r cos(theta), whose energy lies where the angular
    frequency |k| <= 2 pi r |nu| (nu: cycles per pixel). An object within ``radius_px`` therefore
    leaves the wedge |nu| < |k| / (2 pi radius_px) empty when the centre is right; a wrong centre
    breaks the 360-degree sinogram's continuity and puts energy there.
    """
    k = np.abs(np.fft.fftfreq(n_rows) * n_rows)[:, None]  # cycles per turn
    nu = np.fft.rfftfreq(n_cols)[None, :]
    drop = min(20, math.ceil(0.05 * n_rows))
    mask = ((nu < k / (2 * math.pi * radius_px)) & (k > drop) & (nu > 1.5 / n_cols)).astype(float)
    # The spectrum of a real array is symmetric: each half-spectrum column stands for two,
    # except the zero and (for even widths) the Nyquist columns.
    weights = np.full(nu.shape[1], 2.0)
    weights[0] = 1.0
    if n_cols % 2 == 0:
        weights[-1] = 1.0
    return mask * weights[None, :] / (n_rows * n_cols)


def _periodic_pad(rows: np.ndarray, pad: int) -> np.ndarray:
    """Pad columns so that the periodic extension is continuous (a linear ramp from the right
    edge value round to the left one): Fourier sub-pixel shifts then do not ring."""
    left, right = rows[:, :1], rows[:, -1:]
    t = np.arange(1, 2 * pad + 1, dtype=np.float64)[None, :] / (2 * pad + 1)
    ramp = right + (left - right) * t
    return np.concatenate([ramp[:, pad:], rows, ramp[:, :pad]], axis=1)


def _vo_metrics(half: np.ndarray, centers: np.ndarray, radius_frac: float) -> np.ndarray:
    """Vo's metric for each candidate centre on one 180-degree sinogram (angles, cols)."""
    n_angles, width = half.shape
    shifts = 2.0 * centers - (width - 1)
    pad = int(np.ceil(np.abs(shifts).max())) + 2
    flipped = _periodic_pad(half[:, ::-1].astype(np.float64), pad)
    spectrum = sfft.rfft(flipped, axis=1)
    freq = np.fft.rfftfreq(flipped.shape[1])
    mask = _wedge_mask(2 * n_angles, width, radius_frac * width)
    full = np.empty((2 * n_angles, width))
    full[:n_angles] = half
    metrics = np.empty(centers.size)
    for i, s in enumerate(shifts):
        moved = sfft.irfft(spectrum * np.exp(-2j * np.pi * freq * s), n=flipped.shape[1], axis=1)
        full[n_angles:] = moved[:, pad : pad + width]
        metrics[i] = float(np.sum(np.abs(sfft.rfft2(full)) * mask))
    return metrics


def find_center_vo(
    sino,
    angles_rad,
    *,
    search: tuple[float, float] | None = None,
    step: float = 0.25,
    radius_fraction: float = 0.25,
) -> float:
    """Centre from Vo's Fourier double-wedge metric (Vo, Atwood & Drakopoulos, Opt. Express 2014).

    sino: one sinogram (angles, cols) after minus-log; angles_rad: its angles, evenly spaced.
    The first 180 degrees (from the smallest angle) are used, so 360-degree scans and ranges that
    do not start at 0 work. Each candidate centre joins the 180-degree sinogram with its mirrored
    copy shifted to that centre into a 360-degree sinogram; the right centre leaves the least
    energy in the double wedge of its 2-D spectrum. Coarse search on a binned copy, then finer
    searches at full resolution down to ``step`` pixels (sub-pixel shifts by Fourier phase).
    search: (lo, hi) range of centres; default the middle half of the row; always kept within
    [cols/8, cols - 1 - cols/8] (nearer the edge the mirrored halves barely overlap).
    radius_fraction: the object's radius over the row width (Vo's default 0.25).
    """
    arr = as_array(sino, "sino", (2,), "2-D (angles, cols)")
    require_finite(arr, "sino")
    angles = as_angles(angles_rad, "angles_rad", arr.shape[0])
    if not step > 0:
        raise ArrayInputError("step", f"must be > 0, got {step}")
    half = _half_turn(arr.astype(np.float64), angles)
    if half is None or half.shape[0] < 8:
        span = math.degrees(float(np.ptp(angles)))
        raise ArrayInputError(
            "angles_rad",
            f"span {span:.1f} degrees, {angles.size} frames: Vo's method needs 180 degrees "
            "of evenly spaced data (at least 8 frames in the first 180)",
        )
    width = half.shape[1]
    if width < 16:
        raise ArrayInputError("sino", f"has {width} columns: too few to find a centre")
    middle = (width - 1) / 2
    lo, hi = search if search is not None else (middle - width / 4, middle + width / 4)
    lo, hi = max(float(lo), width / 8), min(float(hi), width - 1 - width / 8)
    if not lo < hi:
        raise ArrayInputError("search", f"range {search} leaves no centre inside the row")
    if half.shape[0] > 16:  # smooth along angles only: this cannot move the centre
        half = ndimage.gaussian_filter1d(half, 1.5, axis=0, mode="nearest")

    def best_of(sino: np.ndarray, centers: np.ndarray, b: int) -> float:
        """The candidate with the least metric, on columns binned by b (binned column J sits
        at b*J + (b-1)/2 in full-resolution pixels)."""
        binned = (centers - (b - 1) / 2) / b
        metrics = _vo_metrics(_bin_columns(sino, b), binned, radius_fraction)
        return float(centers[int(np.argmin(metrics))])

    # Coarse: the whole range on a small binned copy, one binned pixel of shift per candidate.
    b = max(1, math.ceil(width / COARSE_MAX_COLS))
    coarse = half[:: max(1, math.ceil(half.shape[0] / COARSE_MAX_ANGLES))]
    best = best_of(coarse, np.arange(lo, hi + 1e-9, b / 2), b)
    spacing = b / 2

    # Refinement: the step shrinks 4-fold per pass around the best so far; columns are binned
    # only as far as the step allows (the last passes use full resolution).
    fine = half[:: max(1, math.ceil(half.shape[0] / FINE_MAX_ANGLES))]
    while spacing > step + 1e-9:
        new_spacing = max(spacing / 4, step)
        cands = best + np.arange(-2 * spacing, 2 * spacing + 1e-9, new_spacing)
        cands = cands[(cands >= lo - spacing) & (cands <= hi + spacing)]
        b = 2 ** max(0, int(math.floor(math.log2(max(new_spacing, 1.0)))))
        best = best_of(fine, cands, b)
        spacing = new_spacing
    return best


# ------------------------------------------------------------------ registration of 0 and 180


def _upsampled_peak(cross: np.ndarray, peak: tuple[int, int], factor: int) -> tuple[float, float]:
    """Refine an integer correlation peak by evaluating the inverse DFT of ``cross`` on a grid
    1/factor pixel fine within +-1.5 pixels of it (matrix-multiply DFT, Guizar-Sicairos 2008)."""
    ny, nx = cross.shape
    offsets = np.arange(-1.5, 1.5 + 1e-9, 1.0 / factor)
    ys, xs = peak[0] + offsets, peak[1] + offsets
    ky, kx = np.fft.fftfreq(ny) * ny, np.fft.fftfreq(nx) * nx
    ey = np.exp(2j * np.pi * np.outer(ys, ky) / ny)
    ex = np.exp(2j * np.pi * np.outer(kx, xs) / nx)
    surface = (ey @ cross @ ex).real
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    return float(ys[iy]), float(xs[ix])


WHITENING = 0.5  # cross-power divided by |cross|**WHITENING (1: pure phase correlation)
LOWPASS = 0.05  # Gaussian weight on the cross-power, sigma in cycles per pixel


def registration_shift(reference, moving, *, upsample: int = 20) -> tuple[float, float, float]:
    """(dy, dx, peak): ``reference(y, x) ~ moving(y - dy, x - dx)`` by (partially whitened)
    phase correlation with sub-pixel refinement to 1/upsample pixel; peak is the correlation
    maximum. Pure phase correlation weights every frequency alike, so noisy high frequencies
    scatter the peak (0.45 px rms on a 2048-pixel phantom with 1 % noise); half whitening and a
    Gaussian low-pass (which smooths the correlation surface without moving its maximum) cut
    that to 0.04 px rms, 0.06 px at 3 % noise."""
    a = reference - reference.mean()
    m = moving - moving.mean()
    cross = sfft.fft2(a) * np.conj(sfft.fft2(m))
    magnitude = np.abs(cross) ** WHITENING
    cross /= magnitude + 1e-12 * magnitude.max() + 1e-30
    ky = np.fft.fftfreq(cross.shape[0])[:, None]
    kx = np.fft.fftfreq(cross.shape[1])[None, :]
    cross *= np.exp(-(kx**2 + ky**2) / (2 * LOWPASS**2))
    corr = sfft.ifft2(cross).real
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    dy, dx = _upsampled_peak(cross, (int(iy), int(ix)), upsample)
    ny, nx = corr.shape
    dy = dy - ny if dy > ny / 2 else dy
    dx = dx - nx if dx > nx / 2 else dx
    return dy, dx, float(corr.max())


def find_center_registration(proj0, proj180, *, upsample: int = 20) -> float:
    """Centre from a projection and the one taken 180 degrees later: the later one is mirrored
    left-right and registered onto the first (``registration_shift``: sub-pixel, 1/upsample px).

    proj0, proj180: (rows, cols) frames (or single rows (cols,)) of the same shape, after
    minus-log or not (both alike). If the mirrored frame matches proj0 shifted by s pixels,
    c = (cols - 1 + s) / 2.
    """
    a = as_array(proj0, "proj0", (1, 2), "(rows, cols) or (cols,)")
    if a.shape[-1] < 8:
        raise ArrayInputError("proj0", f"has {a.shape[-1]} columns: too few to register")
    b = as_array(proj180, "proj180", (1, 2), "(rows, cols) or (cols,)")
    if a.shape != b.shape:
        raise ArrayInputError("proj180", f"shape {b.shape} does not match proj0's {a.shape}")
    require_finite(a, "proj0")
    require_finite(b, "proj180")
    if int(upsample) != upsample or upsample < 1:
        raise ArrayInputError("upsample", f"must be a positive integer, got {upsample}")
    a2 = np.atleast_2d(a).astype(np.float64)
    b2 = np.atleast_2d(b).astype(np.float64)
    # Register the horizontal gradients, not the values: a frame whose edges differ has a step
    # at the FFT's wrap point that pulls the peak towards zero shift (on the peer projection the
    # values give 0.125 px error, the gradients 0.0). An object cut by the detector edge still
    # misleads this method by several pixels: auto_center then falls back to Vo's value.
    grad_a, grad_m = np.diff(a2, axis=1), np.diff(b2[:, ::-1], axis=1)
    _, dx, _ = registration_shift(grad_a, grad_m, upsample=int(upsample))
    return (a2.shape[1] - 1 + dx) / 2


# ------------------------------------------------------------------------------ combination


def _opposite_pair(angles: np.ndarray) -> tuple[int, int, float] | None:
    """Frames nearest theta0 (the smallest angle) and theta0 + 180 degrees, with their angular
    mismatch; None when no frame lies within one angular step (at most 1 degree) of theta0+180."""
    i0 = int(np.argmin(angles))
    diff = np.angle(np.exp(1j * (angles - angles[i0] - math.pi)))  # wrapped to (-pi, pi]
    j = int(np.argmin(np.abs(diff)))
    steps = np.diff(np.sort(angles))
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 0.0
    tolerance = 1.01 * min(step, math.radians(1.0))  # 1 %: rounding in the stored angles
    if j == i0 or abs(diff[j]) > tolerance:
        return None
    return i0, j, float(diff[j])


def auto_center(sinos, angles_rad, *, step: float = 0.25) -> CenterEstimate:
    """Centre of rotation from a band of sinograms (rows, angles, cols) after minus-log.

    Two independent estimates:
    - "vo": Vo's method on the band's mean sinogram (the mean of sinograms is the sinogram of
      the mean slice, with less noise), first 180 degrees; needs >= 180 degrees of data.
    - "registration": the frames nearest theta0 (smallest angle) and theta0 + 180 degrees,
      mirrored and registered; needs such a pair within one angular step (at most 1 degree).
    Combination, with d = |vo - registration| in pixels:
    - both, d <= 2 px: value = (2 * vo + registration) / 3 (Vo uses every angle, registration
      two frames), confidence = exp(-d^2 / 2) (1 px scale: d = 0.25 gives 0.97, 0.5 gives
      0.88, 1 gives 0.61, 2 gives 0.14); method "vo+registration".
    - both, d > 2 px: value = Vo's (it uses every angle), same confidence formula (< 0.14);
      method "vo (registration disagrees)".
    - one usable: its value, confidence 0.5, method "vo" or "registration"; notes say why.
    - none usable (less than 180 degrees): cols / 2 (TomoPy's default), confidence 0,
      method "default".
    """
    arr = as_array(sinos, "sinos", (3,), "3-D (rows, angles, cols)")
    require_finite(arr, "sinos")
    angles = as_angles(angles_rad, "angles_rad", arr.shape[1])
    width = arr.shape[2]
    estimates: dict[str, float] = {}
    notes: list[str] = []

    try:
        estimates["vo"] = find_center_vo(arr.mean(axis=0, dtype=np.float64), angles, step=step)
    except ArrayInputError as exc:
        notes.append(f"vo unusable: {exc.fault}")

    pair = _opposite_pair(angles)
    if pair is None:
        notes.append("registration unusable: no frame 180 degrees after the first")
    else:
        i0, j, mismatch = pair
        estimates["registration"] = find_center_registration(arr[:, i0, :], arr[:, j, :])
        if abs(mismatch) > 1e-6:
            notes.append(f"registration pair is {math.degrees(mismatch):+.3f} degrees off 180")

    if "vo" in estimates and "registration" in estimates:
        d = abs(estimates["vo"] - estimates["registration"])
        confidence = math.exp(-0.5 * (d / AGREEMENT_SCALE_PX) ** 2)
        if d <= DISAGREE_PX:
            value = VO_WEIGHT * estimates["vo"] + (1 - VO_WEIGHT) * estimates["registration"]
            method = "vo+registration"
        else:
            value, method = estimates["vo"], "vo (registration disagrees)"
    elif estimates:
        method, value = next(iter(estimates.items()))
        confidence = SINGLE_METHOD_CONFIDENCE
    else:
        value, confidence, method = width / 2, 0.0, "default"
    return CenterEstimate(float(value), float(confidence), method, estimates, tuple(notes))


def find_rotation_axis(sinos, angles_rad, *, step: float = 0.25) -> CenterEstimate:
    """The centre of any scan: ``auto_center``, except for a 360-degree scan whose axis lies
    off the detector's middle (extended field of view), where Vo's method and the 0/180-degree
    registration cannot see the whole object. There the axis comes from the overlap of the two
    half-turns (``stitch360.find_axis_360``), method "360-overlap", with that method's
    confidence (the agreement of its two quarter-turn estimates, same formula as here).
    """
    from tomopipe.tasks.preprocess.stitch360 import find_axis_360, is_full_turn, is_offset_axis

    arr = as_array(sinos, "sinos", (3,), "3-D (rows, angles, cols)")
    angles = as_angles(angles_rad, "angles_rad", arr.shape[1])
    if is_full_turn(angles):
        try:
            axis = find_axis_360(arr, angles, step=step)
        except ArrayInputError:
            axis = None
        if axis is not None and is_offset_axis(angles, axis.value, arr.shape[2]):
            return CenterEstimate(axis.value, axis.confidence, "360-overlap",
                                  {"360-overlap": axis.value, **axis.estimates},
                                  (f"half-turns overlap by {axis.overlap_px:.0f} columns",))
    return auto_center(arr, angles, step=step)
