"""Semi-automated steering on the real services (slow; `make test-steering`): the suggest-scan
flow (flows/steering.suggest_scan) pauses with Prefect's interactive input and a person answers
through the API the Prefect UI uses.

A quick scan's analysis (a sample 12, -4 px off the axis in rows 4:12) goes on the bus; the flow
reads it from the catalog and pauses. The test reads what the UI shows of the paused run (its
input description and form schema: the suggested plans and their parameters), then answers as
the UI's resume form does (``POST /flow_runs/{id}/resume`` with ``run_input``): approve as shown,
edit, or refuse. Where Debian's chromium is installed, "approve" is done in the real Prefect UI
instead (tests/browser.py): the paused run's page, its Resume dialog showing the suggested plans
and their parameters, and its Submit button. Approve and edit put the stage move and the scan
on the real RE Manager's queue (not started, so no scan runs); refuse queues nothing; each
choice is recorded as a ``steering_decision`` run in the catalog and as an artifact.
"""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
from browser import browser, chromium_path
from test_flows_support import e2_services, wait_for  # noqa: F401  (fixture)
from test_steering import _decisions, _queue_items, queue_services  # noqa: F401  (fixture)

from tomopipe.context import prefect_api_scope

pytestmark = pytest.mark.slow

SCAN = {"angles": 90, "size": 64, "rows": 16}
MEASURED = {"sample_found": 1, "center": 32.0, "center_confidence": 0.9, "offset_x_px": 12.0,
            "offset_y_px": -4.0, "row_start": 4, "row_stop": 12, "volume_rows": 16,
            "volume": "/nowhere.zarr"}


def _clear_queue(state) -> None:
    from tomopipe.tasks.analysis.queue_client import manager

    rm = manager(state["queue_control"])
    try:
        rm.queue_clear()
    finally:
        rm.close()


