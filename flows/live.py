"""The live flow: started by a run's ``bluesky.run.start`` event, it streams the run (the
volume grows on the Dask workers as frames land, with live views; ``flows/stream.py``) and
publishes it at the stop. A run that cannot stream (the reason is logged) is followed as frames
land and reconstructed whole when the stop document arrives.

A run that aborts or fails ends this flow Failed with the run's reason, and makes no volume.
"""

from __future__ import annotations

from prefect import flow
from tomopipe.flows.pipeline import fail, flow_context, reconstruct_scan, record_unexpected
from tomopipe.flows.stream import decline_offer, stream_scan
from tomopipe.tasks.recon_tasks import record_state
from tomopipe.tasks.run_tasks import RunFailed, ensure_succeeded, follow_run, resolve_run

from tomopipe.errors import TomopipeError


@flow(name="live-run", log_prints=True)
def live_run(uid: str, params: dict | None = None, workers: int | None = None,
             scheduler: str | None = None, poll_s: float = 0.25,
             idle_timeout_s: float = 600.0, home: str | None = None, stream: bool = True,
             live_positions: dict | None = None):
    """Stream run ``uid`` (``stream``; ``live_positions``: ``{z, y, x}`` planes of the live
    views, default the middle), else follow it to its stop document and reconstruct it."""
    ctx = flow_context(home)
    plan_name = None
    record_state(ctx, uid, "waiting")
    try:
        stop = None
        if not stream:
            decline_offer(ctx, uid, "the live flow was asked not to stream")
        else:
            streamed, stop = stream_scan(ctx, uid, params=params, workers=workers,
                                         scheduler=scheduler, positions=live_positions,
                                         poll_s=poll_s, idle_timeout_s=idle_timeout_s)
            if streamed is not None:
                return streamed
        if stop is None:
            follow_run(uid, ctx, poll_s=poll_s, idle_timeout_s=idle_timeout_s)
        else:  # the run ended before it could stream: nothing to follow
            ensure_succeeded(uid, stop)
        spec = resolve_run(uid, ctx)
        plan_name = spec.extra.get("plan_name")
        return reconstruct_scan(spec, ctx, source=uid, plan_name=plan_name, params=params,
                                workers=workers, scheduler=scheduler, live=True)
    except (RunFailed, TomopipeError) as exc:
        return fail(ctx, uid, plan_name, exc)
    except Exception as exc:
        record_unexpected(ctx, uid, plan_name, exc)
        raise
