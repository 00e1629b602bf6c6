"""Prefect tasks about runs: find them, follow one as it lands, resolve it to a ScanSpec, stage.

Thin wrappers over ``tasks.catalog`` (catalog access) and ``tasks.sources``; retried on transient
faults (a service that cannot be reached), never on bad input. Each takes the flow's
``RunContext`` (``tomopipe.context``) for the home's settings and service addresses.
"""

from __future__ import annotations

import time

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from tomopipe.tasks import results_table
from tomopipe.tasks.catalog import (
    catalog_for,
    frames_landed,
    get_run,
    run_documents,
    run_metadata,
    search_runs,
)
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.context import RunContext
from tomopipe.errors import InputError, ServiceError


class RunFailed(Exception):
    """The run itself ended badly (aborted, failed, went silent): nothing to reconstruct."""


def transient(task, task_run, state) -> bool:
    """Retry only when a service could not be reached; bad input fails at once."""
    try:
        state.result(raise_on_failure=True)
    except (ServiceError, httpx.TransportError, ConnectionError, TimeoutError):
        return True
    except Exception:
        return False
    return False


RETRY = {"retries": 3, "retry_delay_seconds": [1, 2, 4], "retry_condition_fn": transient,
         "cache_policy": NO_CACHE}


@task(name="find-runs", **RETRY)
def find_runs(ctx: RunContext, *, plan: str | None = None, since=None, until=None,
              sample: str | None = None, tomo_only: bool = True) -> list[dict]:
    """Runs of the catalog matching the criteria: [{uid, plan_name, start, stop}], oldest first."""
    from tomopipe.tasks.sources.bluesky_run import is_tomo_run

    catalog = catalog_for(ctx)
    found = []
    for uid in search_runs(catalog, plan=plan, since=since, until=until, sample=sample):
        start, stop = run_metadata(catalog[uid])
        if tomo_only and not is_tomo_run(start, ctx.tomo_plans):
            continue
        found.append({"uid": uid, "plan_name": start.get("plan_name"), "stop": stop})
    return found


@task(name="follow-run", **RETRY)
def follow_run(uid: str, ctx: RunContext, *, poll_s: float = 0.25,
               idle_timeout_s: float = 600.0) -> dict:
    """Wait for the run's stop document, showing frames landed as a progress artifact.

    Returns the stop document; raises RunFailed when the run ends other than successfully or
    nothing new arrives for ``idle_timeout_s``.
    """
    log = get_run_logger()
    catalog = catalog_for(ctx)
    deadline = time.monotonic() + 60.0  # the bridge writes the start before the event fires
    while True:
        try:
            run = catalog[uid]
            break
        except KeyError:
            if time.monotonic() > deadline:
                raise InputError(uid, "no such run in the catalog") from None
            time.sleep(poll_s)
    start, stop = run_metadata(run)
    expected = _expected_frames(start)
    results_table.record(ctx.home, uid, "waiting", plan_name=start.get("plan_name"))
    artifact = create_progress_artifact(0.0, description=f"frames landed of run {uid}")
    last_count, last_change, last_look = -1, time.monotonic(), 0.0
    while True:
        try:
            run = catalog[uid]  # one request: the run's metadata, where the stop lands
            start, stop = run_metadata(run)
            # counting frames takes a request per stream: at most once a second
            if stop or time.monotonic() - last_look > 1.0:
                count, last_look = frames_landed(run), time.monotonic()
            else:
                count = last_count
        except KeyError:  # the bridge is rebuilding the run after a restart
            count = last_count
        if count != last_count:
            last_count, last_change = count, time.monotonic()
            pct = 100.0 * count / expected if expected else (100.0 if stop else 50.0)
            update_progress_artifact(artifact, min(100.0, pct),
                                     description=f"{count} frames landed of run {uid}")
        if stop:
            break
        if time.monotonic() - last_change > idle_timeout_s:
            raise RunFailed(f"run {uid}: nothing new for {idle_timeout_s:.0f} s and no stop "
                            f"document ({count} frames landed)")
        time.sleep(poll_s)
    update_progress_artifact(artifact, 100.0, description=f"{last_count} frames landed; stopped")
    log.info("run %s stopped (%s) with %d frames", uid, stop.get("exit_status"), last_count)
    return ensure_succeeded(uid, stop)


def ensure_succeeded(uid: str, stop: dict) -> dict:
    """The stop document of a run that ended successfully; RunFailed with its reason if not."""
    status = stop.get("exit_status")
    if status != "success":
        reason = stop.get("reason") or "no reason given"
        raise RunFailed(f"run {uid} ended with exit_status {status!r}: {reason}")
    return stop


def _expected_frames(start: dict) -> int | None:
    tomo = start.get("tomo") if isinstance(start.get("tomo"), dict) else {}
    parts = [tomo.get(k) for k in ("n_angles", "n_flats", "n_darks")]
    if isinstance(parts[0], int):
        return sum(p for p in parts if isinstance(p, int))
    n = start.get("num_points")
    return n if isinstance(n, int) and n > 0 else None


@task(name="resolve-run", **RETRY)
def resolve_run(uid: str, ctx: RunContext) -> ScanSpec:
    """The run's ScanSpec from its documents in the catalog."""
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    docs = run_documents(get_run(catalog_for(ctx), uid))
    return scan_from_documents(docs, ctx.data_roots, tomo_plans=ctx.tomo_plans)


@task(name="resolve-file", **RETRY)
def resolve_file(path: str, *, data_path: str | None = None,
                 require_flats: bool = True) -> ScanSpec:
    """The file's ScanSpec; ``require_flats=False`` when the parameters name flat-field files."""
    from tomopipe.tasks.sources import open_scan

    return open_scan(path, data_path=data_path, require_flats=require_flats)


@task(name="stage", **RETRY)
def stage(spec: ScanSpec, ctx: RunContext) -> ScanSpec:
    """Make the scan's files readable where it is reconstructed; returns the spec to use.

    Every file a run references is resolved under the data roots, listed in a manifest with its
    size and checksum, and moved to the configured destination (local copy or Globus) and
    verified there; with no destination configured the files are read in place. The manifest
    (and the transfer's summary) ride in ``spec.extra`` into the volume's provenance.
    """
    from tomopipe.tasks.transfer.ledger import ledger_dir
    from tomopipe.tasks.transfer.prefect_tasks import move_scan_data
    from tomopipe.tasks.transfer.sites import load_transfer_config

    settings = ctx.settings
    # The manifest resolves every path (under the data roots, for a run) and refuses missing
    # files, naming them.
    from_run = spec.extra.get("source") == "bluesky"
    return move_scan_data.fn(spec, data_roots=settings.data_roots if from_run else None,
                             cfg=load_transfer_config(settings),
                             ledger=str(ledger_dir(settings.home)))
