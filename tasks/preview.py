"""A preview of a volume: three orthogonal middle slices side by side, as a PNG.

Plain function (no Prefect): volume path in, PNG path out, written next to the volume. Large
volumes are previewed from the first pyramid level whose planes are at most ``max_px`` wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tomopipe.errors import InputError


def finest_level(path: str | Path, max_px: int):
    """The finest pyramid level of an OME-Zarr volume no wider than ``max_px`` (the coarsest
    when none is), as a Zarr array; InputError naming the path when it is not a volume."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise InputError(str(path), f"not a readable OME-Zarr volume: {exc}") from exc
    levels = sorted((k for k in group.array_keys() if k.isdigit()), key=int)
    if not levels:
        raise InputError(str(path), "no pyramid levels (arrays 0, 1, ...)")
    for k in levels:
        arr = group[k]
        if max(arr.shape[1:]) <= max_px:
            return arr
    return group[levels[-1]]


def _to_uint8(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.clip(plane, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(plane)
    return (scaled * 255).astype(np.uint8)


def orthogonal_slices(volume) -> list[np.ndarray]:
    """The middle (z, y, x) planes of a (z, y, x) array-like, as float32 arrays."""
    z, y, x = volume.shape
    return [np.asarray(volume[z // 2], dtype=np.float32),
            np.asarray(volume[:, y // 2, :], dtype=np.float32),
            np.asarray(volume[:, :, x // 2], dtype=np.float32)]


def preview_image(slices: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """One uint8 image: the slices side by side on a common 1-99 percentile grey scale."""
    values = np.concatenate([s.ravel() for s in slices])
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    height = max(s.shape[0] for s in slices)
    width = sum(s.shape[1] for s in slices) + gap * (len(slices) - 1)
    canvas = np.zeros((height, width), np.uint8)
    x0 = 0
    for s in slices:
        canvas[: s.shape[0], x0 : x0 + s.shape[1]] = _to_uint8(s, lo, hi)
        x0 += s.shape[1] + gap
    return canvas


def write_preview(volume_path: str | Path, png_path: str | Path | None = None, *,
                  max_px: int = 512, min_px: int = 256) -> Path:
    """Write ``<volume>.preview.png`` (or ``png_path``) and return its path."""
    from PIL import Image

    volume_path = Path(volume_path)
    png = Path(png_path) if png_path else volume_path.with_name(volume_path.name + ".preview.png")
    image = preview_image(orthogonal_slices(finest_level(volume_path, max_px)))
    # small test volumes are enlarged so the preview is readable in the UI
    scale = max(1, min_px // max(1, image.shape[0]))
    pil = Image.fromarray(image)
    if scale > 1:
        pil = pil.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    tmp = png.with_name(png.name + ".tmp")
    pil.save(tmp, format="PNG")
    tmp.replace(png)
    return png
