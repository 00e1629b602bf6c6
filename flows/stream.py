"""Streaming inside the live flow: the volume grows while the scan runs, and at the stop only
the last frames, the pyramid and the publish remain.

``stream_scan`` returns no volume when the run cannot stream (the reason is logged), and the
live flow then follows the run and reconstructs it at the stop as before (at once, when the run
had already stopped: a scan shorter than the flow's start). Backfill and single runs
never stream: their runs are complete.
"""

from __future__ import annotations

from prefect import get_run_logger
from tomopipe.flows.pipeline import default_compute, results_back
from tomopipe.tasks.recon.params import recon_params
from tomopipe.tasks.recon_tasks import publish
from tomopipe.tasks.storage.location import volume_location
from tomopipe.tasks.stream_tasks import stream_run

from tomopipe.context import RunContext
from tomopipe.errors import TomopipeError


def stream_scan(ctx: RunContext, uid: str, *, params: dict | None = None,
                workers: int | None = None, scheduler: str | None = None,
                positions: dict | None = None, poll_s: float = 0.25,
                idle_timeout_s: float = 600.0) -> tuple[dict | None, dict | None]:
    """Stream run ``uid`` and publish its volume: (published volume, None); when it cannot
    stream, (None, the run's stop document if it has already stopped, else None)."""
    recon = recon_params(ctx.settings, params)
    out = volume_location(ctx.output_root, uid, recon).path
    workers, scheduler = default_compute(ctx, workers, scheduler)
    if ctx.running and scheduler != ctx.services.dask_scheduler:
        decline_offer(ctx, uid, "the live flow computes elsewhere")
    result = stream_run(uid, ctx, recon, str(out), workers=workers, scheduler=scheduler,
                        positions=positions, poll_s=poll_s, idle_timeout_s=idle_timeout_s)
    if not result.get("streamed"):
        get_run_logger().info("run %s is reconstructed at the stop: %s", uid, result["reason"])
        return None, result.get("stop")
    timings = result["timings"]
    figures = {"stream_last_batch_s": timings["last_batch_s"],
               "stream_publish_s": timings["publish_s"],
               "stream_batches": timings["batches"],
               "stream_largest_batch": timings["largest_batch"],
               "stream_started_by": result["started_by"],
               "stream_began_after_start_s": result["began_after_start_s"],
               "stream_adoption": result["adoption"],
               **{k: result[k] for k in ("center_all_frames", "center_off_px") if k in result}}
    published = publish(ctx, uid, result.get("plan_name"), result, recon, figures)
    return {**published, "live_path": result["live_path"],
            **results_back(ctx, published["output"], uid)}, None


def decline_offer(ctx: RunContext, uid: str, reason: str) -> None:
    """Abort a stream the stream starter began for run ``uid`` on the standing cluster, for a
    flow that will not adopt it (``reason``), rather than let it hold the workers until the
    starter's grace after the stop. Nothing when no services or cluster are up."""
    from tomopipe.infra.cluster import dask_client
    from tomopipe.tasks.recon import stream_start

    if not (ctx.running and ctx.services.dask_scheduler):
        return
    try:
        with dask_client(scheduler=ctx.services.dask_scheduler) as client:
            if stream_start.abandon(client, uid, reason):
                get_run_logger().info("run %s: aborted the stream started at its first frame: "
                                      "%s", uid, reason)
    except TomopipeError as exc:  # the cluster is down: its blocks went with it
        get_run_logger().warning("run %s: could not look for a stream started at its first "
                                 "frame: %s", uid, exc)
