"""Shared by tests/test_bridge.py and tests/test_flows.py: real services, waiting, look-ups.

No tests here. The services are the embedded ones (Prefect server and worker, Dask, 0MQ proxy,
Tiled, bridge) of the session's temporary home, started once per session by the ``services``
fixture (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

LIVE = "live-run"


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def e2_services(services, services_home):
    """(home, state) of the session's running services (the ``services`` fixture), with this
    process pointed at them."""
    home = Path(state_home(services, services_home))
    return home, _prepare(home, services)


@pytest.fixture(scope="session")
def session_processes():
    """Processes a test starts that must outlive it (a restarted bridge serves later tests);
    terminated at the end of the session."""
    procs: list = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()


def state_home(state: dict, default: Path) -> str:
    return state.get("home") or str(default)


def _prepare(home: Path, state: dict) -> dict:
    """Point this process at the services, and make the flows reconstruct in-process:
    a Dask cluster per tiny test scan would cost more than the scan."""
    os.environ["PREFECT_API_URL"] = state["prefect_api"]
    os.environ["TOMOPIPE_HOME"] = str(home)
    api = state["prefect_api"]
    for name in ("live-run/live", "backfill/backfill", "single-run/single-run"):
        r = _retrying(lambda n=name: httpx.get(f"{api}/deployments/name/{n}", timeout=30))
        if r.is_success:
            dep = r.json()
            params = {**(dep.get("parameters") or {}), "workers": 0}
            _retrying(lambda d=dep, p=params: httpx.patch(
                f"{api}/deployments/{d['id']}", json={"parameters": p}, timeout=30)
            ).raise_for_status()
    return state


@contextlib.contextmanager
def deployment_parameters(state: dict, name: str, params: dict):
    """Deployment ``name`` (``flow/deployment``) with ``params`` for a block, then as it was
    (other tests of the session make the flows reconstruct in-process: ``_prepare``)."""
    api = state["prefect_api"]
    dep = _retrying(lambda: httpx.get(f"{api}/deployments/name/{name}", timeout=30)).json()

    def put(p):
        _retrying(lambda: httpx.patch(f"{api}/deployments/{dep['id']}",
                                      json={"parameters": p}, timeout=30)).raise_for_status()

    put(params)
    try:
        yield
    finally:
        put(dep.get("parameters") or {})


def _retrying(call, attempts: int = 5):
    """A busy SQLite-backed Prefect server answers 503 now and then: try again."""
    for i in range(attempts):
        r = call()
        if r.status_code < 500 or i == attempts - 1:
            return r
        time.sleep(1 + i)
    return r


def flow_runs(state: dict, flow_name: str, uid: str | None = None) -> list[dict]:
    """Flow runs of a flow (optionally those whose parameter uid is ``uid``)."""
    body = {"flows": {"name": {"any_": [flow_name]}}, "limit": 200}
    r = _retrying(lambda: httpx.post(f"{state['prefect_api']}/flow_runs/filter", json=body,
                                     timeout=30))
    r.raise_for_status()
    runs = r.json()
    if uid is not None:
        runs = [fr for fr in runs if (fr.get("parameters") or {}).get("uid") == uid]
    return runs


def final_run(state: dict, flow_name: str, uid: str, timeout: float) -> dict:
    def done():
        found = flow_runs(state, flow_name, uid)
        finals = [fr for fr in found if fr["state_type"] in ("COMPLETED", "FAILED", "CRASHED",
                                                               "CANCELLED")]
        return finals[0] if finals else None

    return wait_for(done, timeout, 0.5, f"a final {flow_name} flow run for {uid}")


def artifacts_of(state: dict, flow_run_id: str) -> list[dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    r = _retrying(lambda: httpx.post(f"{state['prefect_api']}/artifacts/filter", json=body,
                                     timeout=30))
    r.raise_for_status()
    return r.json()


def phantom_reference(size: int, rows: int) -> np.ndarray:
    """The volume the simulator's projections come from (attenuation per pixel)."""
    from tomopipe.tasks import phantom

    features = phantom.scale_features(phantom.DEFAULT_FEATURES, 512.0 / size)
    return phantom.phantom_volume(size, rows, features=features)


def publish(zmq_in: str, docs, *, serializer: str = "msgpack", grace: float = 1.5) -> None:
    """Send (name, doc) pairs to the bus the way a RunEngine's Publisher does."""
    from bluesky.callbacks.zmq import Publisher
    from tomopipe.infra.simulator.run import serializer_for

    pub = Publisher(zmq_in, serializer=serializer_for(serializer))
    time.sleep(grace)  # 0MQ's slow joiner: earlier messages would be dropped
    for name, doc in docs:
        pub(name, doc)
    time.sleep(0.3)
    pub.close()


def publish_raw(zmq_in: str, messages: list[bytes], grace: float = 1.5) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.connect(zmq_in)
    time.sleep(grace)
    for m in messages:
        sock.send(m)
    time.sleep(0.3)
    sock.close(linger=1000)
