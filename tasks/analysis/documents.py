"""The Bluesky documents of an analysis run: what a reconstruction found about a raw run, and
what an agent decided from it. Plain functions (event-model), no I/O.

An analysis run is a normal Bluesky run (start, one ``primary`` descriptor, one event, stop)
whose start document names the raw run: ``analyzes`` and ``raw_uid`` (the raw run's uid),
``plan_name`` ``tomo_analysis`` (measurements) or ``steering_decision`` (an agent's decision,
with ``analysis_uid``: the analysis run it was taken from). Neither is a tomography run, so no
reconstruction fires on them; they go on the same bus and into the same catalog as the raw run.
"""

from __future__ import annotations

import json
import math
import time

ANALYSIS_PLAN = "tomo_analysis"
DECISION_PLAN = "steering_decision"
VERSION = 1

# data key -> event-model dtype of the analysis event (missing numbers are NaN, strings "")
ANALYSIS_KEYS = {
    "raw_uid": "string",
    "volume": "string",
    "center": "number",
    "center_confidence": "number",
    "center_method": "string",
    "sample_found": "integer",
    "sample_reason": "string",
    "sample_contrast": "number",
    "box": "array",  # [z0, z1, y0, y1, x0, x1] stop-exclusive, voxels of the volume
    "offset_x_px": "number",  # box centre from the rotation axis, columns
    "offset_y_px": "number",  # ... image rows
    "row_start": "integer",
    "row_stop": "integer",
    "volume_rows": "integer",
    "volume_cols": "integer",
    "convergence": "number",  # live: last correlation of successive updates; NaN: not live
    "live_fraction": "number",
}
DECISION_KEYS = {
    "raw_uid": "string",
    "action": "string",
    "reason": "string",
    "inputs": "string",  # JSON
    "moves": "string",  # JSON
    "scan": "string",  # JSON
    "queued": "string",  # JSON: what went to the queue (item uids), "" when nothing
}


def _clean(keys: dict, data: dict) -> dict:
    out = {}
    for key, dtype in keys.items():
        value = data.get(key)
        if dtype == "number":
            value = float(value) if value is not None else math.nan
        elif dtype == "integer":
            value = int(value) if value is not None else -1
        elif dtype == "array":
            value = [int(v) for v in value] if value is not None else []
        else:
            value = "" if value is None else str(value)
        out[key] = value
    return out


def _run(plan_name: str, keys: dict, data: dict, md: dict) -> list[tuple[str, dict]]:
    from event_model import compose_run

    run = compose_run(metadata={"plan_name": plan_name, "tomopipe_analysis_version": VERSION,
                                **md})
    desc = run.compose_descriptor(name="primary", data_keys={
        k: {"source": f"tomopipe:{plan_name}", "dtype": t,
            "shape": [len(data.get(k) or [])] if t == "array" else []}
        for k, t in keys.items()})
    now = time.time()
    event = desc.compose_event(data=_clean(keys, data), timestamps={k: now for k in keys})
    stop = run.compose_stop(exit_status="success")
    return [("start", run.start_doc), ("descriptor", desc.descriptor_doc), ("event", event),
            ("stop", stop)]


def analysis_documents(raw_uid: str, measurements: dict, *, sample: str | None = None,
                       beamline: str | None = None) -> list[tuple[str, dict]]:
    """(name, doc) pairs of the analysis run of ``raw_uid``; ``measurements`` holds
    ``ANALYSIS_KEYS`` (missing ones are NaN, -1 or "")."""
    # the start document carries the measurements too (None where missing), so an agent reads
    # them from the catalog's metadata without reading the event's table
    md = {"analyzes": raw_uid, "raw_uid": raw_uid, "sample": sample, "beamline": beamline,
          "summary": {k: measurements.get(k) for k in ANALYSIS_KEYS if k != "raw_uid"}}
    return _run(ANALYSIS_PLAN, ANALYSIS_KEYS, {**measurements, "raw_uid": raw_uid},
                {k: v for k, v in md.items() if v is not None})


def decision_documents(raw_uid: str, decision: dict, *, analysis_uid: str | None = None,
                       agent: str = "tomopipe", queued: list | None = None
                       ) -> list[tuple[str, dict]]:
    """(name, doc) pairs recording an agent's decision (``Decision.to_dict()``) with its inputs."""
    data = {"raw_uid": raw_uid, "action": decision["action"], "reason": decision["reason"],
            "inputs": json.dumps(decision.get("inputs") or {}, default=str),
            "moves": json.dumps(decision.get("moves") or {}),
            "scan": json.dumps(decision.get("scan") or {}),
            "queued": json.dumps(queued) if queued else ""}
    md = {"analyzes": raw_uid, "raw_uid": raw_uid, "agent": agent,
          "decision": {"action": decision["action"], "reason": decision["reason"],
                       "inputs": decision.get("inputs") or {},
                       "moves": decision.get("moves") or {}, "scan": decision.get("scan") or {}}}
    if analysis_uid:
        md["analysis_uid"] = analysis_uid
    return _run(DECISION_PLAN, DECISION_KEYS, data, md)
