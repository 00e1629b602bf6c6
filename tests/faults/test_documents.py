"""Fault matrix: documents as a bus delivers them on a bad day, to the real bus of a real home.

- every document twice: one flow run, one volume;
- the primary stream's events and stream datums in reverse order: still reconstructed, once;
- a stop document whose start never came: logged by the bridge, no flow run;
- a run that never stops: its live flow ends Failed after the idle timeout, naming it;
- a scan aborted halfway: its live flow ends Failed with the run's reason, and no volume.

The cases go out together and are checked once all their flows have ended.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from test_flows_support import LIVE, flow_runs, wait_for

from faults.fault_support import (
    assert_targets,
    matrix_row,
    scan_documents,
    send,
    settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1800)]
IDLE_S = 20.0


def _set_live_parameter(state: dict, **values) -> dict:
    """Change the live deployment's default parameters; returns the old ones."""
    api = state["prefect_api"]
    dep = httpx.get(f"{api}/deployments/name/{LIVE}/live", timeout=30).json()
    old = dict(dep.get("parameters") or {})
    httpx.patch(f"{api}/deployments/{dep['id']}", json={"parameters": {**old, **values}},
                timeout=30).raise_for_status()
    return old


def _reversed_primary(docs: list) -> list:
    """The primary stream's events and stream datums in reverse order, the rest in place."""
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d.get("name") == "primary"}
    moved = [i for i, (n, d) in enumerate(docs)
             if n in ("event", "stream_datum") and d.get("descriptor") in primary]
    out = list(docs)
    for i, j in zip(moved, reversed(moved), strict=True):
        out[i] = docs[j]
    return out


def test_duplicate_out_of_order_orphan_stop_endless_and_aborted_runs(fault_services):
    from tomopipe.tasks import results_table

    home, state = fault_services
    old = _set_live_parameter(state, idle_timeout_s=IDLE_S)
    try:
        dup_uid, dup = scan_documents(home, "duplicates")
        ooo_uid, ooo = scan_documents(home, "out-of-order")
        endless_uid, endless = scan_documents(home, "never-stops")
        abort_uid, aborted = scan_documents(home, "aborted", abort_after=20)
        orphan = ("stop", {"uid": str(uuid.uuid4()), "run_start": str(uuid.uuid4()),
                           "time": time.time(), "exit_status": "success", "num_events": {}})
        send(state, [d for doc in dup for d in (doc, doc)] + _reversed_primary(ooo) + [orphan]
             + [d for d in endless if d[0] != "stop"] + aborted)
        settled(state, [dup_uid, ooo_uid, endless_uid, abort_uid], 600)
    finally:
        _set_live_parameter(state, **{"idle_timeout_s": old.get("idle_timeout_s", 600.0)})

    rows = []
    for case, uid in (("every document twice", dup_uid),
                      ("primary stream in reverse order", ooo_uid)):
        runs = flow_runs(state, LIVE, uid)
        assert [fr["state_type"] for fr in runs] == ["COMPLETED"], runs
        rows.append(matrix_row(case, home, state, [uid], "reconstructed once; the repeats "
                               "dropped by the bridge" if uid == dup_uid else "reconstructed"))

    log = home / "logs" / "bridge.log"
    line = wait_for(lambda: next((ln for ln in log.read_text().splitlines()
                                  if orphan[1]["run_start"] in ln), None), 30, 0.5,
                    "the bridge to log the stop without a start")
    assert not flow_runs(state, LIVE, orphan[1]["run_start"])
    rows.append(matrix_row("a stop without a start", home, state, [], line.split(" WARNING ")[-1],
                           expect_volume=False))

    for case, uid, words in (("a run that never stops (idle timeout)", endless_uid,
                              f"nothing new for {IDLE_S:.0f} s"),
                             ("a scan aborted halfway", abort_uid, "abort")):
        runs = flow_runs(state, LIVE, uid)
        assert [fr["state_type"] for fr in runs] == ["FAILED"], runs
        message = runs[0]["state"]["message"]
        assert words in message, message
        row = results_table.read_one(home, uid)
        assert row["state"] == "failed" and words in row["message"] and not row["output"]
        rows.append(matrix_row(case, home, state, [uid], row["message"], expect_volume=False))
    for row in rows:
        assert_targets(row)
