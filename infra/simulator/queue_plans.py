"""The simulated beamline as the queue server sees it: one sample stage that outlives scans, and
the plans people and agents queue (names without a leading underscore are offered).

- ``mount_sample(offset_x_px, offset_y_px)``: put a sample on the stage that many pixels off the
  rotation axis (the truth an alignment must find) and home the stage motors;
- ``move_stage(dx_px, dy_px)``: move the stage motors by that much;
- ``tomo_scan_sim(...)``: one tomography scan (infra/simulator/run.scan_plan) with a checkpoint
  before each projection, so the manager can stop it early; ``row_start``/``row_stop`` read only
  those detector rows; ``md`` goes into the start document (e.g. ``steered_by``);
- ``request_stop(reason)``: a function (the queue server's ``function_execute``, run in the
  background while a plan runs): the running scan ends before its next projection, its stop
  document saying ``success`` and ``reason`` (an agent ending a scan that is good enough).

``connect(RE)`` (the startup script calls it) subscribes the home's document bus to the
RunEngine.
"""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
from tomopipe.infra.simulator.devices import SimStage

STAGE = SimStage()
_STATE: dict = {}


def connect(RE) -> None:
    """Publish the RunEngine's documents to the home's 0MQ bus ($TOMOPIPE_HOME's services)."""
    from bluesky.callbacks.zmq import Publisher
    from tomopipe.infra.simulator.run import CONNECT_GRACE_S, serializer_for

    from tomopipe.context import run_context

    ctx = run_context()
    _STATE.update(RE=RE, settings=ctx.settings)
    if not ctx.services.zmq_in:
        raise RuntimeError(f"no document bus for {ctx.settings.home}: zmq_in is not set")
    RE.subscribe(Publisher(ctx.services.zmq_in,
                           serializer=serializer_for(ctx.settings.bus.serializer)))
    time.sleep(CONNECT_GRACE_S)


def mount_sample(offset_x_px: float = 0.0, offset_y_px: float = 0.0):
    """A new sample, (offset_x_px, offset_y_px) pixels off the rotation axis; stage at 0."""
    STAGE.mount = (float(offset_x_px), float(offset_y_px))
    yield from bps.mv(STAGE.x, 0.0, STAGE.y, 0.0)


def move_stage(dx_px: float = 0.0, dy_px: float = 0.0):
    """Move the sample stage by (dx_px, dy_px) pixels."""
    yield from bps.mv(STAGE.x, STAGE.x.position + float(dx_px),
                      STAGE.y, STAGE.y.position + float(dy_px))


def request_stop(reason: str = "stopped by an agent") -> str:
    """End the running ``tomo_scan_sim`` before its next projection, saying ``reason``."""
    _STATE["stop_reason"] = str(reason) or "stopped by an agent"
    return _STATE["stop_reason"]


def tomo_scan_sim(angles: int = 180, size: int = 128, rows: int = 16,
                  angle_order: str = "sequential", fps: float = 0.0, sample: str = "sample",
                  sample_shape: str = "grain", row_start: int = -1, row_stop: int = -1,
                  n_flats: int = 10, n_darks: int = 5, md: dict | None = None):
    """One simulated tomography scan of the mounted sample (see the module docstring)."""
    from tomopipe.infra.simulator.run import scan_plan

    settings = _STATE["settings"]
    _STATE.pop("stop_reason", None)  # a request left from an earlier scan is not for this one
    row_range = (int(row_start), int(row_stop)) if row_start >= 0 and row_stop > 0 else None
    plan, start_md, camera = scan_plan(
        settings, stage=STAGE, size=int(size), rows=int(rows), angles=int(angles),
        fps=float(fps) or None, sample=sample, n_flats=int(n_flats), n_darks=int(n_darks),
        angle_order=angle_order, sample_shape=sample_shape, row_range=row_range,
        checkpoints=True, md={**(md or {}), "queued": True},
        stop_requested=lambda: _STATE.get("stop_reason"))
    RE = _STATE.get("RE")
    if RE is not None:
        RE.md["scan_id"] = start_md["scan_id"] - 1  # the RunEngine adds one
    try:
        return (yield from plan)
    finally:
        _STATE.pop("stop_reason", None)
        camera.unstage()
