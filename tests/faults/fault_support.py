"""Shared by the service-fault tests (tests/faults/test_*.py of the fault matrix): a home of real
services to break, simulated scans, and the figures of one row of the matrix.

No tests here. ``fault_services`` (tests/faults/conftest.py, so that every module shares one)
starts the embedded services of a temporary home of its own
with the real ``tomopipe up`` (once per session, shared by every fault test; each test leaves
it up and healthy, or brings it back with ``tomopipe up``) and stops them with ``tomopipe down``.
It is not the session's ``services`` home, because these tests kill its processes.

Each test measures its row (``matrix_row``) and asserts the targets; with
``TOMOPIPE_FAULT_ROWS=FILE`` set it also appends the row to FILE as one JSON line, which is how
benchmarks/bench_faults.py collects the matrix.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import UP_TIMEOUT_S, tomopipe_cli
from test_flows_support import LIVE, _prepare, flow_runs, publish, wait_for

SIZE, ROWS, ANGLES = 32, 8, 45  # tiny scans, as tests/test_flows.py
ROWS_FILE_ENV = "TOMOPIPE_FAULT_ROWS"
# `tomopipe up` takes 20 s on an idle 2-core machine and was seen past 280 s under a load of 27:
# a fault test restarts its home, so it waits longer than the session's first start does
UP_S = max(UP_TIMEOUT_S, 600)


def up(home: Path) -> dict:
    """``tomopipe up`` for ``home`` (again, after a fault); returns the services' view, with the
    live flows reconstructing in their own process (workers=0: tiny scans)."""
    from tomopipe.infra.services import view

    proc = tomopipe_cli("up", f"--timeout={UP_S - 20}", home=home, timeout=UP_S)
    if proc.returncode != 0:
        pytest.fail(f"tomopipe up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    state = view(home)
    assert state is not None, "tomopipe up succeeded but wrote no state"
    return _prepare(home, state)


def scan_documents(home: Path, sample: str, **kw) -> tuple[str, list]:
    """A real simulated scan (files under the home's data root); its documents, not sent."""
    from tomopipe.infra.simulator.run import simulate

    from tomopipe.config import load_settings

    docs: list = []
    uid = simulate(load_settings(home), size=kw.pop("size", SIZE), rows=kw.pop("rows", ROWS),
                   angles=kw.pop("angles", ANGLES), fps=None, sample=sample,
                   callbacks=[lambda n, d: docs.append((n, d))], **kw)
    return uid, docs


def send(state: dict, docs, grace: float = 1.5) -> None:
    publish(state["zmq_in"], docs, serializer=state["zmq_serializer"], grace=grace)


def kill(pid: int) -> None:
    """SIGKILL, and wait until it is gone (a zombie counts as gone)."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid)
             or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 20, 0.1, f"pid {pid} gone")


def service_pid(home: Path, name: str) -> int:
    from tomopipe.infra.state import read_services

    return int(read_services(home)["pids"][name])


def home_processes(home: Path) -> list[str]:
    """Processes (other than this one and its ancestors) whose environment or command line
    names the home."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            env, cmd = proc.environ(), " ".join(proc.cmdline())
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if str(home) in cmd or str(home) in (env.get("TOMOPIPE_HOME"),
                                             env.get("TOMOPIPE_SERVICE_HOME")):
            found.append(f"{proc.pid} {cmd[:160]}")
    return found


def final_states(state: dict, uid: str) -> list[str]:
    return [fr["state_type"] for fr in flow_runs(state, LIVE, uid)]


def settled(state: dict, uids, timeout: float) -> None:
    """Wait until every run has a live flow run and none is still scheduled or running."""
    active = ("SCHEDULED", "PENDING", "RUNNING")

    def done():
        for uid in uids:
            states = final_states(state, uid)
            if not states or any(s in active for s in states):
                return False
        return True

    wait_for(done, timeout, 1.0, f"the live flow runs of {len(uids)} runs to end")


def _under(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _paths_in(obj) -> list[str]:
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in _paths_in(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in _paths_in(v)]
    if isinstance(obj, str) and obj.startswith(("/", "file://")):
        return [obj.removeprefix("file://localhost").removeprefix("file://")]
    return []


def matrix_row(case: str, home: Path, state: dict, uids, message: str,
               expect_volume: bool = True) -> dict:
    """The figures of one case over the runs ``uids``:

    - runs_lost: runs with no complete volume and no ``completed`` result (or, with
      ``expect_volume=False``, runs whose result is not a final state with a reason);
    - reconstructed_twice: completed live flow runs beyond one per run;
    - half_complete: volumes marked complete whose full-resolution array has a slice never
      written (all zeros: a phantom slice never is);
    - reads_outside_roots: files named by a volume's staging manifest outside the data roots.
    """
    import zarr
    from tomopipe.tasks import results_table
    from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

    roots = [os.path.realpath(r) for r in state["data_roots"]]
    lost = twice = half = outside = 0
    for uid in uids:
        row = results_table.read_one(home, uid) or {}
        completed = sum(s == "COMPLETED" for s in final_states(state, uid))
        if expect_volume:
            out = row.get("output")
            if row.get("state") != "completed" or not out or not is_complete(out):
                lost += 1
                continue
            twice += max(0, completed - 1)
            volume = zarr.open_array(str(Path(out) / "0"), mode="r")[:]
            half += int(any(not np.any(volume[z]) for z in range(volume.shape[0])))
            staging = read_provenance(out).get("staging") or {}
            outside += sum(not _under(p, roots) for p in _paths_in(staging.get("manifest")))
        else:
            lost += int(row.get("state") not in ("failed", "completed") or
                        (row.get("state") == "failed" and not row.get("message")))
            twice += max(0, completed - 1)
    for partial in Path(state["output_root"]).rglob("*.partial"):  # nothing half-done looks done
        half += int(is_complete(partial))
    result = {"case": case, "runs_lost": lost, "reconstructed_twice": twice,
              "half_complete": half, "reads_outside_roots": outside, "message": message}
    path = os.environ.get(ROWS_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def assert_targets(row: dict) -> None:
    figures = {k: row[k] for k in ("runs_lost", "reconstructed_twice", "half_complete",
                                   "reads_outside_roots")}
    assert figures == dict.fromkeys(figures, 0), row
    assert row["message"], row

