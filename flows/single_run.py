"""Reconstruct one scan: a Bluesky run by uid (from the catalog) or a file by path."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from tomopipe.flows.pipeline import fail, flow_context, reconstruct_scan, record_unexpected
from tomopipe.tasks.recon.params import recon_params
from tomopipe.tasks.run_tasks import resolve_file, resolve_run

from tomopipe.errors import InputError, TomopipeError


@flow(name="single-run", log_prints=True)
def single_run(uid: str | None = None, path: str | None = None, data_path: str | None = None,
               params: dict | None = None, workers: int | None = None,
               scheduler: str | None = None, force: bool = False, home: str | None = None):
    """Reconstruct the run ``uid`` from the catalog, or the file ``path``."""
    if bool(uid) == bool(path):
        raise InputError("single-run", "give exactly one of uid or path")
    ctx = flow_context(home)
    source = uid or str(Path(path).resolve())
    plan_name = None
    try:
        if uid:
            spec = resolve_run(uid, ctx)
            plan_name = spec.extra.get("plan_name")
        else:
            # flats may come from other files (the flats parameter, or config.yaml's)
            flats_elsewhere = bool(recon_params(ctx.settings, params).flats)
            spec = resolve_file(source, data_path=data_path, require_flats=not flats_elsewhere)
        return reconstruct_scan(spec, ctx, source=source, plan_name=plan_name, params=params,
                                workers=workers, scheduler=scheduler, force=force)
    except TomopipeError as exc:
        return fail(ctx, source, plan_name, exc)
    except Exception as exc:
        record_unexpected(ctx, source, plan_name, exc)
        raise
