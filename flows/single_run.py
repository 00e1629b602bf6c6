"""Reconstruct one scan: a Bluesky run by uid (from the catalog) or a file by path.

``reconstruct_scan`` is the pipeline every flow shares (live, single run, backfill): stage,
reconstruct, publish, with the same tasks and the same parameters.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed
from tomopipe.tasks.recon_tasks import (
    output_for,
    publish,
    recon_params,
    reconstruct_volume,
    record_state,
)
from tomopipe.tasks.run_tasks import home_of, resolve_file, resolve_run, stage
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.config import load_settings
from tomopipe.errors import InputError, TomopipeError


def default_compute(home: Path, workers: int | None, scheduler: str | None):
    """The Dask scheduler of the home's services when there is one, else a local cluster."""
    if scheduler or workers is not None:
        return workers, scheduler
    from tomopipe.infra.state import read_services

    state = read_services(home) or {}
    return None, state.get("dask_scheduler")


def reconstruct_scan(spec: ScanSpec, *, home: str | None, source: str,
                     plan_name: str | None = None, params: dict | None = None,
                     workers: int | None = None, scheduler: str | None = None,
                     force: bool = False) -> dict:
    """Stage, reconstruct and publish one scan inside the calling flow (or task)."""
    h = home_of(home)
    settings = load_settings(h)
    recon = recon_params(settings, params)
    out, _ = output_for(settings, spec, recon)
    workers, scheduler = default_compute(h, workers, scheduler)
    record_state(str(h), source, "running", plan_name=plan_name)
    t0 = time.perf_counter()
    staged = stage(spec, str(h))
    t1 = time.perf_counter()
    # force: recompute even a complete volume with the same key, swapped in atomically at the end
    result = reconstruct_volume(staged, recon, str(out), workers=workers, scheduler=scheduler,
                                overwrite=force)
    t2 = time.perf_counter()
    published = publish(str(h), source, plan_name, result, recon,
                        {"stage_s": t1 - t0, "reconstruct_task_s": t2 - t1})
    return {**published, **results_back(settings, published["output"], source)}


def results_back(settings, volume: str, source: str) -> dict:
    """Send the published volume to ``transfer.results_to`` when that is configured.

    The volume is complete and recorded whatever happens here: a transfer that fails shows as a
    failed ``move-results-back`` task and in the returned ``results_back_error``, not as a
    failed reconstruction.
    """
    from tomopipe.tasks.transfer.base import TransferError
    from tomopipe.tasks.transfer.prefect_tasks import move_results_back
    from tomopipe.tasks.transfer.sites import load_transfer_config

    cfg = load_transfer_config(settings)
    if not cfg.transfer.results_to:
        return {}
    try:
        report = move_results_back(volume, run_uid=source, cfg=cfg)
    except (TransferError, TomopipeError, OSError) as exc:
        get_run_logger().error("the volume could not be sent back to %s: %s",
                               cfg.transfer.results_to, exc)
        return {"results_back_error": str(exc)}
    return {"results_back": report.destination}


def fail(home, source: str, plan_name: str | None, exc: BaseException):
    """Record the failure and end the flow in a Failed state carrying the reason."""
    message = str(exc) or type(exc).__name__
    record_state(home, source, "failed", plan_name=plan_name, message=message, mirror=True)
    get_run_logger().error("%s failed: %s", source, message)
    return Failed(message=message)


def record_unexpected(home, source: str, plan_name: str | None, exc: BaseException) -> None:
    """A fault we did not foresee (a bug, a lost Dask worker): record the run as failed, so it
    is not left "running", and let the caller re-raise it with its traceback for the UI."""
    record_state(home, source, "failed", plan_name=plan_name,
                 message=f"{type(exc).__name__}: {exc}", mirror=True)


@flow(name="single-run", log_prints=True)
def single_run(uid: str | None = None, path: str | None = None, data_path: str | None = None,
               params: dict | None = None, workers: int | None = None,
               scheduler: str | None = None, force: bool = False, home: str | None = None):
    """Reconstruct the run ``uid`` from the catalog, or the file ``path``."""
    if bool(uid) == bool(path):
        raise InputError("single-run", "give exactly one of uid or path")
    source = uid or str(Path(path).resolve())
    plan_name = None
    try:
        if uid:
            spec = resolve_run(uid, home)
            plan_name = spec.extra.get("plan_name")
        else:
            spec = resolve_file(source, data_path=data_path)
        return reconstruct_scan(spec, home=home, source=source, plan_name=plan_name,
                                params=params, workers=workers, scheduler=scheduler, force=force)
    except TomopipeError as exc:
        return fail(home, source, plan_name, exc)
    except Exception as exc:
        record_unexpected(home, source, plan_name, exc)
        raise


__all__ = ["single_run", "reconstruct_scan", "fail", "record_unexpected"]
