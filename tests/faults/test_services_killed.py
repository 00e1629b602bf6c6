"""Fault matrix: a service SIGKILLed in the middle of a scan, then `tomopipe up`.

- the Prefect server: the bridge cannot send the run's events; after `up` it reconciles with the
  catalog and the run's live flow starts and completes;
- the Tiled server: the bridge holds the run in its journal; after `up` the run is written to the
  catalog from the journal and reconstructed;
- the bridge: documents taken off the bus are in its spool and journal; after `up` the rest of
  the scan comes in and the run completes.

Each scan is cut in two: the first half is sent, the service killed, the second half sent to
whatever still listens, and `tomopipe up` restarts what is down. The second half of the bridge
case is sent after `up`, because with the bridge down nothing reads the bus. Then `tomopipe
backfill` finds what is still missing (nothing, when all went well).
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import tomopipe_cli
from test_flows_support import LIVE, flow_runs

from faults.fault_support import (
    assert_targets,
    kill,
    matrix_row,
    scan_documents,
    send,
    service_pid,
    settled,
    up,
)

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1800)]


def _halves(docs: list) -> tuple[list, list]:
    events = [i for i, (n, d) in enumerate(docs) if n == "event"]
    cut = events[len(events) // 2]
    return docs[:cut], docs[cut:]


@pytest.mark.parametrize("service", ["prefect", "tiled", "bridge"])
def test_service_killed_mid_scan_then_up_completes_the_run(fault_services, service):
    home, state = fault_services
    uid, docs = scan_documents(home, f"{service}-killed")
    first, second = _halves(docs)
    send(state, first)
    time.sleep(2.0)  # the bridge takes the first half in
    kill(service_pid(home, service))
    if service != "bridge":
        send(state, second)  # the bridge is still up and journals it
        time.sleep(2.0)
    state = up(home)
    fault_services[1].update(state)
    if service == "bridge":
        send(state, second)
    settled(state, [uid], 600)
    runs = flow_runs(state, LIVE, uid)
    completed = [fr for fr in runs if fr["state_type"] == "COMPLETED"]
    assert len(completed) == 1, [(fr["state_type"], fr["state"]["message"]) for fr in runs]
    backfill = json.loads(tomopipe_cli("backfill", "--sample", f"{service}-killed", "--json",
                                       home=home, timeout=300, check=True).stdout)
    assert backfill["reconstructed"] == 0 and backfill["failed"] == 0, backfill
    others = [f"{fr['state_type']}: {fr['state']['message']}" for fr in runs
              if fr["state_type"] != "COMPLETED"]
    row = matrix_row(f"{'Prefect server' if service == 'prefect' else service.capitalize()} "
                     "killed mid-scan, then tomopipe up", home, state, [uid],
                     f"run completed after up ({len(runs)} flow runs"
                     + (f"; {'; '.join(others)}" if others else "") + ")")
    assert_targets(row)
