"""The Bluesky-to-Prefect bridge: routing, ledger, malformed input, restarts, duplicates.

The first tests drive the Bridge class with in-memory collaborators (what it writes and emits
is recorded); the rest run against the real embedded services (Prefect, 0MQ proxy, Tiled, the
bridge process) of a temporary home.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_flows_support import (  # noqa: F401  (e2_services is a fixture)
    LIVE,
    e2_services,
    final_run,
    flow_runs,
    publish,
    publish_raw,
    session_processes,
    wait_for,
)
from tomopipe.deployments.bridge import Bridge
from tomopipe.deployments.events import START, STOP, event_id, run_resource
from tomopipe.deployments.ledger import Journal, Ledger

from tomopipe.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """Stands in for the catalog writer and the emitter, recording the order of calls."""

    def __init__(self):
        self.calls = []

    def write(self, name, doc, uid):
        self.calls.append(("write", name, uid))

    def rebuild(self, uid, docs):
        self.calls.append(("rebuild", uid, len(docs)))

    def emit(self, event, resource, payload):
        self.calls.append(("emit", event, resource["bluesky.uid"], resource, payload))


def _docs(uid="run-1", plan="tomo_scan", exit_status="success"):
    start = {"uid": uid, "time": time.time(), "plan_name": plan, "scan_id": 7, "sample": "s"}
    desc = {"uid": f"{uid}-d", "run_start": uid, "name": "primary", "data_keys": {}}
    sres = {"uid": f"{uid}-r", "run_start": uid, "data_key": "cam", "uri": "file:///x.h5"}
    datum = {"uid": f"{uid}-r/0", "stream_resource": f"{uid}-r", "descriptor": f"{uid}-d",
             "indices": {"start": 0, "stop": 1}}
    event = {"uid": f"{uid}-e", "descriptor": f"{uid}-d", "data": {"a": 1.0}, "seq_num": 1}
    stop = {"uid": f"{uid}-s", "run_start": uid, "exit_status": exit_status, "reason": "why"}
    return [("start", start), ("descriptor", desc), ("stream_resource", sres),
            ("stream_datum", datum), ("event", event), ("stop", stop)]


def _bridge(tmp_path, rec):
    return Bridge(rec, rec.emit, Ledger(tmp_path / "ledger.sqlite"), Journal(tmp_path / "j"),
                  beamline="bl", tomo_plans=("tomo_scan",))


def test_events_follow_the_writes_and_carry_labels(tmp_path):
    rec = Recorder()
    bridge = _bridge(tmp_path, rec)
    for name, doc in _docs():
        bridge.handle(name, doc)
    kinds = [c[:2] for c in rec.calls]
    assert kinds.index(("emit", START)) == kinds.index(("write", "start")) + 1
    assert kinds[-1] == ("emit", STOP) and kinds[-2] == ("write", "stop")
    start_emit = next(c for c in rec.calls if c[:2] == ("emit", START))
    assert start_emit[3] == {"prefect.resource.id": "bluesky.run.run-1", "bluesky.uid": "run-1",
                             "bluesky.plan_name": "tomo_scan", "bluesky.scan_id": "7",
                             "bluesky.beamline": "bl", "bluesky.tomo": "true"}
    assert start_emit[4]["sample"] == "s"
    stop_emit = next(c for c in rec.calls if c[:2] == ("emit", STOP))
    assert stop_emit[4]["exit_status"] == "success"
    assert bridge.ledger.events_of("run-1") == {START, STOP}
    assert Journal(tmp_path / "j").open_runs() == []  # closed at the stop


def test_non_tomography_runs_are_labelled_false():
    labels = run_resource({"uid": "u", "plan_name": "count"}, beamline="b", tomo_plans=("tomo",))
    assert labels["bluesky.tomo"] == "false"
    assert event_id("u", START) == event_id("u", START) != event_id("u", STOP)


def test_malformed_documents_are_skipped(tmp_path):
    rec = Recorder()
    bridge = _bridge(tmp_path, rec)
    bad = [("nonsense", {"uid": "x"}), ("start", ["not", "a", "dict"]), ("start", {"time": 1}),
           ("event", {"uid": "e", "descriptor": "unknown", "data": {}}),
           ("stop", {"uid": "s", "run_start": "never-started", "exit_status": "success"}),
           ("descriptor", None)]
    for name, doc in bad:
        bridge.handle(name, doc)
    assert bridge.skipped == len(bad) and rec.calls == []
    for name, doc in _docs():  # and the bridge goes on
        bridge.handle(name, doc)
    assert ("emit", STOP) in [c[:2] for c in rec.calls]


def test_a_run_sent_twice_is_handled_once(tmp_path):
    rec = Recorder()
    bridge = _bridge(tmp_path, rec)
    docs = _docs()
    for name, doc in docs + docs:
        bridge.handle(name, doc)
    assert sum(c[0] == "emit" for c in rec.calls) == 2
    assert sum(c[:2] == ("write", "start") for c in rec.calls) == 1
    # a new bridge on the same ledger (a restart) does not emit again either
    rec2 = Recorder()
    again = _bridge(tmp_path, rec2)
    for name, doc in docs:
        again.handle(name, doc)
    assert rec2.calls == []


def test_every_document_twice_while_the_run_is_open_is_one_run(tmp_path):
    """A repeated start must not make the bridge drop the rest of its run as 'sent again'."""
    rec = Recorder()
    bridge = _bridge(tmp_path, rec)
    for name, doc in _docs():
        bridge.handle(name, doc)
        bridge.handle(name, doc)
    writes = [c[1] for c in rec.calls if c[0] == "write"]
    assert writes == ["start", "descriptor", "stream_resource", "stream_datum", "event", "stop"]
    assert [c[1] for c in rec.calls if c[0] == "emit"] == [START, STOP]


def test_restart_resumes_an_open_run_from_the_journal(tmp_path):
    docs = _docs()
    rec = Recorder()
    first = _bridge(tmp_path, rec)
    for name, doc in docs[:4]:  # killed after the stream datum
        first.handle(name, doc)
    rec2 = Recorder()
    second = _bridge(tmp_path, rec2)
    assert second.resume_open_runs() == ["run-1"]
    assert rec2.calls == [("rebuild", "run-1", 4)]  # no second start event
    for name, doc in docs[3:]:  # the datum again (already seen), the event, the stop
        second.handle(name, doc)
    assert [c[:2] for c in rec2.calls[1:]] == [("write", "event"), ("write", "stop"),
                                               ("emit", STOP)]


def test_kafka_subscriber_constructs():
    from tomopipe.deployments.bus import KafkaSubscriber

    # no broker can run here: construction only (the consumer connects lazily, and is closed)
    sub = KafkaSubscriber(["bluesky.documents"], "127.0.0.1:9", group_id="test")
    try:
        consumer = sub._dispatcher._bluesky_consumer
        assert consumer._topics == ["bluesky.documents"]
        assert consumer._consumer_config == {"auto.offset.reset": "latest", "group.id": "test",
                                             "bootstrap.servers": "127.0.0.1:9"}
    finally:
        sub.close()


# ------------------------------------------------------------------ with the real services

def _sim_docs(home, size=32, rows=8, angles=45, **kw):
    from tomopipe.infra.simulator.run import simulate

    from tomopipe.config import load_settings

    docs = []
    uid = simulate(load_settings(home), size=size, rows=rows, angles=angles, fps=None,
                   sample="bridge-test", callbacks=[lambda n, d: docs.append((n, d))], **kw)
    return uid, docs


def _ledger_events(home, uid):
    ledger = Ledger(Path(home) / "bridge" / "ledger.sqlite")
    try:
        return ledger.events_of(uid)
    finally:
        ledger.close()


def _in_catalog_stopped(home, uid):
    from tomopipe.tasks import catalog as runs

    catalog = runs.catalog_for_home(home)
    try:
        return runs.run_metadata(catalog[uid])[1] is not None
    except KeyError:
        return False


def _bridge_pid(state):
    return state.get("pids", {}).get("bridge")


def test_malformed_bus_messages_do_not_stop_the_bridge(e2_services):  # noqa: F811
    home, state = e2_services
    uid, docs = _sim_docs(home)
    messages = [b"no-spaces-at-all", b" nonsense " + pickle.dumps({"uid": "x"}),
                b" start not-a-pickle", b" start " + pickle.dumps(["a", "list"]),
                b" event " + pickle.dumps({"uid": "e", "descriptor": "nowhere", "data": {}})]
    publish_raw(state["zmq_in"], messages)
    publish(state["zmq_in"], docs, grace=0.5)
    wait_for(lambda: {START, STOP} <= _ledger_events(home, uid), 120, what="both events")
    assert _in_catalog_stopped(home, uid)
    os.kill(_bridge_pid(state), 0)  # still running
    # the same run's documents once more: nothing new, and one live flow run only
    publish(state["zmq_in"], docs, grace=0.5)
    final_run(state, LIVE, uid, 240)
    time.sleep(3)
    assert len(flow_runs(state, LIVE, uid)) == 1


def test_bridge_killed_mid_run_reconstructs_once(e2_services, session_processes):  # noqa: F811
    home, state = e2_services
    uid, docs = _sim_docs(home)
    cut = next(i for i, (n, d) in enumerate(docs) if n == "event"
               and d.get("seq_num") == 20 and "rot_stage" in d.get("data", {}))
    publish(state["zmq_in"], docs[:cut])
    wait_for(lambda: START in _ledger_events(home, uid), 60, what="the start event")
    time.sleep(1.0)  # let the bridge take in what was sent
    old = _bridge_pid(state)
    os.kill(old, signal.SIGKILL)
    env = {**os.environ, "TOMOPIPE_HOME": str(home), "PREFECT_API_URL": state["prefect_api"]}
    ready = Path(home) / "bridge" / "ready"
    ready.unlink(missing_ok=True)
    log = open(Path(home) / "logs" / "bridge-restarted.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tomopipe.deployments.bridge",
                             "--home", str(home)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    session_processes.append(proc)
    # record it as `tomopipe up` would, so `status` and later tests see a healthy home
    from tomopipe.infra.processes import start_time
    from tomopipe.infra.services import write_services

    state.setdefault("pids", {})["bridge"] = proc.pid
    state.setdefault("started", {})["bridge"] = start_time(proc.pid)
    write_services(Path(home), state)
    wait_for(ready.exists, 120, what="the restarted bridge")
    publish(state["zmq_in"], docs[cut:])
    fr = final_run(state, LIVE, uid, 240)
    assert fr["state_type"] == "COMPLETED", fr["state"]["message"]
    time.sleep(3)
    assert len(flow_runs(state, LIVE, uid)) == 1
    assert _ledger_events(home, uid) == {START, STOP}
    from tomopipe.tasks import results_table
    from tomopipe.tasks.storage.omezarr import is_complete

    row = results_table.read_one(home, uid)
    assert row["state"] == "completed" and is_complete(row["output"])
    import zarr

    assert zarr.open_array(str(Path(row["output"]) / "0"), mode="r").shape == (8, 32, 32)


def test_spool_keeps_what_was_received_but_not_handled(tmp_path):
    from tomopipe.deployments.ledger import Spool

    spool = Spool(tmp_path)
    docs = _docs()
    for name, doc in docs[:3]:
        spool.append(name, doc)
    spool.handled()  # one handled, then the process dies
    again = Spool(tmp_path)
    pending = again.pending()
    assert 2 <= len(pending) <= 3 and pending[-1] == (docs[2][0], docs[2][1])
    again.handled(again.backlog)
    assert Spool(tmp_path).pending() == []


def test_events_the_server_refused_are_sent_later(tmp_path):
    rec = Recorder()
    down = {"now": True}

    def emit(event, resource, payload):
        if down["now"]:
            raise ConnectionError("Prefect server unreachable")
        rec.emit(event, resource, payload)

    bridge = Bridge(rec, emit, Ledger(tmp_path / "l.sqlite"), Journal(tmp_path / "j"))
    for name, doc in _docs():
        bridge.handle(name, doc)
    assert bridge.ledger.events_of("run-1") == set()
    assert ("write", "stop", "run-1") in rec.calls  # the catalog still got everything
    assert Journal(tmp_path / "j").open_runs() == []  # and the run is closed
    down["now"] = False
    assert bridge.retry_unsent() == 2
    assert bridge.ledger.events_of("run-1") == {START, STOP}
    assert bridge.retry_unsent() == 0


def test_stalled_run_waits_for_the_catalog_then_goes_on(tmp_path):
    """A catalog that cannot take a document stalls its run: documents go on into the journal,
    no event is emitted, and once the catalog answers the run is rebuilt and its events go."""
    rec = Recorder()
    down = {"now": True}

    class Flaky:
        def write(self, name, doc, uid):
            if down["now"]:
                raise ConnectionError("catalog unreachable")
            rec.write(name, doc, uid)

        def rebuild(self, uid, docs):
            if down["now"]:
                raise ConnectionError("catalog unreachable")
            rec.rebuild(uid, docs)

    bridge = Bridge(Flaky(), rec.emit, Ledger(tmp_path / "ledger.sqlite"),
                    Journal(tmp_path / "j"), beamline="bl", tomo_plans=("tomo_scan",))
    docs = _docs()
    for name, doc in docs:  # the whole run, stop included, while the catalog is down
        bridge.handle(name, doc)
    assert bridge.skipped == 0 and rec.calls == []
    assert bridge.retry_stalled() == [] and rec.calls == []  # still down
    down["now"] = False
    assert bridge.retry_stalled() == ["run-1"]
    assert [c[:2] for c in rec.calls] == [("rebuild", "run-1"), ("emit", START), ("emit", STOP)]
    assert rec.calls[0][2] == len(docs)  # every document, from the journal
    assert Journal(tmp_path / "j").open_runs() == []
    assert bridge.retry_stalled() == []  # nothing left: no second set of events


def _serve_tiled(home, config, port, key):
    from tomopipe.infra import processes, tiled_server

    proc = processes.spawn(tiled_server.argv(str(Path(sys.executable).parent / "tiled"), config,
                                             port), env=dict(os.environ),
                           log_path=Path(home) / "tiled.log")
    processes.wait_healthy("tiled", lambda: tiled_server.catalog_answers(
        f"http://127.0.0.1:{port}", key), proc=proc, log_path=Path(home) / "tiled.log",
        timeout=180)
    return proc


@pytest.mark.slow  # two Tiled start-ups (about 80 s): with the fault matrix, make test-faults
def test_run_written_when_a_killed_catalog_server_comes_back(tmp_path):
    """A real Tiled server SIGKILLed while a run's documents arrive, then started again on the
    same port and database: the bridge writes the whole run from its journal, then emits."""
    from tomopipe.deployments.catalog_writer import CatalogWriter
    from tomopipe.infra import processes, tiled_server
    from tomopipe.tasks.catalog import connect_catalog, run_metadata

    from tomopipe.config import load_settings

    home = tmp_path
    uid, docs = _sim_docs(home)
    key, port = tiled_server.new_api_key(), processes.free_port()
    config = tiled_server.write_config(home, load_settings(home).data_roots, key)
    proc = _serve_tiled(home, config, port, key)
    try:
        catalog = connect_catalog(f"http://127.0.0.1:{port}", key)
        rec = Recorder()
        bridge = Bridge(CatalogWriter(catalog), rec.emit, Ledger(home / "ledger.sqlite"),
                        Journal(home / "journal"), beamline="bl", tomo_plans=("tomo_scan",))
        cut = len(docs) // 2
        for name, doc in docs[:cut]:
            bridge.handle(name, doc)
        assert [c[:2] for c in rec.calls] == [("emit", START)]
        os.killpg(proc.pid, signal.SIGKILL)  # the catalog server dies mid-run
        proc.wait(30)
        for name, doc in docs[cut:]:
            bridge.handle(name, doc)
        assert bridge.skipped == 0 and [c[:2] for c in rec.calls] == [("emit", START)]
        assert bridge.retry_stalled() == []  # still down: nothing emitted
        proc = _serve_tiled(home, config, port, key)
        assert bridge.retry_stalled() == [uid]
        assert [c[:2] for c in rec.calls] == [("emit", START), ("emit", STOP)]
        start, stop = run_metadata(connect_catalog(f"http://127.0.0.1:{port}", key)[uid])
        assert start["uid"] == uid and stop["exit_status"] == "success"
        # every frame of the primary stream is there, including those sent while it was down
        primary_desc = next(d["uid"] for n, d in docs
                            if n == "descriptor" and d["name"] == "primary")
        events = sum(1 for n, d in docs if n == "event" and d["descriptor"] == primary_desc)
        primary = connect_catalog(f"http://127.0.0.1:{port}", key)[uid]["primary"]
        assert events > 0 and len(primary.base["internal"].read()) == events
    finally:
        processes.stop_group(proc.pid)


def _layout_matches_the_documents(run, home, docs):
    """A running scan's layout (no events: what a stream starts from) with the run's planned
    angles gives the frames and angles the whole run's documents give for the frames landed;
    without the plan it says what is missing. (The full documents read now may not do: a
    frame can be registered before its event.)"""
    from tomopipe.tasks.catalog import run_layout, run_metadata
    from tomopipe.tasks.sources.angle_plan import planned_angles_deg
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    from tomopipe.config import load_settings

    roots = load_settings(home).data_roots
    layout = run_layout(run)
    assert "event" not in {name for name, _ in layout}
    whole = scan_from_documents(docs, roots)
    planned = planned_angles_deg(run_metadata(run)[0]["tomo"])
    fast = scan_from_documents(layout, roots, planned_angles_deg=planned)
    n = fast.n_angles
    assert 0 < n < whole.n_angles
    (proj,), (whole_proj,) = fast.projections, whole.projections
    assert (proj.path, proj.dataset) == (whole_proj.path, whole_proj.dataset)
    assert tuple(proj.indices) == tuple(whole_proj.indices)[:n]
    assert (fast.flats, fast.darks) == (whole.flats, whole.darks)  # taken before
    assert fast.angles_deg == pytest.approx(whole.angles_deg[:n])
    with pytest.raises(InputError, match="angles count != frames"):
        scan_from_documents(layout, roots)
    with pytest.raises(InputError, match="angles planned"):
        scan_from_documents(layout, roots, planned_angles_deg=planned[:2])


def _recorded_angles_outlast_a_rebuild(writer, catalog, uid, docs, home):
    """A streamed run's recorded angles are read at its stop. Should the bridge rewrite the run
    then (after a restart: the node is deleted and written again document by document), the
    read waits for the whole run instead of failing on a missing or partial one."""
    import threading

    from tomopipe.tasks.sources.angle_plan import planned_angles_deg
    from tomopipe.tasks.stream_tasks import _recorded_angles

    from tomopipe.context import run_context

    def rebuild_later():
        time.sleep(0.5)  # the first reads find no run, the next ones a partial run
        writer.rebuild(uid, docs)

    catalog[uid].delete(recursive=True, external_only=False)
    rebuilt = threading.Thread(target=rebuild_later)
    rebuilt.start()
    try:
        angles = _recorded_angles(catalog, uid, run_context(home), poll_s=0.02, timeout_s=120)
    finally:
        rebuilt.join()
    assert angles == pytest.approx(planned_angles_deg(docs[0][1]["tomo"]))


def test_frames_reach_the_catalog_when_the_bridge_is_idle(tmp_path):
    """Adaptive batching on a real Tiled server: frames collect while documents wait and go to
    the catalog when the bridge has none waiting (flush), so a run's catalog entry follows its
    frames before the stop, in as many requests as the backlog needs. Fails if the installed
    bluesky's TiledWriter can no longer be flushed (the writer would fall back to batches)."""
    from tomopipe.deployments.catalog_writer import CatalogWriter
    from tomopipe.infra import processes, tiled_server
    from tomopipe.tasks.catalog import connect_catalog, frames_landed, run_metadata

    from tomopipe.config import load_settings

    home = tmp_path
    uid, docs = _sim_docs(home, angles=30)
    key, port = tiled_server.new_api_key(), processes.free_port()
    config = tiled_server.write_config(home, load_settings(home).data_roots, key)
    proc = _serve_tiled(home, config, port, key)
    try:
        catalog = connect_catalog(f"http://127.0.0.1:{port}", key)
        writer = CatalogWriter(catalog)
        bridge = Bridge(writer, Recorder().emit, Ledger(home / "ledger.sqlite"),
                        Journal(home / "journal"), beamline="bl", tomo_plans=("tomo_scan",))
        primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
        frames = [i for i, (n, d) in enumerate(docs)
                  if n == "stream_datum" and d["descriptor"] == primary]
        cut = frames[len(frames) // 2] + 1  # half the projections, then the bridge is idle
        for name, doc in docs[:cut]:
            bridge.handle(name, doc)
        assert writer._writers[uid].flushable
        assert bridge.first_frame_waiting  # the streams' first frames: the main loop flushes
        n_frames = sum(int(d["indices"]["stop"]) - int(d["indices"]["start"])
                       for n, d in docs[:cut] if n == "stream_datum")
        run = connect_catalog(f"http://127.0.0.1:{port}", key)[uid]
        assert frames_landed(run) < n_frames  # collected, not yet sent
        bridge.flush()
        assert not bridge.first_frame_waiting
        run = connect_catalog(f"http://127.0.0.1:{port}", key)[uid]
        assert frames_landed(run) == n_frames
        assert run_metadata(run)[1] is None  # before the stop
        events = sum(1 for n, d in docs[:cut] if n == "event" and d["descriptor"] == primary)
        assert len(run["primary"].base["internal"].read()) == events
        _layout_matches_the_documents(run, home, docs)
        later = next(i for i in range(cut, len(docs)) if docs[i][0] == "stream_datum")
        for name, doc in docs[cut:later + 1]:
            bridge.handle(name, doc)
        assert not bridge.first_frame_waiting  # a later frame waits for the second's batch
        for name, doc in docs[later + 1:]:
            bridge.handle(name, doc)
        run = connect_catalog(f"http://127.0.0.1:{port}", key)[uid]
        assert run_metadata(run)[1]["exit_status"] == "success"
        assert frames_landed(run) == sum(int(d["indices"]["stop"]) - int(d["indices"]["start"])
                                         for n, d in docs if n == "stream_datum")
        assert bridge.skipped == 0
        _recorded_angles_outlast_a_rebuild(writer, catalog, uid, docs, home)
    finally:
        processes.stop_group(proc.pid)
