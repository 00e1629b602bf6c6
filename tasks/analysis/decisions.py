"""What an agent does with an analysis: plain functions from measurements to a decision.

A decision names its action, the reason, the inputs it was taken from (copied in, so a
scientist can see why a scan was taken) and, when it acts, what goes to the queue. Bad analysis
never moves a motor: a sample not found or a centre below ``MIN_CENTER_CONFIDENCE`` gives
action ``refuse`` and nothing to queue.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

MIN_CENTER_CONFIDENCE = 0.5  # auto_center: 0.5 = one method usable; two that disagree fall below
ROW_MARGIN = 1  # rows kept either side of the sample
TOLERANCE_PX = 0.5  # a sample closer than this to the axis is not moved


@dataclass(frozen=True)
class Decision:
    """action: "align" (move the stage, limit the rows, take the full scan), "refuse", "stop"
    (end the running scan) or "continue". moves: motor -> relative move (pixels). scan: the
    next scan's plan parameters. inputs: what the decision was taken from."""

    action: str
    reason: str
    inputs: dict
    moves: dict = field(default_factory=dict)
    scan: dict = field(default_factory=dict)

    @property
    def acts(self) -> bool:
        return self.action in ("align", "stop")

    def to_dict(self) -> dict:
        return asdict(self)


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def align_decision(analysis: dict, *, detector_rows: int,
                   min_confidence: float = MIN_CENTER_CONFIDENCE, row_margin: int = ROW_MARGIN,
                   tolerance_px: float = TOLERANCE_PX) -> Decision:
    """Align and zoom from the analysis of a quick scan.

    ``analysis``: the analysis event's data (``documents.ANALYSIS_KEYS``): sample_found,
    sample_reason, center_confidence, offset_x_px, offset_y_px, row_start, row_stop, volume
    rows (``volume_rows``: how many rows the quick scan's volume has, the detector's
    ``detector_rows`` for the full scan; the rows scale between them).
    """
    inputs = {k: analysis.get(k) for k in (
        "raw_uid", "sample_found", "sample_reason", "center", "center_confidence",
        "offset_x_px", "offset_y_px", "row_start", "row_stop", "volume_rows", "volume")}
    if not analysis.get("sample_found"):
        why = analysis.get("sample_reason") or "the analysis found no sample"
        return Decision("refuse", f"no motor moved: {why}", inputs)
    confidence = _number(analysis.get("center_confidence"))
    if confidence is None or confidence < min_confidence:
        shown = "unknown" if confidence is None else f"{confidence:.2f}"
        return Decision("refuse", f"no motor moved: the centre's confidence is {shown}, below "
                        f"{min_confidence}", inputs)
    dx, dy = _number(analysis.get("offset_x_px")), _number(analysis.get("offset_y_px"))
    r0, r1 = analysis.get("row_start"), analysis.get("row_stop")
    n_rows = analysis.get("volume_rows")
    if dx is None or dy is None or r0 is None or r1 is None or not n_rows:
        return Decision("refuse", "no motor moved: the analysis has no sample offset or rows",
                        inputs)
    scale = detector_rows / float(n_rows)
    start = max(0, int(math.floor(r0 * scale)) - row_margin)
    stop = min(detector_rows, int(math.ceil(r1 * scale)) + row_margin)
    moves = {"stage_x": -dx if abs(dx) > tolerance_px else 0.0,
             "stage_y": -dy if abs(dy) > tolerance_px else 0.0}
    return Decision("align", f"sample {math.hypot(dx, dy):.1f} px off the axis (dx {dx:+.1f}, "
                    f"dy {dy:+.1f}): move the stage by ({moves['stage_x']:+.1f}, "
                    f"{moves['stage_y']:+.1f}) px and take rows {start}:{stop} of "
                    f"{detector_rows}", inputs, moves=moves,
                    scan={"row_start": start, "row_stop": stop})


def stop_decision(convergence: dict, *, uid: str) -> Decision:
    """End the running scan ``uid`` when its live reconstruction has converged
    (``convergence.assess(...).to_dict()``)."""
    inputs = {"raw_uid": uid, **convergence}
    if convergence.get("converged"):
        return Decision("stop", convergence["reason"], inputs)
    return Decision("continue", convergence.get("reason") or "not converged", inputs)
