"""A run's stream started at its first frame (the stream starter) and adopted by its live flow.

Real parts: a real Dask cluster (2 worker processes), a real Bluesky RunEngine writing a real
HDF5 file (SWMR) at its frame rate, the starter fed the RunEngine's documents through the same
inbox its process uses. The services end to end (bus, bridge, Prefect) are in test_streaming.
"""

from __future__ import annotations

import dataclasses
import queue
import time

import pytest
from test_streaming import Docs, start_scan
from tomopipe.deployments.stream_starter import Starter, serve_once
from tomopipe.tasks.recon import stream_start
from tomopipe.tasks.recon.params import recon_params
from tomopipe.tasks.storage.live_views import live_path
from tomopipe.tasks.storage.location import volume_location
from tomopipe.tasks.storage.omezarr import is_complete, read_provenance
from tomopipe.tasks.storage.publish import partial_path

from tomopipe.config import load_settings


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


class Inbox(queue.Queue):
    """The starter's inbox, filled by the RunEngine as the bus would."""

    def __call__(self, name, doc):
        self.put((getattr(name, "value", name), doc))


def scan_with_starter(tmp_path, client, *, angles=200, fps=40, replay=False):
    """A simulated scan whose documents go to a Starter: (settings, starter, inbox, documents,
    scan thread, scan errors). ``replay``: the documents reach the starter after the scan,
    all at once, as a replayed run's do."""
    home = tmp_path / "home"
    settings = load_settings(home)
    inbox, docs = Inbox(), Docs()
    starter = Starter(home, lambda: client, grace_s=5.0)
    thread, errors = start_scan(settings, _fanout(docs, None if replay else inbox), size=32,
                                rows=4, angles=angles, fps=fps, angle_order="golden")
    return settings, starter, inbox, docs, thread, errors


def _fanout(*callbacks):
    def send(name, doc):
        for cb in callbacks:
            if cb is not None:
                cb(name, doc)
    return send


def serve_until(starter, inbox, done, timeout=60):
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        serve_once(starter, inbox, wait_s=0.05)
    assert done(), "timed out"


def flow_terms(settings, uid, **overrides):
    params = recon_params(settings, overrides)
    return stream_start.Terms(params, str(volume_location(settings.output_root, uid,
                                                          params).path), None)


def test_the_starter_streams_from_the_first_frame_and_the_flow_adopts_it(tmp_path, dask_client):
    settings, starter, inbox, docs, thread, errors = scan_with_starter(tmp_path, dask_client)
    serve_until(starter, inbox, lambda: starter.offered == 1)
    uid = docs.items[0][1]["uid"]
    assert stream_start.owner(dask_client, uid) == stream_start.STARTER
    # the blocks began while the scan ran (the starter had not seen its stop)
    assert starter.runs[uid].stopped is None
    run, how, owned, offered = stream_start.claim(dask_client, uid, flow_terms(settings, uid))
    assert run is not None and how.startswith("adopted") and owned and offered, how
    assert stream_start.owner(dask_client, uid) == stream_start.FLOW
    thread.join()
    assert not errors
    serve_once(starter, inbox, wait_s=0.05)  # the stop: the starter keeps its hands off
    from tomopipe.tasks.recon import streaming

    n = streaming.frames_on_disk(run.spec.projections[0])
    found = streaming.early_center(run.spec, run.params, run.planned, n, require_cover=False)
    run.recenter(found)
    result = run.finish(n)
    assert is_complete(run.out) and result["timings"]["n_frames"] == 200
    assert read_provenance(run.out)["extra"]["run_uid"] == uid
    stream_start.release(dask_client, uid)
    assert stream_start.owner(dask_client, uid) is None
    # past the grace: the starter forgets the run and leaves the flow's volume alone
    time.sleep(starter.grace_s)
    serve_once(starter, inbox, wait_s=0.05)
    assert uid not in starter.runs and is_complete(run.out)


def test_a_flow_that_asks_for_other_parameters_aborts_the_offer(tmp_path, dask_client):
    settings, starter, inbox, docs, thread, errors = scan_with_starter(tmp_path, dask_client)
    serve_until(starter, inbox, lambda: starter.offered == 1)
    uid = docs.items[0][1]["uid"]
    offered_out = volume_location(settings.output_root, uid, recon_params(settings)).path
    assert live_path(offered_out).exists()
    run, how, owned, offered = stream_start.claim(dask_client, uid,
                                                  flow_terms(settings, uid, center=16.5))
    assert run is None
    assert how.startswith("aborted") and "parameters differ (center)" in how, how
    # the offer's partial volume and live views are gone; the run is the flow's now
    assert owned and offered
    assert not partial_path(offered_out).exists() and not live_path(offered_out).exists()
    assert stream_start.owner(dask_client, uid) == stream_start.FLOW
    thread.join()
    assert not errors
    assert dask_client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    stream_start.release(dask_client, uid)


