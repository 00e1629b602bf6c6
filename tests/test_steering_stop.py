"""Stop when good enough on the real services (slow; `make test-steering`).

`tomopipe simulate --steer stop` queues a 720-angle golden-ratio scan at 8 frames/s on the real
RE Manager; the live flow streams it (the session's services reconstruct in-process with
``workers: 0`` to keep tiny test scans cheap, and an in-process reconstruction does not stream:
the ``streaming`` fixture gives the live deployment back the home's standing Dask cluster for
this test, then restores it); the agent (flows/steering.stop_when_converged) follows the live
views and ends the scan through the queue server once successive updates agree.

Asserted: fewer angles than planned were acquired; the run's stop document says why (the
agent's reason); the decision is recorded in the catalog and as an artifact; the early-stopped
volume correlates with a full scan of the same sample (the same 720 golden angles, another
photon-noise draw, taken flat out) at >= 0.95. Why 0.95: tests/test_analysis.py shows on an
analytic grain that a reconstruction stopped by the convergence rule correlates >= 0.95 with
the full scan's; one manual run on these services gave 0.991 (README, Steering).
"""

from __future__ import annotations

import httpx
import pytest
from conftest import tomopipe_cli
from test_flows_support import _retrying, e2_services, wait_for  # noqa: F401  (fixture)
from test_steering import _catalog, _decisions, queue_services  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

ANGLES = 720
MIN_CORRELATION = 0.95
COMMON = ("--size", "128", "--rows", "16", "--angles", str(ANGLES), "--seed", "5",
          "--sample-shape", "grain")


@pytest.fixture
def streaming(queue_services):  # noqa: F811
    """The live deployment without the session's ``workers: 0`` (so runs stream on the home's
    standing Dask cluster) for one test; the session's parameters are put back after it."""
    home, state = queue_services
    api = state["prefect_api"]
    dep = _retrying(lambda: httpx.get(f"{api}/deployments/name/live-run/live", timeout=30))
    dep.raise_for_status()
    dep = dep.json()
    saved = dict(dep.get("parameters") or {})
    streamed = {k: v for k, v in saved.items() if k != "workers"}

    def patch(params):
        _retrying(lambda: httpx.patch(f"{api}/deployments/{dep['id']}",
                                      json={"parameters": params}, timeout=30)
                  ).raise_for_status()

    patch(streamed)
    try:
        yield home, state
    finally:
        patch(saved)


def _volume(home, uid: str):
    from tomopipe.tasks.analysis.queue_client import find_analysis
    from tomopipe.tasks.analysis.volume_io import read_level

    _, found = wait_for(lambda: find_analysis(_catalog(home), uid), 600, 1.0,
                        f"the analysis of {uid}")
    return read_level(found["volume"], max_px=4096)[0]


@pytest.mark.timeout(1800)
def test_stop_when_good_enough_ends_a_golden_scan_early(streaming):
    from tomopipe.tasks.analysis.convergence import correlation

    home, state = streaming
    proc = tomopipe_cli("simulate", "--steer", "stop", "--fps", "8", *COMMON,
                        "--timeout", "600", home=home, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    early_uid = proc.stdout.strip().splitlines()[-1]
    assert "agent: stop:" in proc.stderr, proc.stderr[-3000:]
    stop = dict(_catalog(home)[early_uid].metadata["stop"])
    taken = stop["num_events"]["primary"]
    assert 0 < taken < ANGLES  # fewer angles than planned
    assert stop["exit_status"] == "success"
    assert "stop-when-good-enough" in stop["reason"] and "correlate" in stop["reason"]
    recorded = wait_for(lambda: _decisions(home, early_uid), 60, 0.5, "the decision run")
    decision = recorded[0]["decision"]
    assert decision["action"] == "stop" and decision["inputs"]["converged"]
    assert decision["inputs"]["updates"]  # the live updates it was taken from
    arts = httpx.post(f"{state['prefect_api']}/artifacts/filter", json={
        "artifacts": {"key": {"like_": "decision-"}}}, timeout=30).json()
    assert any(early_uid in (a.get("data") or "") and "# stop:" in (a.get("data") or "")
               for a in arts)
    # the full scan of the same sample: the same angles and noise, all 720 taken
    full = tomopipe_cli("simulate", "--angle-order", "golden", *COMMON, home=home, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    full_uid = full.stdout.strip().splitlines()[-1]
    corr = correlation(_volume(home, early_uid), _volume(home, full_uid))
    print(f"stopped at {taken}/{ANGLES} angles; correlation with the full scan {corr:.4f}")
    assert corr >= MIN_CORRELATION
