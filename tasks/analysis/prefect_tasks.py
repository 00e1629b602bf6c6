"""Prefect tasks around the analysis: measure a published volume, publish the analysis
documents on the bus, and show an agent's decision with its inputs as an artifact."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from tomopipe.tasks.analysis.bus_publish import publish_documents
from tomopipe.tasks.analysis.documents import analysis_documents, decision_documents
from tomopipe.tasks.analysis.measure import measurements
from tomopipe.tasks.analysis.volume_io import read_level, read_live

from tomopipe.context import RunContext


@task(name="analyze-volume", cache_policy=NO_CACHE)
def analyze_volume(volume: str, figures: dict) -> dict:
    """The measurements of a published volume (``figures``: the results row's centre,
    confidence and method)."""
    level, full = read_level(volume)
    return measurements(level, full_shape=full, center=figures.get("center"),
                        center_confidence=figures.get("center_confidence"),
                        center_method=figures.get("center_method"), live=read_live(volume),
                        volume_path=volume)


@task(name="publish-analysis", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def publish_analysis(ctx: RunContext, raw_uid: str, found: dict, *, sample: str | None = None
                     ) -> str:
    """Publish the analysis run of ``raw_uid`` on the home's bus; returns its uid."""
    docs = analysis_documents(raw_uid, found, sample=sample, beamline=ctx.settings.beamline)
    publish_documents(ctx.services.zmq_in, docs, serializer=ctx.settings.bus.serializer)
    uid = docs[0][1]["uid"]
    get_run_logger().info("analysis %s of %s published: %s", uid, raw_uid, docs[0][1]["summary"])
    return uid


@task(name="publish-decision", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def publish_decision(ctx: RunContext, raw_uid: str, decision: dict, *,
                     analysis_uid: str | None = None, queued: list | None = None) -> str:
    """Record an agent's decision with its inputs: as a Bluesky run on the bus (so in the
    catalog) and as a markdown artifact of this flow run. Returns the decision run's uid."""
    docs = decision_documents(raw_uid, decision, analysis_uid=analysis_uid, queued=queued)
    publish_documents(ctx.services.zmq_in, docs, serializer=ctx.settings.bus.serializer)
    rows = "\n".join(f"| {k} | `{json.dumps(v, default=str)}` |"
                     for k, v in (decision.get("inputs") or {}).items())
    text = (f"# {decision['action']}: {raw_uid}\n\n{decision['reason']}\n\n"
            f"Moves: `{json.dumps(decision.get('moves') or {})}`  \n"
            f"Next scan: `{json.dumps(decision.get('scan') or {})}`  \n"
            f"Queued: `{json.dumps(queued or [])}`  \n"
            f"Analysis run: `{analysis_uid}`; decision run: `{docs[0][1]['uid']}`\n\n"
            f"| input | value |\n|---|---|\n{rows}\n")
    key = "decision-" + "".join(c if c.isalnum() else "-" for c in raw_uid.lower())[:40]
    create_markdown_artifact(text, key=key.rstrip("-"),
                             description=f"steering decision on {raw_uid}")
    return docs[0][1]["uid"]


@task(name="wait-for-analysis", cache_policy=NO_CACHE)
def wait_for_analysis(ctx: RunContext, raw_uid: str, *, timeout_s: float = 600.0,
                      poll_s: float = 0.5) -> tuple[str, dict]:
    """(analysis run uid, measurements) of ``raw_uid``, once it is in the catalog."""
    import time

    from tomopipe.tasks.analysis.queue_client import find_analysis
    from tomopipe.tasks.catalog import catalog_for

    from tomopipe.errors import ServiceError

    catalog = catalog_for(ctx)
    deadline = time.monotonic() + timeout_s
    while True:
        found = find_analysis(catalog, raw_uid)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise ServiceError(f"run {raw_uid}: no analysis in the catalog after "
                               f"{timeout_s:.0f} s (was it reconstructed?)")
        time.sleep(poll_s)


@task(name="queue-plans", cache_policy=NO_CACHE)
def queue_plans(ctx: RunContext, plans: list[tuple[str, list, dict]], *, start: bool = True
                ) -> list[str]:
    """Submit plans to the home's queue server and (``start``) start the queue; the item uids."""
    from tomopipe.tasks.analysis.queue_client import submit

    uids = submit(ctx.services.queue_control, plans, start=start)
    get_run_logger().info("queued %s as %s", [p[0] for p in plans], uids)
    return uids


@task(name="stop-scan", cache_policy=NO_CACHE)
def stop_scan(ctx: RunContext, uid: str, reason: str) -> None:
    """End the running scan through the queue server before its next projection; its stop
    document says ``reason``."""
    from tomopipe.tasks.analysis.queue_client import stop_running

    stop_running(ctx.services.queue_control, reason)
    get_run_logger().info("asked the queue server to stop %s", uid)
