"""The analysis flow: what a reconstruction found, published as a Bluesky analysis run.

Started after each completed live run (prefect.yaml's ``analysis`` deployment fires on the live
flow run's ``prefect.flow-run.Completed`` event), or by hand with a raw run's ``uid``. It reads
the run's published volume and figures from the results table, measures the sample
(tasks/analysis), and publishes the analysis run (start naming the raw run's uid, one event,
stop) on the home's document bus, so the bridge writes it into the same catalog as the raw run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from tomopipe.flows.pipeline import flow_context
from tomopipe.tasks import results_table
from tomopipe.tasks.analysis.prefect_tasks import analyze_volume, publish_analysis

from tomopipe.errors import InputError

FLOW_RUN_PREFIX = "prefect.flow-run."


def _uid_of_flow_run(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    run_id = flow_run_id.removeprefix(FLOW_RUN_PREFIX)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    uid = (run.parameters or {}).get("uid")
    if not uid:
        raise InputError(flow_run_id, "the flow run has no uid parameter")
    return str(uid)


@flow(name="analysis", log_prints=True)
def analyze_run(uid: str | None = None, flow_run_id: str | None = None,
                home: str | None = None) -> dict:
    """Measure run ``uid``'s published volume (or that of the live flow run ``flow_run_id``)
    and publish the analysis run; returns the measurements with ``analysis_uid``."""
    ctx = flow_context(home)
    if not uid:
        if not flow_run_id:
            raise InputError("analysis", "give a run uid or a flow run id")
        uid = _uid_of_flow_run(flow_run_id)
    row = results_table.read_one(ctx.home, uid)
    if not row or row["state"] != "completed" or not row["output"]:
        state = row["state"] if row else "not reconstructed"
        raise InputError(uid, f"no published volume to analyse (state: {state})")
    details = row.get("details") or {}
    figures = {"center": row.get("center"), "center_confidence": details.get("center_confidence"),
               "center_method": details.get("center_method")}
    found = analyze_volume(row["output"], figures)
    analysis_uid = publish_analysis(ctx, uid, found)
    get_run_logger().info("sample %s in %s", "found" if found["sample_found"] else
                          f"not found ({found['sample_reason']})", row["output"])
    return {**found, "analysis_uid": analysis_uid, "raw_uid": uid}
