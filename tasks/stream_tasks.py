"""The Prefect task of a streaming run: the volume grows on the Dask workers while the scan runs.

``stream_run`` waits for the run's first projection, decides whether the run can stream (else
returns the reason, and the flow reconstructs at the stop as before), finds the centre from the
first frames that cover the half-turn (or takes the given one), starts one block per worker
(``tasks.recon.streaming``) and then, until the stop document, shows the live views:

- in the run's live OME-Zarr group ``<volume>.live.zarr`` (the workers write it);
- in the Prefect UI: a progress artifact (fraction of the angles, frames in, lag) and an image
  artifact of the three slices (a ``data:image/png`` URL), both at most once a second;
- in ``tomopipe runs --json`` (``live``: fraction, updated, path).

At the stop it lets the workers add the last frames and write their shards, and returns the
published volume's result for the flow's ``publish`` task.
"""

from __future__ import annotations

import base64
import io
import math
import time

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from tomopipe.tasks import run_progress
from tomopipe.tasks.catalog import catalog_for, run_documents, run_layout, run_metadata
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.run_tasks import RunFailed, ensure_succeeded

from tomopipe.context import RunContext
from tomopipe.errors import InputError, TomopipeError

MIN_PNG_PX = 256
# the layout of a run waiting for its first projection is read at most this often: each look
# is 4-5 catalog requests (tens of ms of the catalog's CPU each); the bridge sends a stream's
# first frame to the catalog at once, the rest once a second (deployments/bridge.py)
LAYOUT_EVERY_S = 0.5


