"""Reconstruct a catalog again: every tomography run matching the query that has no volume
with the same key yet, a few at a time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from tomopipe.flows.pipeline import flow_context, reconstruct_scan, record_unexpected
from tomopipe.tasks import results_table
from tomopipe.tasks.recon.params import recon_params
from tomopipe.tasks.recon_tasks import record_state
from tomopipe.tasks.run_tasks import find_runs, resolve_run
from tomopipe.tasks.storage.location import volume_location
from tomopipe.tasks.storage.omezarr import is_complete

from tomopipe.context import RunContext
from tomopipe.errors import InputError, TomopipeError

BUSY_S = 3600.0  # a run marked waiting/running more recently than this is left alone


@task(name="reconstruct-run", cache_policy=NO_CACHE)
def reconstruct_run(uid: str, ctx: RunContext, plan_name: str | None, params: dict | None,
                    workers: int | None, scheduler: str | None, force: bool) -> dict:
    """One run of the backfill: the same tasks as the live and single-run flows."""
    try:
        spec = resolve_run(uid, ctx)
        result = reconstruct_scan(spec, ctx, source=uid, plan_name=plan_name, params=params,
                                  workers=workers, scheduler=scheduler, force=force)
        return {"uid": uid, "state": "completed", "output": result["output"]}
    except TomopipeError as exc:
        record_state(ctx, uid, "failed", plan_name=plan_name, message=str(exc), mirror=True)
        return {"uid": uid, "state": "failed", "message": str(exc)}
    except Exception as exc:  # unforeseen: recorded, and shown as a failed task in the UI
        record_unexpected(ctx, uid, plan_name, exc)
        raise


@flow(name="backfill", log_prints=True)
def backfill(plan: str | None = None, since: str | None = None, until: str | None = None,
             sample: str | None = None, force: bool = False, concurrency: int = 2,
             params: dict | None = None, workers: int | None = None,
             scheduler: str | None = None, home: str | None = None) -> dict:
    """Returns {"matched", "reconstructed", "skipped", "failed"}."""
    if concurrency < 1:
        raise InputError("concurrency", f"must be at least 1, got {concurrency}")
    log = get_run_logger()
    ctx = flow_context(home)
    recon = recon_params(ctx.settings, params)
    matched = find_runs(ctx, plan=plan, since=since, until=until, sample=sample)
    rows, todo = [], []
    results = results_table.read_all(ctx.home)
    for run in matched:
        uid = run["uid"]
        if not run["stop"]:
            rows.append({"uid": uid, "state": "skipped", "message": "still running"})
            continue
        if run["stop"].get("exit_status") != "success":
            rows.append({"uid": uid, "state": "skipped",
                         "message": f"run ended {run['stop'].get('exit_status')}"})
            continue
        out = volume_location(ctx.output_root, uid, recon).path
        busy = results.get(uid, {})
        if busy.get("state") in ("waiting", "running") and \
                time.time() - busy.get("updated", 0) < BUSY_S and \
                not _flow_run_ended(busy.get("flow_run_id")):
            # a live flow (or another backfill) is on it: two writers on one volume lose data
            rows.append({"uid": uid, "state": "skipped", "message": "in progress elsewhere"})
            continue
        if is_complete(out) and not force:
            rows.append({"uid": uid, "state": "skipped", "message": "done (same key)"})
            continue
        todo.append(run)
    with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
        futures = [runner.submit(reconstruct_run, parameters={
            "uid": r["uid"], "ctx": ctx, "plan_name": r["plan_name"], "params": params,
            "workers": workers, "scheduler": scheduler, "force": force}) for r in todo]
        for run, future in zip(todo, futures, strict=True):
            try:
                rows.append(future.result())
            except Exception as exc:  # an unexpected fault in one run does not stop the rest
                rows.append({"uid": run["uid"], "state": "failed",
                             "message": f"{type(exc).__name__}: {exc}"})
    summary = {
        "matched": len(matched),
        "reconstructed": sum(r["state"] == "completed" for r in rows),
        "skipped": sum(r["state"] == "skipped" for r in rows),
        "failed": sum(r["state"] == "failed" for r in rows),
    }
    create_table_artifact([{k: str(r.get(k, "")) for k in ("uid", "state", "output", "message")}
                           for r in rows] or [{"uid": "", "state": "no runs matched"}],
                          key="backfill-runs", description=json.dumps(summary))
    _save_summary(ctx.home, summary)
    log.info("backfill: %s", summary)
    return summary


def _flow_run_ended(flow_run_id: str | None) -> bool:
    """True when the flow run a results row names is final in Prefect (crashed, say): its
    "running" row is stale, and the run is not done. A run still "crashed" in the table is not
    busy either, so the backfill takes it."""
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:  # unknown to this server: leave the row's word standing
        return False
    return state is not None and state.is_final()


def _save_summary(home: Path, summary: dict) -> None:
    """Kept under the home for `tomopipe backfill`, which waits for this flow run."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:
        run_id = None
    if not run_id:
        return
    folder = home / "backfill"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{run_id}.tmp"
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, folder / f"{run_id}.json")