def test_a_flow_first_keeps_the_starter_out(tmp_path, dask_client):
    """A flow that owns the run before its first frame (a long flat-field series first) gets
    no offer; the starter starts nothing."""
    settings, starter, inbox, docs, thread, errors = scan_with_starter(tmp_path, dask_client)
    while not docs.items:
        time.sleep(0.01)
    uid = docs.items[0][1]["uid"]
    run, how, owned, offered = stream_start.claim(dask_client, uid, flow_terms(settings, uid))
    assert run is None and "no stream was started" in how and owned and not offered
    # a second flow run of the same run (a re-run) owns nothing, so releases nothing
    again = stream_start.claim(dask_client, uid, flow_terms(settings, uid))
    assert again.run is None and not again.owned and "another flow's" in again.how
    serve_until(starter, inbox, lambda: starter.runs.get(uid) is not None
                and starter.runs[uid].tried)
    assert starter.offered == 0
    assert stream_start.owner(dask_client, uid) == stream_start.FLOW
    thread.join()
    assert not errors
    stream_start.release(dask_client, uid)


def test_an_offer_no_flow_takes_is_aborted_after_the_grace(tmp_path, dask_client):
    settings, starter, inbox, docs, thread, errors = scan_with_starter(tmp_path, dask_client,
                                                                       angles=120, fps=60)
    serve_until(starter, inbox, lambda: starter.offered == 1)
    uid = docs.items[0][1]["uid"]
    out = volume_location(settings.output_root, uid, recon_params(settings)).path
    assert live_path(out).exists()  # the offer's live views, growing
    thread.join()
    assert not errors
    serve_until(starter, inbox, lambda: uid not in starter.runs, timeout=starter.grace_s + 60)
    assert stream_start.owner(dask_client, uid) is None
    assert not out.parent.exists() or not any(out.parent.iterdir())
    # the blocks let their workers go
    assert dask_client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    # a flow that comes later finds no offer and streams (or reconstructs) on its own
    run, how, owned, offered = stream_start.claim(dask_client, uid, flow_terms(settings, uid))
    assert run is None and "no stream was started" in how
    stream_start.release(dask_client, uid)


def test_a_replayed_run_is_left_to_its_flow(tmp_path, dask_client):
    """All documents at once (the run already stopped): nothing is started."""
    settings, starter, inbox, docs, thread, errors = scan_with_starter(
        tmp_path, dask_client, angles=60, fps=200, replay=True)
    thread.join()
    assert not errors
    for name, doc in docs.items:
        inbox.put((name, doc))
    serve_once(starter, inbox, wait_s=0.05)
    assert starter.offered == 0 and not starter.runs


def test_malformed_and_foreign_documents_are_skipped(tmp_path, dask_client, caplog):
    starter = Starter(tmp_path / "home", lambda: dask_client)
    starter.handle("descriptor", {"uid": "d"})  # no run_start
    starter.handle("stream_datum", None)
    starter.handle("start", {"uid": "x", "time": 1.0, "plan_name": "count"})  # not tomography
    starter.handle("stop", {"uid": "s", "run_start": "x", "exit_status": "success"})
    starter.step()
    assert starter.runs == {} and starter.offered == 0
    skipped = [r.getMessage() for r in caplog.records if "skipped a malformed" in r.getMessage()]
    assert len(skipped) == 2 and "descriptor" in skipped[0] and "run_start" in skipped[0]


def test_terms_name_what_differs(tmp_path):
    settings = load_settings(tmp_path / "home")
    a = flow_terms(settings, "u1")
    assert a.differ(dataclasses.replace(a)) is None
    assert "rows" in a.differ(flow_terms(settings, "u1", rows=[0, 2]))
    assert "volume differs" in a.differ(dataclasses.replace(a, out="/elsewhere.zarr"))
    assert "planes" in a.differ(dataclasses.replace(a, positions={"z": 1, "y": 2, "x": 3}))


def test_the_process_has_help_and_says_what_it_lacks(tmp_path):
    """`python -m tomopipe.deployments.stream_starter` as `tomopipe up` runs it: --help, and a
    home with no standing cluster gets one line naming the home and exit status 1."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "tomopipe.deployments.stream_starter"]
    shown = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--grace" in shown.stdout and "first frame" in shown.stdout
    home = tmp_path / "home"
    home.mkdir()
    bare = subprocess.run(argv + ["--home", str(home)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TOMOPIPE_HOME": str(home)})
    assert bare.returncode == 1
    lines = [line for line in bare.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1 and str(home) in lines[0] and "no standing Dask scheduler" in lines[0]


def test_a_fault_in_one_start_is_logged_and_the_starter_goes_on(tmp_path, caplog):
    """A cluster that fails in an unexpected way (here: the client raises) costs that run its
    early start, in one logged line; the starter keeps serving."""
    home = tmp_path / "home"
    settings = load_settings(home)
    docs = Docs()
    thread, errors = start_scan(settings, docs, size=32, rows=4, angles=40, fps=200,
                                angle_order="golden")
    thread.join()
    assert not errors

    def broken():
        raise RuntimeError("the scheduler answered nonsense")

    starter = Starter(home, broken)
    for name, doc in docs.items:
        if name != "stop":
            starter.handle(name, doc)
    starter.step()
    uid = docs.items[0][1]["uid"]
    assert starter.runs[uid].tried and starter.offered == 0
    lines = [r.getMessage() for r in caplog.records if uid in r.getMessage()]
    assert len(lines) == 1 and "RuntimeError: the scheduler answered nonsense" in lines[0]
    starter.handle("stop", next(d for n, d in docs.items if n == "stop"))
    starter.step()
    assert uid not in starter.runs  # stopped, nothing offered: forgotten
