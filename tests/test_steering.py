"""Steering on the real services: the session's `tomopipe up` with the queue added
(`tomopipe up --with-queue`: real Redis, real RE Manager running the simulated beamline).

- Bad analysis never moves a motor: an analysis run that found no sample, or a centre of low
  confidence, on the bus; the align agent (flows/steering.steer_align, in this process against
  the home's Prefect server) refuses, says why, queues nothing, and its decision is recorded
  with its inputs in the catalog and as an artifact.
- Align and zoom end to end (slow): `tomopipe simulate --sample-offset DX,DY --steer align`;
  the full scan's uid is printed last, `tomopipe runs --json` shows it `steered_by` the quick
  scan, and the analysis of its volume finds the sample within 2 px of the axis.
"""

from __future__ import annotations

import json
import shutil
import uuid

import httpx
import pytest
from conftest import tomopipe_cli
from test_flows_support import e2_services, wait_for  # noqa: F401  (fixture)

from tomopipe.context import prefect_api_scope

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (make redis)")


@pytest.fixture(scope="session")
def queue_services(e2_services):  # noqa: F811
    """The session's services with the queue added; (home, state)."""
    from tomopipe.infra.services import view

    home, _ = e2_services
    proc = tomopipe_cli("up", "--with-queue", "--timeout=200", home=home, timeout=260)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = view(home)
    assert state.get("queue_control") and "queue" in state["pids"]
    return home, state


def _catalog(home):
    from tomopipe.tasks.catalog import catalog_for_home

    return catalog_for_home(home)


def _decisions(home, raw_uid):
    from databroker.queries import Key

    return [dict(node.metadata["start"]) for node in
            _catalog(home).search(Key("analyzes") == raw_uid).values()
            if node.metadata["start"].get("plan_name") == "steering_decision"]


def _queue_items(state) -> list:
    from tomopipe.tasks.analysis.queue_client import manager

    rm = manager(state["queue_control"])
    try:
        return rm.queue_get()["items"]
    finally:
        rm.close()


@pytest.mark.parametrize("bad, why", [
    ({"sample_found": 0, "sample_reason": "no sample: only noise"}, "only noise"),
    ({"center_confidence": 0.12}, "confidence is 0.12"),
])
def test_bad_analysis_never_moves_a_motor(queue_services, bad, why):
    from tomopipe.flows.steering import steer_align
    from tomopipe.tasks.analysis.bus_publish import publish_documents
    from tomopipe.tasks.analysis.documents import analysis_documents

    home, state = queue_services
    raw_uid = f"raw-{uuid.uuid4()}"
    measured = {"sample_found": 1, "center": 64.0, "center_confidence": 0.9,
                "offset_x_px": 12.0, "offset_y_px": -4.0, "row_start": 4, "row_stop": 12,
                "volume_rows": 16, "volume": "/nowhere.zarr", **bad}
    publish_documents(state["zmq_in"], analysis_documents(raw_uid, measured))
    before = _queue_items(state)
    # the home's Prefect API, whatever server an earlier test left this process pointed at
    with prefect_api_scope(state["prefect_api"]):
        result = steer_align(raw_uid, {"angles": 90, "size": 64, "rows": 16}, home=str(home),
                             timeout_s=120)
    decision = result["decision"]
    assert decision["action"] == "refuse" and why in decision["reason"]
    assert decision["moves"] == {} and result["queued"] == []
    assert _queue_items(state) == before  # nothing queued
    recorded = wait_for(lambda: _decisions(home, raw_uid), 60, 0.5, "the decision run")
    assert recorded[0]["decision"]["action"] == "refuse"
    assert recorded[0]["decision"]["inputs"]["raw_uid"] == raw_uid
    assert recorded[0]["analysis_uid"] == result["analysis_uid"]
    arts = httpx.post(f"{state['prefect_api']}/artifacts/filter", json={
        "artifacts": {"key": {"like_": "decision-raw-"}}}, timeout=30).json()
    assert any(why in (a.get("data") or "") for a in arts)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_align_and_zoom_centres_the_sample(queue_services):
    from tomopipe.tasks.analysis.queue_client import find_analysis

    home, state = queue_services
    proc = tomopipe_cli("simulate", "--sample-offset", "15,-8", "--steer", "align",
                        "--size", "128", "--rows", "16", "--angles", "180", "--seed", "4",
                        "--timeout", "600", home=home, timeout=1400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full_uid = proc.stdout.strip().splitlines()[-1]
    runs = json.loads(tomopipe_cli("runs", "--json", home=home, check=True).stdout)
    entry = next(r for r in runs if r["uid"] == full_uid)
    quick_uid = entry["steered_by"]
    assert quick_uid and any(r["uid"] == quick_uid for r in runs)
    _, quick = find_analysis(_catalog(home), quick_uid)
    assert abs(quick["offset_x_px"] - 15) <= 2 and abs(quick["offset_y_px"] + 8) <= 2
    found = wait_for(lambda: find_analysis(_catalog(home), full_uid), 600, 1.0,
                     "the full scan's analysis")
    full = found[1]
    assert full["sample_found"] == 1
    assert abs(full["offset_x_px"]) <= 2 and abs(full["offset_y_px"]) <= 2
    # zoomed: only the sample's rows (plus a margin) were read
    assert full["volume_rows"] < 16
    assert _decisions(home, quick_uid)[0]["decision"]["action"] == "align"
