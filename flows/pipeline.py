"""The pipeline every flow shares (live run, single run, backfill): stage, reconstruct, publish,
send the volume back, with the same tasks and the same parameters; and how a flow records a
run that failed.

Each function takes the flow's ``RunContext``, built once per flow run.
"""

from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.states import Failed
from tomopipe.tasks.recon.params import recon_params
from tomopipe.tasks.recon_tasks import publish, reconstruct_volume, record_state
from tomopipe.tasks.run_tasks import stage
from tomopipe.tasks.sources.spec import ScanSpec
from tomopipe.tasks.storage.location import volume_location

from tomopipe.context import RunContext, run_context
from tomopipe.errors import TomopipeError

# A flow run the worker takes while `tomopipe up` is still starting the services (the worker
# starts early, and re-runs the runs a crash left) waits this long for them: up's own default
UP_WAIT_S = 180.0


def flow_context(home: str | None) -> RunContext:
    """The run context of a flow run: ``run_context``, waiting for a ``tomopipe up`` that is
    starting the services."""
    return run_context(home, wait_for_up_s=UP_WAIT_S)


def default_compute(ctx: RunContext, workers: int | None,
                    scheduler: str | None) -> tuple[int | None, str | None]:
    """(workers, scheduler): what the flow was given, else the home's standing Dask scheduler,
    else (None, None): a local cluster for this run."""
    if scheduler or workers is not None:
        return workers, scheduler
    return None, ctx.services.dask_scheduler if ctx.running else None


def reconstruct_scan(spec: ScanSpec, ctx: RunContext, *, source: str,
                     plan_name: str | None = None, params: dict | None = None,
                     workers: int | None = None, scheduler: str | None = None,
                     force: bool = False, live: bool = False) -> dict:
    """Stage, reconstruct and publish one scan inside the calling flow (or task).

    ``live``: the run was just acquired; on an adaptive cluster the reconstruction asks for the
    workers that keep up with its acquisition rate (any other run: the backfill deadline)."""
    recon = recon_params(ctx.settings, params)
    out = volume_location(ctx.output_root, spec, recon).path
    workers, scheduler = default_compute(ctx, workers, scheduler)
    record_state(ctx, source, "running", plan_name=plan_name)
    t0 = time.perf_counter()
    staged = stage(spec, ctx)
    t1 = time.perf_counter()
    # force: recompute even a complete volume with the same key, swapped in atomically at the end
    rate = staged.extra.get("frames_per_s") if live else None
    result = reconstruct_volume(staged, recon, str(out), workers=workers, scheduler=scheduler,
                                overwrite=force, frames_per_s=rate)
    t2 = time.perf_counter()
    published = publish(ctx, source, plan_name, result, recon,
                        {"stage_s": t1 - t0, "reconstruct_task_s": t2 - t1})
    return {**published, **results_back(ctx, published["output"], source)}


def results_back(ctx: RunContext, volume: str, source: str) -> dict:
    """Send the published volume to ``transfer.results_to`` when that is configured.

    The volume is complete and recorded whatever happens here: a transfer that fails shows as a
    failed ``move-results-back`` task and in the returned ``results_back_error``, not as a
    failed reconstruction.
    """
    from tomopipe.tasks.transfer.base import TransferError
    from tomopipe.tasks.transfer.prefect_tasks import move_results_back
    from tomopipe.tasks.transfer.sites import load_transfer_config

    cfg = load_transfer_config(ctx.settings)
    if not cfg.transfer.results_to:
        return {}
    try:
        report = move_results_back(volume, run_uid=source, cfg=cfg)
    except (TransferError, TomopipeError, OSError) as exc:
        get_run_logger().error("the volume could not be sent back to %s: %s",
                               cfg.transfer.results_to, exc)
        return {"results_back_error": str(exc)}
    return {"results_back": report.destination}


def fail(ctx: RunContext, source: str, plan_name: str | None, exc: BaseException):
    """Record the failure and end the flow in a Failed state carrying the reason."""
    message = str(exc) or type(exc).__name__
    record_state(ctx, source, "failed", plan_name=plan_name, message=message, mirror=True)
    get_run_logger().error("%s failed: %s", source, message)
    return Failed(message=message)


def record_unexpected(ctx: RunContext, source: str, plan_name: str | None,
                      exc: BaseException) -> None:
    """A fault we did not foresee (a bug, a lost Dask worker): record the run as failed, so it
    is not left "running", and let the caller re-raise it with its traceback for the UI."""
    record_state(ctx, source, "failed", plan_name=plan_name,
                 message=f"{type(exc).__name__}: {exc}", mirror=True)
