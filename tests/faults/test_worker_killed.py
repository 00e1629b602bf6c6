"""Fault matrix: the Prefect worker SIGKILLed while a live flow reconstructs, then `tomopipe up`.

Real services of a home of their own (fault_support.fault_services), a real simulated scan on
the real bus, a real SIGKILL. What must hold: the flow run's processes die with the worker (no
writer is left behind), the run is marked Crashed and recorded ``crashed``, `tomopipe up` brings
a worker back, whose sweep submits the run again once; the re-run completes with one complete
volume; backfill then finds the run done; and `tomopipe down` leaves no process of the home.
"""

from __future__ import annotations

import json

import pytest
from conftest import tomopipe_cli
from test_flows_support import LIVE, flow_runs, wait_for

from faults.fault_support import (
    assert_targets,
    home_processes,
    kill,
    matrix_row,
    scan_documents,
    send,
    service_pid,
    settled,
    up,
)

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1800)]


def test_worker_killed_while_reconstructing_then_up_reruns_once(fault_services):
    from tomopipe.tasks import results_table

    home, state = fault_services
    # bigger than the other fault scans, so the kill lands while it reconstructs
    uid, docs = scan_documents(home, "worker-killed", size=96, rows=24, angles=240)
    send(state, docs)
    wait_for(lambda: (results_table.read_one(home, uid) or {}).get("state") == "running", 240,
             0.05, "the live flow to start reconstructing")
    worker = service_pid(home, "worker")
    flow_processes = sorted((home / "flow-runs").glob("*.json"))
    assert flow_processes, "the zygote client wrote no launch record"
    kill(worker)

    # the run's processes follow the worker (PR_SET_PDEATHSIG, the zygote's watcher)
    record = json.loads(flow_processes[-1].read_text())
    import psutil

    def gone():
        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                       for pid, _ in record["processes"])

    wait_for(gone, 30, 0.2, "the flow run's processes to end with the worker")
    assert not (results_table.read_one(home, uid) or {}).get("state") == "completed"

    state = up(home)  # restarts what is not healthy; the new worker sweeps at once
    fault_services[1].update(state)
    settled(state, [uid], 300)
    runs = flow_runs(state, LIVE, uid)
    by_state = sorted(fr["state_type"] for fr in runs)
    assert by_state == ["COMPLETED", "CRASHED"], by_state
    crashed = next(fr for fr in runs if fr["state_type"] == "CRASHED")
    rerun = next(fr for fr in runs if fr["state_type"] == "COMPLETED")
    assert "tomopipe-rerun" in rerun["tags"] and f"rerun-of:{crashed['id']}" in rerun["tags"]
    message = crashed["state"]["message"]  # the engine's own word, or the sweep's
    assert message, crashed
    worker_log = (home / "logs" / "worker.log").read_text()
    assert f"crashed: submitted again as {rerun['id']}" in worker_log

    listed = {r["uid"]: r for r in json.loads(tomopipe_cli("runs", "--json", home=home,
                                                           check=True).stdout)}
    assert listed[uid]["state"] == "completed"
    backfill = json.loads(tomopipe_cli("backfill", "--sample", "worker-killed", "--json",
                                       home=home, timeout=300, check=True).stdout)
    assert backfill["reconstructed"] == 0 and backfill["skipped"] == 1, backfill

    row = matrix_row("Prefect worker SIGKILLed while a live flow reconstructs", home, state,
                     [uid], f"run {uid[:8]}: flow run {crashed['name']} Crashed ({message}); "
                     f"submitted again as {rerun['name']}, which completed")
    assert_targets(row)


def test_down_leaves_no_process_of_the_home(fault_services):
    """Last of the fault tests on this home: `down` stops every process the home started,
    flow runs and the fork server's children included; `up` brings it back for later tests."""
    home, state = fault_services
    uid, docs = scan_documents(home, "down-test")
    send(state, [d for d in docs if d[0] != "stop"])  # a run that never stops: a flow waits
    wait_for(lambda: any(fr["state_type"] == "RUNNING" for fr in flow_runs(state, LIVE, uid)),
             240, 0.5, "the live flow to follow the run")
    proc = tomopipe_cli("down", home=home, timeout=120, check=True)
    assert "stopped" in proc.stdout
    try:
        wait_for(lambda: not home_processes(home), 15, 0.5, "no process of the home")
    except AssertionError:
        pytest.fail(f"left after `tomopipe down`: {home_processes(home)}")
    state = up(home)
    fault_services[1].update(state)