def _paused_run(api: str, quick_uid: str) -> dict | None:
    r = httpx.post(f"{api}/flow_runs/filter", json={
        "flows": {"name": {"any_": ["suggest-scan"]}},
        "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "limit": 50}, timeout=30)
    r.raise_for_status()
    return next((fr for fr in r.json()
                 if (fr.get("parameters") or {}).get("quick_uid") == quick_uid), None)


def _run_input(api: str, run_id: str, key: str):
    """A flow run input as the UI reads it (the stored JSON value itself)."""
    r = httpx.get(f"{api}/flow_runs/{run_id}/input/{key}", timeout=30)
    r.raise_for_status()
    return r.json()


def _approve_in_the_ui(api: str, run_id: str) -> None:
    """Open the paused run in the Prefect UI, check its Resume dialog shows the suggested plans
    and their parameters, and submit the form as shown."""
    ui = api.rstrip("/").removesuffix("/api")
    with browser() as page:
        page.goto(f"{ui}/runs/flow-run/{run_id}")
        page.wait_for("document.body.innerText.includes('Paused')", 120, what="the paused run")
        page.click_text("Resume", 60)
        page.wait_for("document.body.innerText.includes('move_stage(dx_px=-12.0, dy_px=4.0)') "
                      "&& document.body.innerText.includes('row_start=3, row_stop=13')", 60,
                      what="the suggested plans in the Resume dialog")
        page.click_text("Submit", 60)
        page.wait_for(f"fetch('{api}/flow_runs/{run_id}').then(r => r.json())"
                      ".then(f => f.state_type !== 'PAUSED')", 120, what="the run to resume")


ANSWERS = {
    "approve": lambda form: form,
    "edit": lambda form: {**form, "move_x_px": -10.0, "row_start": 2, "angles": 120},
    "refuse": lambda form: {**form, "approve": False, "note": "not this grain"},
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_person_approves_edits_or_refuses_the_suggested_scan(queue_services, answer):  # noqa: F811
    from tomopipe.flows.steering import suggest_scan
    from tomopipe.tasks.analysis.bus_publish import publish_documents
    from tomopipe.tasks.analysis.documents import analysis_documents

    home, state = queue_services
    api = state["prefect_api"]
    quick_uid = f"quick-{uuid.uuid4()}"
    _clear_queue(state)
    publish_documents(state["zmq_in"], analysis_documents(quick_uid, MEASURED))
    outcome: dict = {}

    def run_flow():
        try:
            # the home's Prefect API, whatever server an earlier test left this process
            # pointed at (in `make test-faults` the flow ran on a temporary server, paused
            # there, and this test waited on the home's)
            with prefect_api_scope(api):
                outcome["result"] = suggest_scan(quick_uid, SCAN, home=str(home),
                                                 timeout_s=180, wait_s=600, start_queue=False)
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            outcome["error"] = exc

    flow_thread = threading.Thread(target=run_flow, daemon=True)
    flow_thread.start()
    try:
        paused = wait_for(lambda: _paused_run(api, quick_uid) or outcome.get("error"), 300, 1.0,
                          "the suggest-scan flow run to pause for a person")
        assert "error" not in outcome, outcome.get("error")
        keyset = paused["state"]["state_details"]["run_input_keyset"]
        # what the UI shows: the description (markdown) and the form of the paused run
        shown = _run_input(api, paused["id"], keyset["description"])
        assert quick_uid in shown
        assert "`move_stage(dx_px=-12.0, dy_px=4.0)`" in shown
        assert "tomo_scan_sim(angles=90, size=64, rows=16, row_start=3, row_stop=13" in shown
        schema = _run_input(api, paused["id"], keyset["schema"])
        form = {k: v["default"] for k, v in schema["properties"].items()}
        assert form == {"approve": True, "move_x_px": -12.0, "move_y_px": 4.0, "row_start": 3,
                        "row_stop": 13, "angles": 90, "note": ""}
        assert _queue_items(state) == []  # nothing queued while the person decides
        # the person's answer: in the real UI, else as the UI's resume form sends it
        sent = ANSWERS[answer](form)
        if answer == "approve" and chromium_path() is not None:
            _approve_in_the_ui(api, paused["id"])
        else:
            r = httpx.post(f"{api}/flow_runs/{paused['id']}/resume", json={"run_input": sent},
                           timeout=30)
            r.raise_for_status()
            assert r.json()["status"] == "ACCEPT", r.json()
        flow_thread.join(300)
        assert not flow_thread.is_alive(), "the flow did not finish after the resume"
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        decision = result["decision"]
        items = _queue_items(state)
        if answer == "refuse":
            assert decision["action"] == "refuse" and "not this grain" in decision["reason"]
            assert result["queued"] == [] and items == []
        else:
            assert decision["action"] == "align"
            assert decision["reason"].startswith("approved with edits" if answer == "edit"
                                                 else "approved by a person")
            assert [i["item_uid"] for i in items] == result["queued"]
            move, scan = items
            assert move["name"] == "move_stage" and scan["name"] == "tomo_scan_sim"
            assert move["kwargs"] == {"dx_px": sent["move_x_px"], "dy_px": sent["move_y_px"]}
            kw = scan["kwargs"]
            assert (kw["row_start"], kw["row_stop"], kw["angles"]) == (
                sent["row_start"], sent["row_stop"], sent["angles"])
            assert kw["md"]["steered_by"] == quick_uid
        recorded = wait_for(lambda: _decisions(home, quick_uid), 60, 0.5, "the decision run")
        assert recorded[0]["decision"]["action"] == decision["action"]
        assert recorded[0]["decision"]["inputs"]["person"] == {**sent}
        assert recorded[0]["decision"]["inputs"]["suggested"] == form
        arts = httpx.post(f"{api}/artifacts/filter", json={
            "artifacts": {"key": {"like_": "decision-quick-"}}}, timeout=30).json()
        assert any(quick_uid[:20] in (a.get("data") or "") and decision["reason"][:20]
                   in (a.get("data") or "") for a in arts)
    finally:
        _clear_queue(state)
