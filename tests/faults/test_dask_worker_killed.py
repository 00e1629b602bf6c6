"""Fault matrix: a worker of the home's standing Dask cluster SIGKILLed while a live run's
reconstruction is on it.

Real services of a home of their own, a real simulated scan on the real bus, the live flow on
the standing cluster (the other fault tests make their flows reconstruct in-process), a real
SIGKILL to the worker process that holds a piece of the run (a streaming block or a slab), as an
out-of-memory kill would. What must hold: the nanny starts a new worker, the run completes once
with a whole volume, and nothing half-written looks complete.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from test_flows_support import LIVE, flow_runs, wait_for

from faults.fault_support import assert_targets, matrix_row, scan_documents, send, settled

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1200)]


def _live_on_standing_cluster(api: str) -> dict:
    """Take ``workers`` out of the live deployment's parameters (the fault homes set it to 0)
    so its runs use the standing cluster; returns the parameters to put back."""
    dep = httpx.get(f"{api}/deployments/name/live-run/live", timeout=30).json()
    before = dict(dep.get("parameters") or {})
    params = {k: v for k, v in before.items() if k != "workers"}
    httpx.patch(f"{api}/deployments/{dep['id']}", json={"parameters": params},
                timeout=30).raise_for_status()
    return {"id": dep["id"], "parameters": before}


def test_dask_worker_killed_mid_slab_then_the_run_completes_once(fault_services):
    from distributed import Client

    home, state = fault_services
    api = state["prefect_api"]
    restore = _live_on_standing_cluster(api)
    try:
        uid, docs = scan_documents(home, "dask-killed", size=128, rows=32, angles=360)
        with Client(state["dask_scheduler"], timeout="30s") as client:
            pids = client.run(os.getpid)
            send(state, docs)

            def busy_worker():
                for worker, keys in client.processing().items():
                    if any(str(k).startswith(("tomopipe-slab-", "tomopipe-stream-"))
                           for k in keys):
                        return worker
                return None

            victim = wait_for(busy_worker, 300, 0.02, "a slab or stream block on a worker")
            os.kill(pids[victim], signal.SIGKILL)
            wait_for(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == len(pids)
                     and victim not in client.scheduler_info(n_workers=-1)["workers"],
                     120, 0.5, "the nanny to start a new worker")
        settled(state, [uid], 600)
        states = sorted(fr["state_type"] for fr in flow_runs(state, LIVE, uid))
        assert "COMPLETED" in states, states
        row = matrix_row("a Dask worker SIGKILLed mid-slab (standing cluster)", home, state,
                         [uid], f"run {uid[:8]}: worker {victim} lost; its work ran again on "
                         f"the other workers; flow runs {states}")
        assert_targets(row)
    finally:
        httpx.patch(f"{api}/deployments/{restore['id']}",
                    json={"parameters": restore["parameters"]}, timeout=30)
