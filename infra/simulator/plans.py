"""The ``tomo_scan`` Bluesky plan: darks, flats, then one projection per rotation angle.

Streams: ``dark`` (shutter closed), ``flat`` (sample moved out of the beam), ``primary`` (one
event per projection with the rotation stage's angle). The run's start document carries a
``tomo`` mapping that tells readers which data keys hold the angle and the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import bluesky.plan_stubs as bps
from tomopipe.infra.simulator.devices import SimAxis, SimCamera, SimShutter

SAMPLE_OUT_MM = 5.0  # sample translation that takes the sample out of the beam for flats


def tomo_scan(camera: SimCamera, rotation: SimAxis, shutter: SimShutter, sample_axis: SimAxis,
              angles_deg: Sequence[float], *, n_darks: int, n_flats: int, data_dir,
              md: dict | None = None, abort_after: int | None = None,
              checkpoints: bool = False, stop_requested: Callable[[], str | None] | None = None):
    """Take ``n_darks`` darks, ``n_flats`` flats and one projection per angle (degrees).

    The camera writes under ``data_dir / <run uid>``. ``abort_after``: pause after that many
    projections (the caller then aborts the paused RunEngine: the operator's abort path).
    ``checkpoints``: a checkpoint before each projection, so the queue server can pause and
    stop the scan between projections (an agent ending it early; the run then ends "success"
    with the projections taken so far). ``stop_requested()``: asked before each projection; a
    reason (text) ends the scan there, its stop document saying "success" and that reason (an
    agent ending a scan that is good enough).
    """
    angles = [float(a) for a in angles_deg]
    md = dict(md or {})
    md.setdefault("plan_name", "tomo_scan")
    md.setdefault("detectors", [camera.name])
    md.setdefault("motors", [rotation.name])
    md.setdefault("num_points", n_darks + n_flats + len(angles))
    md.setdefault("plan_args", {"n_darks": n_darks, "n_flats": n_flats, "n_angles": len(angles),
                                "angle_start": angles[0] if angles else None,
                                "angle_stop": angles[-1] if angles else None})
    md.setdefault("hints", {"dimensions": [([rotation.name], "primary")]})

    uid = yield from bps.open_run(md)
    camera.directory = data_dir / uid  # one directory per run, named by its uid
    yield from bps.stage(camera)

    yield from bps.mv(shutter, "closed")
    for _ in range(n_darks):
        yield from bps.trigger_and_read([camera], name="dark")
    yield from bps.mv(shutter, "open")

    yield from bps.mv(sample_axis, SAMPLE_OUT_MM)
    for _ in range(n_flats):
        yield from bps.trigger_and_read([camera], name="flat")
    yield from bps.mv(sample_axis, 0.0)

    stopped = None
    for i, angle in enumerate(angles):
        if checkpoints:
            yield from bps.checkpoint()
        if stop_requested is not None and (stopped := stop_requested()):
            break
        yield from bps.mv(rotation, angle)
        yield from bps.trigger_and_read([camera, rotation], name="primary")
        if abort_after is not None and i + 1 >= abort_after:
            yield from bps.pause()

    yield from bps.unstage(camera)
    if stopped:
        yield from bps.close_run(exit_status="success", reason=stopped)
    else:
        yield from bps.close_run()
    return uid