def live_png_data_url(views: dict) -> str:
    """The three live views side by side as a PNG ``data:`` URL (for the UI's image artifact)."""
    from PIL import Image
    from tomopipe.tasks.preview import preview_image

    image = preview_image([views["xy"], views["xz"], views["yz"]])
    pil = Image.fromarray(image)
    scale = max(1, MIN_PNG_PX // max(1, image.shape[0]))
    if scale > 1:
        pil = pil.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _artifact_key(uid: str) -> str:
    text = "".join(c if c.isalnum() else "-" for c in uid.lower())
    return ("live-" + text.strip("-"))[:60].rstrip("-")


def _wait_for_projections(catalog, uid, ctx, poll_s, idle_timeout_s):
    """(start document, None, partial ScanSpec) once the run's first projection is recorded;
    (start, stop document, None) when the run stops first.

    The spec comes from the run's layout (``catalog.run_layout``: where the frames are, no
    events) with the angles the run planned, a few catalog requests a look, at most every
    ``LAYOUT_EVERY_S`` (the stop is looked for every ``poll_s``); a run that plans no angles is
    read whole (its events give the angles it recorded so far)."""
    from tomopipe.tasks.sources.angle_plan import planned_angles_deg
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    deadline = time.monotonic() + idle_timeout_s
    looked = -math.inf  # when the layout was last read
    while time.monotonic() < deadline:
        try:
            run = catalog[uid]
        except KeyError:
            time.sleep(poll_s)
            continue
        start, stop = run_metadata(run)
        if stop:
            return start, stop, None
        if time.monotonic() - looked < LAYOUT_EVERY_S:
            time.sleep(poll_s)
            continue
        looked = time.monotonic()
        planned = planned_angles_deg(start.get("tomo"))
        try:
            docs = run_layout(run) if planned is not None else run_documents(run)
            spec = scan_from_documents(docs, ctx.data_roots, tomo_plans=ctx.tomo_plans,
                                       planned_angles_deg=planned)
        except InputError:
            spec = None  # not yet every stream, or no projection yet: look again
        except KeyError:  # a stream vanished: the bridge is rebuilding the run after a restart
            spec = None
        if spec is not None and spec.n_angles > 0:
            return start, None, spec
        time.sleep(poll_s)
    raise RunFailed(f"run {uid}: no projection within {idle_timeout_s:.0f} s")


def _stopped(catalog, uid: str) -> dict | None:
    """The run's stop document, or None while it runs (or is being rewritten by the bridge
    after a restart)."""
    try:
        return run_metadata(catalog[uid])[1]
    except KeyError:
        return None


def _recorded_angles(catalog, uid: str, ctx: RunContext, poll_s: float, timeout_s: float):
    """The projection angles the stopped run's events recorded (degrees, acquisition order);
    waits while the run is missing from the catalog or lacks its stop again (the bridge
    rewriting it after a restart)."""
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            docs = run_documents(catalog[uid])
            if any(name == "stop" for name, _ in docs):
                break
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise RunFailed(f"run {uid}: not whole in the catalog after its stop (waited "
                            f"{timeout_s:.0f} s to read its recorded angles)")
        time.sleep(poll_s)
    return scan_from_documents(docs, ctx.data_roots, tomo_plans=ctx.tomo_plans).angles_deg


def _start_document(catalog, uid: str, poll_s: float, timeout_s: float) -> dict:
    """The run's start document, once the catalog has it (the bridge writes it before the
    event that starts this flow; a restarted bridge rewrites the run)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return run_metadata(catalog[uid])[0]
        except KeyError:
            if time.monotonic() > deadline:
                raise RunFailed(f"run {uid}: not in the catalog within {timeout_s:.0f} s") \
                    from None
            time.sleep(poll_s)


@task(name="stream-run", cache_policy=NO_CACHE)
def stream_run(uid: str, ctx: RunContext, params: ReconParams, out: str, *,
               workers: int | None = None, scheduler: str | None = None,
               positions: dict | None = None, poll_s: float = 0.25,
               idle_timeout_s: float = 600.0, ui_every_s: float = 1.0) -> dict:
    """Stream run ``uid`` into ``out``. Returns ``{"streamed": False, "reason": ...}`` when it
    cannot (the flow then reconstructs at the stop), else the published volume's result with
    ``streamed: True``. Raises RunFailed when the run ends other than successfully.

    On the home's standing cluster the stream starter (``deployments/stream_starter.py``) has
    usually started the blocks at the run's first frame already: the flow adopts them when
    they were started as it would start them (``tasks.recon.stream_start``)."""
    from tomopipe.infra.cluster import dask_client
    from tomopipe.tasks.recon import stream_start
    from tomopipe.tasks.transfer.sites import load_transfer_config

    reason = stream_start.moved_refusal(
        bool(load_transfer_config(ctx.settings).transfer.destination))
    if reason:
        return {"streamed": False, "reason": reason}
    standing = bool(ctx.running and scheduler and scheduler == ctx.services.dask_scheduler)
    terms = stream_start.Terms(params, str(out), positions)
    catalog = catalog_for(ctx)
    claims: list = []  # what _stream claimed on the standing cluster
    with dask_client(scheduler=scheduler, workers=workers) as client:
        try:
            return _stream(client, catalog, uid, ctx, terms, claims if standing else None,
                           poll_s=poll_s, idle_timeout_s=idle_timeout_s, ui_every_s=ui_every_s)
        finally:
            if any(c.owned for c in claims):  # not another flow's run of the same uid
                stream_start.release(client, uid)


def _stream(client, catalog, uid: str, ctx: RunContext, terms, claims: list | None, *,
            poll_s: float, idle_timeout_s: float, ui_every_s: float) -> dict:
    """``claims``: on the home's standing cluster, a list to put the stream starter's offers
    claimed in (None elsewhere)."""
    from tomopipe.tasks.recon import stream_start, streaming
    from tomopipe.tasks.recon_tasks import record_state

    log = get_run_logger()
    params = terms.params

    def claim(mark_own: bool):
        if claims is None:
            return None, ""
        claims.append(stream_start.claim(client, uid, terms, mark_own=mark_own))
        if claims[-1].offered and claims[-1].run is None:  # aborted: other terms
            log.info("run %s: %s", uid, claims[-1].how)
        return claims[-1].run, claims[-1].how

    run, how = claim(mark_own=False)
    if run is not None:
        start = _start_document(catalog, uid, poll_s, idle_timeout_s)
    else:
        start, stop, spec = _wait_for_projections(catalog, uid, ctx, poll_s, idle_timeout_s)
        if spec is None:
            return {"streamed": False, "reason": "the run stopped before its first projection",
                    "stop": stop}
        run, how = claim(mark_own=True)  # the starter may have offered one meanwhile
        if run is None:
            run, reason = stream_start.start_stream(client, spec, start, params, terms.out,
                                                    positions=terms.positions,
                                                    extra_provenance={"run_uid": uid})
            if reason:
                log.info("run %s is reconstructed at the stop: %s", uid, reason)
                return {"streamed": False, "reason": reason}
            how = "started by the flow: " + (how or "not on the home's standing cluster")
    adopted = bool(claims) and claims[-1].run is run
    log.info("run %s streams in %s (%s)", uid, stream_start.describe(run), how)
    artifact = create_progress_artifact(0.0, key=None,
                                        description=f"live reconstruction of run {uid}")
    record_state(ctx, uid, "running", plan_name=start.get("plan_name"))
    planned, spec = run.planned, run.spec
    stop = None
    try:
        stop = _follow(run, catalog, uid, ctx, artifact, poll_s, ui_every_s, idle_timeout_s,
                       planned)
        ensure_succeeded(uid, stop)
        # the camera has closed its file before the stop: every frame is on disk
        n_frames = streaming.frames_on_disk(spec.projections[0])
        if run.center.get("provisional"):  # stopped before covering the half-turn
            _recenter(run, streaming.early_center(spec, params, planned, n_frames,
                                                  require_cover=False), uid)
        run.stop(n_frames)  # the blocks add the last frames while the events are read
        recorded = _recorded_angles(catalog, uid, ctx, poll_s, idle_timeout_s)
        result = run.finish(n_frames, recorded_deg=recorded,
                            angle_tolerance_deg=ctx.settings.stream.angle_tolerance_deg)
    except streaming.StreamDiscarded as exc:  # the blocks stopped, the partial removed
        log.warning("run %s is reconstructed at the stop: %s", uid, exc)
        return {"streamed": False, "reason": str(exc), "stop": stop}
    except BaseException as exc:
        run.abort(str(exc) or type(exc).__name__)
        raise
    if params.center == "auto":  # after the publish: it may take a centre search over the scan
        _check_center(result, run, params, planned, n_frames, uid)
    update_progress_artifact(artifact, 100.0, description=(
        f"published {result['output']}: {result['timings']['n_frames']} frames, last batch "
        f"and publish {result['timings']['last_batch_s'] + result['timings']['publish_s']:.2f}"
        " s after the stop reached the flow"))
    began = run.started - float(start.get("time", run.started))
    return {**result, "streamed": True, "live_path": str(run.live),
            "plan_name": start.get("plan_name"),
            "started_by": "starter" if adopted else "flow", "began_after_start_s": began,
            "adoption": how}


def _check_center(result: dict, run, params, planned, n_frames: int, uid: str) -> None:
    """Add the centre all frames give to ``result`` (the one found, when it was found from all
    of them; else a search over the scan) and how far the streamed one is from it
    (``center_all_frames``, ``center_off_px``), and say when that is more than CENTER_WARN_PX
    (the volume stays: reconstruct it again to change it)."""
    from tomopipe.tasks.recon import streaming

    log = get_run_logger()
    found = run.found
    if not found or found.get("frames") != n_frames:
        try:
            found = streaming.early_center(run.spec, params, planned, n_frames,
                                           require_cover=False)
        except (TomopipeError, OSError) as exc:
            log.warning("run %s: the centre of all frames could not be found to check the "
                        "streamed one: %s", uid, exc)
            return
    result["center_all_frames"] = float(found["value"])
    result["center_off_px"] = abs(float(found["value"]) - float(result["center"]))
    if result["center_off_px"] > streaming.CENTER_WARN_PX:
        log.warning("run %s: streamed with centre %.2f, %.2f px from %.2f, the centre of all "
                    "%d frames; the single-run deployment (uid, params {\"center\": %.2f}) "
                    "reconstructs it again with that one", uid,
                    result["center"], result["center_off_px"], result["center_all_frames"],
                    n_frames, result["center_all_frames"])


def _recenter(run, center: dict, uid: str) -> None:
    was = run.center["value"]
    run.recenter(center)
    again = "the live views start again with it" if run.center["value"] != was else \
        "the blocks go on"
    get_run_logger().info("run %s: centre %.2f (%s, confidence %.2f); %s", uid,
                          run.center["value"], run.center["method"],
                          center.get("confidence") or 0.0, again)


def _follow(run, catalog, uid, ctx, artifact, poll_s, ui_every_s, idle_timeout_s,
            planned) -> dict:
    """Show the live figures until the stop document, and find the centre once the landed
    frames cover the half-turn; returns the stop document."""
    from tomopipe.tasks.recon import streaming
    from tomopipe.tasks.storage.live_views import read_views

    last_ui, last_change, last_in, looked_at = 0.0, time.monotonic(), -1, -1
    key = _artifact_key(uid)
    while True:
        stop = _stopped(catalog, uid)  # the stop first: then only the last batch and publish
        if stop:
            return stop
        live = run.poll()
        if run.center.get("provisional") and live["frames_landed"] != looked_at:
            looked_at = live["frames_landed"]  # a search reads the frames: only on new ones
            found = streaming.early_center(run.spec, run.params, planned, looked_at)
            if found is not None:
                _recenter(run, found, uid)
        now = time.monotonic()
        if live["frames_in"] != last_in:
            last_in, last_change = live["frames_in"], now
        if now - last_ui >= ui_every_s:
            last_ui = now
            run_progress.record_live(ctx.home, uid, live["fraction"], str(run.live),
                                     updated=live["updated"])
            centre = (f"provisional centre {run.center['value']:.2f} (" +
                      run.center["method"] + ")" if run.center.get("provisional")
                      else f"centre {run.center['value']:.2f}")
            update_progress_artifact(artifact, 100.0 * live["fraction"], description=(
                f"{live['frames_in']} of {live['frames_landed']} landed frames in the live "
                f"views ({100 * live['fraction']:.0f} % of the angles); lag "
                f"{live['lag']} frames; {centre}"))
            if live["frames_in"]:
                create_image_artifact(live_png_data_url(read_views(run.live)), key=key,
                                      description=f"live slices of run {uid}: "
                                                  f"{100 * live['fraction']:.0f} % of the angles")
        if now - last_change > idle_timeout_s:
            raise RunFailed(f"run {uid}: nothing new for {idle_timeout_s:.0f} s and no stop "
                            f"document ({last_in} frames in)")
        time.sleep(poll_s)
