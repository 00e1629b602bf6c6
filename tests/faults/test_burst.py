"""Fault matrix: load. 12 scans published back to back, then 3 publishers at once, to the real
bus of a real home: every run is reconstructed exactly once (one completed live flow run, one
complete volume and one ``completed`` result each, and nothing else)."""

from __future__ import annotations

import threading

import pytest
from test_flows_support import LIVE, flow_runs

from faults.fault_support import (
    assert_targets,
    matrix_row,
    scan_documents,
    send,
    settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1800)]


def test_burst_of_scans_and_concurrent_publishers_each_reconstructed_once(
        fault_services):
    from tomopipe.tasks import results_table

    home, state = fault_services
    back_to_back = [scan_documents(home, "burst") for _ in range(12)]
    at_once = [scan_documents(home, "burst-concurrent") for _ in range(3)]
    send(state, [doc for _, docs in back_to_back for doc in docs])  # one stream, no pause
    threads = [threading.Thread(target=send, args=(state, docs)) for _, docs in at_once]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    uids = [uid for uid, _ in back_to_back + at_once]
    settled(state, uids, 1000)

    per_run = {uid: sorted((fr["state_type"], (fr.get("state") or {}).get("message"))
                           for fr in flow_runs(state, LIVE, uid)) for uid in uids}
    not_once = {uid: runs for uid, runs in per_run.items()
                if [state for state, _ in runs] != ["COMPLETED"]}
    assert not not_once, not_once  # each run's flow runs: (state, message)
    results = results_table.read_all(home)
    assert all(results[uid]["state"] == "completed" for uid in uids)
    outputs = {results[uid]["output"] for uid in uids}
    assert len(outputs) == len(uids)  # one volume each, none shared
    row = matrix_row("burst: 12 scans back to back + 3 publishers at once", home, state, uids,
                     f"{len(uids)} runs, {len(uids)} completed flow runs, {len(outputs)} volumes,"
                     f" {len(uids)} results 'completed'")
    assert_targets(row)
