"""Prefect tasks around the reconstruction engine: parameters, reconstruct, publish.

``publish`` turns a result into what the Prefect UI shows (preview image, table of figures,
link to the volume) and records it (``tasks.results_table``). Where a volume goes is decided by
``tasks.storage.location``.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from tomopipe.tasks import results_table
from tomopipe.tasks.catalog import catalog_for
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.run_tasks import RETRY
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.context import RunContext


@task(name="reconstruct", **RETRY)
def reconstruct_volume(spec: ScanSpec, params: ReconParams, out: str, *,
                       workers: int | None = None, scheduler: str | None = None,
                       overwrite: bool = False, frames_per_s: float | None = None) -> dict:
    """Reconstruct with the engine, its slab progress shown as a progress artifact
    (``frames_per_s``: a live run's acquisition rate, for its request for workers)."""
    from tomopipe.tasks.recon.engine import reconstruct

    artifact = create_progress_artifact(0.0, description=f"reconstructing {spec.label}")
    state = {"last": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - state["last"] < 0.5:
            return  # the UI needs no more than two updates a second
        state["last"] = now
        update_progress_artifact(artifact, 100.0 * done / max(1, total),
                                 description=f"{done}/{total} slabs of {spec.label}")

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    staging = {k: spec.extra[k] for k in ("manifest", "transfer") if k in spec.extra}
    result = reconstruct(spec, params, out, workers=workers, scheduler=scheduler,
                         progress=progress, overwrite=overwrite, frames_per_s=frames_per_s,
                         extra_provenance={"run_uid": spec.identity, **staging})
    update_progress_artifact(artifact, 100.0, description=f"done: {out}")
    return result.to_dict()


@task(name="publish", cache_policy=NO_CACHE)
def publish(ctx: RunContext, source: str, plan_name: str | None, result: dict,
            params: ReconParams, timings: dict | None = None) -> dict:
    """Preview, artifacts and the result record of a finished reconstruction."""
    from tomopipe.tasks.preview import write_preview

    log = get_run_logger()
    out = Path(result["output"])
    png = write_preview(out)
    figures = {
        "source": source, "output": str(out), "key": result["key"],
        "center": result["center"], "center_method": result.get("center_method"),
        "center_confidence": result.get("center_confidence"), "backend": result["backend"],
        "shape": "x".join(str(s) for s in result["shape"]), "skipped": result.get("skipped"),
        "recon_s": round(result["seconds"], 3),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in (timings or {}).items()},
        **{f"param.{k}": v for k, v in params.to_dict().items()},
    }
    artifact_key = _artifact_key(source)
    create_table_artifact([{"name": k, "value": str(v)} for k, v in figures.items()],
                          key=f"{artifact_key}-figures",
                          description=f"reconstruction of {source}")
    # A data: URL, not file://: a browser refuses file:// images on an http:// page.
    create_image_artifact(_png_data_url(png), key=f"{artifact_key}-preview",
                          description=f"orthogonal slices of {out.name}")
    create_markdown_artifact(_preview_markdown(source, out, png, figures),
                             key=f"{artifact_key}-summary",
                             description=f"reconstruction of {source}")
    create_link_artifact(out.as_uri(), link_text=str(out), key=f"{artifact_key}-volume",
                         description="the OME-Zarr volume")
    row = results_table.record(ctx.home, source, "completed", plan_name=plan_name, output=str(out),
                                   key=result["key"], center=result["center"],
                                   details={"preview": str(png), **figures})
    _mirror(ctx, source, row)
    log.info("published %s for %s (preview %s)", out, source, png)
    return {**result, "preview": str(png)}


def _artifact_key(source: str) -> str:
    # artifact keys: lowercase letters, digits and dashes only
    text = "".join(c if c.isalnum() else "-" for c in str(source).lower())
    return ("run-" + text.strip("-"))[:60].rstrip("-")


def _png_data_url(png: Path) -> str:
    """The PNG inline as a data: URL (previews are small: at most 512 px a plane)."""
    return f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"


def _preview_markdown(source: str, out: Path, png: Path, figures: dict) -> str:
    image = f"![preview]({_png_data_url(png)})"
    rows = "\n".join(f"| {k} | {v} |" for k, v in figures.items() if not k.startswith("param."))
    return (f"# {source}\n\n{image}\n\nVolume: [{out}]({out.as_uri()})\n\n"
            f"| figure | value |\n|---|---|\n{rows}\n")


def _mirror(ctx: RunContext, source: str, row: dict) -> None:
    """Best-effort copy of the record into the catalog (runs only, not files)."""
    try:
        catalog = catalog_for(ctx)
    except Exception:  # no services, or Tiled down: the results table holds the truth
        return
    if source in catalog:
        results_table.mirror_to_catalog(catalog, source, row)


def record_state(ctx: RunContext, source: str, state: str, *, plan_name: str | None = None,
                 message: str | None = None, mirror: bool = False) -> None:
    """Plain function (not a task): record waiting/running/failed states as they happen."""
    flow_run_id = None
    try:
        from prefect.runtime import flow_run

        flow_run_id = flow_run.id
    except Exception:
        pass
    row = results_table.record(ctx.home, source, state, plan_name=plan_name, message=message,
                                   flow_run_id=flow_run_id)
    if mirror:
        _mirror(ctx, source, row)
