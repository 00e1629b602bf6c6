"""Reconstruct one scan: a Bluesky run by uid (from the catalog) or a file by path.

``reconstruct_scan`` is the pipeline every flow shares (live, single run, backfill): stage,
reconstruct, publish, with the same tasks and the same parameters.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed

from tasks.recon_tasks import (
    output_for,
    publish,
    recon_params,
    reconstruct_volume,
    record_state,
)
from tasks.run_tasks import home_of, resolve_file, resolve_run, stage
from tasks.sources.spec import ScanSpec
from tomopipe.config import load_settings
from tomopipe.errors import InputError, TomopipeError


def default_compute(home: Path, workers: int | None, scheduler: str | None):
    """The Dask scheduler of the home's services when there is one, else a local cluster."""
    if scheduler or workers is not None:
        return workers, scheduler
    from infra.state import read_services

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
    return published


def fail(home, source: str, plan_name: str | None, exc: BaseException):
    """Record the failure and end the flow in a Failed state carrying the reason."""
    message = str(exc) or type(exc).__name__
    record_state(home, source, "failed", plan_name=plan_name, message=message, mirror=True)
    get_run_logger().error("%s failed: %s", source, message)
    return Failed(message=message)


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


__all__ = ["single_run", "reconstruct_scan"]
