"""All the measurements of one reconstruction, as the analysis event carries them
(``documents.ANALYSIS_KEYS``): plain function on the volume and the reconstruction's figures."""

from __future__ import annotations

import math

import numpy as np
from tomopipe.tasks.analysis.sample import find_sample, scale_box


def measurements(volume, *, full_shape: tuple[int, int, int] | None = None,
                 center: float | None = None, center_confidence: float | None = None,
                 center_method: str | None = None, live: dict | None = None,
                 volume_path: str | None = None) -> dict:
    """What the reconstruction found: the sample (``sample.find_sample``) in ``volume`` (z, y, x;
    a pyramid level of a volume of ``full_shape``, whose voxels the box is given in), the
    centre and its confidence, and the live reconstruction's last convergence figure (``live``:
    the ``tomopipe_live`` attribute, with ``correlation`` and ``fraction``)."""
    vol = np.asarray(volume)
    full = tuple(int(s) for s in (full_shape or vol.shape))
    found = find_sample(vol)
    factor = int(round(full[2] / vol.shape[-1])) if vol.ndim == 3 else 1
    found = scale_box(found, factor, full)
    live = live or {}
    corr = live.get("correlation")
    out = {
        "volume": volume_path,
        "center": center, "center_confidence": center_confidence,
        "center_method": center_method,
        "sample_found": int(found.found), "sample_reason": found.reason,
        "sample_contrast": found.contrast if math.isfinite(found.contrast) else None,
        "box": list(found.box) if found.box else None,
        "offset_x_px": found.offset_px[0] if found.offset_px else None,
        "offset_y_px": found.offset_px[1] if found.offset_px else None,
        "row_start": found.rows[0] if found.rows else None,
        "row_stop": found.rows[1] if found.rows else None,
        "volume_rows": full[0], "volume_cols": full[2],
        "convergence": float(corr) if isinstance(corr, int | float) else None,
        "live_fraction": live.get("fraction"),
    }
    return out
