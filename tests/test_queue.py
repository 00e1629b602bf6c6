"""The queue server smoke test: a real Redis (Debian's redis-server), bluesky-queueserver's real
RE Manager running the simulated beamline's startup script, and a real 0MQ proxy: a queued
``mount_sample`` + ``tomo_scan_sim`` runs, and its documents (with the stage moved) reach the
bus like any other scan's; a running scan is ended early through the queue server
(``queue_client.stop_running``: the ``request_stop`` function run in the background), its stop
document saying why. Skips only when redis-server is not installed (``make redis``)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from tomopipe.infra import processes, queue_server, redis_server

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (make redis)")


def _start(argv, home: Path, name: str, env: dict, started: list):
    proc = processes.spawn(argv, env=env, log_path=home / "logs" / f"{name}.log", cwd=home)
    started.append(proc)
    return proc


@pytest.fixture
def queue_home(tmp_path):
    """A home whose config names a 0MQ proxy, with Redis and the RE Manager running."""
    home = tmp_path / "home"
    home.mkdir()
    ports = {k: processes.free_port() for k in ("zin", "zout", "redis", "ctl", "info")}
    zmq_in, zmq_out = f"tcp://127.0.0.1:{ports['zin']}", f"tcp://127.0.0.1:{ports['zout']}"
    (home / "config.yaml").write_text(f"services:\n  zmq_in: {zmq_in}\n  zmq_out: {zmq_out}\n")
    env = {**os.environ, "TOMOPIPE_HOME": str(home), processes.SERVICE_ENV: str(home)}
    control = f"tcp://127.0.0.1:{ports['ctl']}"
    started: list = []
    try:
        proxy = Path(sys.executable).parent / "bluesky-0MQ-proxy"
        _start([str(proxy), "--in-address", zmq_in, "--out-address", zmq_out], home, "proxy",
               env, started)
        _start(redis_server.argv(home, ports["redis"]), home, "redis", env, started)
        processes.wait_healthy("redis", lambda: redis_server.healthy(
            redis_server.address(ports["redis"])), proc=started[-1],
            log_path=home / "logs" / "redis.log", timeout=60)
        exe = str(Path(sys.executable).parent / "start-re-manager")
        _start(queue_server.argv(exe, home, control=control,
                                 info=f"tcp://127.0.0.1:{ports['info']}",
                                 redis_addr=redis_server.address(ports["redis"])),
               home, "queue", env, started)
        processes.wait_healthy("queue", lambda: queue_server.healthy(control), proc=started[-1],
                               log_path=home / "logs" / "queue.log", timeout=120)
        os.environ["TOMOPIPE_HOME"] = str(home)  # what the test's own look-ups read
        queue_server.open_environment(control, timeout=180)
        yield home, control, zmq_out
    finally:
        processes.stop_groups([(p.pid, None) for p in reversed(started)], timeout=10)


def _collect(zmq_out: str, docs: list, stop: threading.Event):
    import msgpack
    from bluesky.callbacks.zmq import RemoteDispatcher

    dispatcher = RemoteDispatcher(zmq_out, deserializer=lambda b: msgpack.unpackb(b, raw=False))
    dispatcher.subscribe(lambda name, doc: docs.append((name, doc)))
    dispatcher.loop.call_later(0.1, lambda: None)

    def watch():
        while not stop.is_set():
            time.sleep(0.2)
        dispatcher.loop.call_soon_threadsafe(dispatcher.stop)

    threading.Thread(target=watch, daemon=True).start()
    dispatcher.start()


@pytest.mark.timeout(400)
def test_queued_scan_runs_on_the_simulated_beamline_and_reaches_the_bus(queue_home):
    from bluesky_queueserver_api import BPlan
    from tomopipe.tasks.analysis.queue_client import running_run_uid, stop_running

    home, control, zmq_out = queue_home
    docs: list = []
    stop = threading.Event()
    listener = threading.Thread(target=_collect, args=(zmq_out, docs, stop), daemon=True)
    listener.start()
    time.sleep(1.5)  # the subscription reaches the proxy
    rm = queue_server.api(control)
    try:
        plans = rm.plans_allowed()["plans_allowed"]
        assert {"mount_sample", "move_stage", "tomo_scan_sim"} <= set(plans)
        assert rm.item_add(BPlan("mount_sample", 6.0, -3.0))["success"]
        assert rm.item_add(BPlan("move_stage", -6.0, 3.0))["success"]
        added = rm.item_add(BPlan("tomo_scan_sim", angles=8, size=32, rows=4, n_flats=1,
                                  n_darks=1, sample="queued", row_start=1, row_stop=3,
                                  md={"steered_by": "someone"}))
        assert added["success"], added.get("msg")
        rm.queue_start()
        rm.wait_for_idle(timeout=300)
        history = rm.history_get()["items"]
        scan = history[-1]
        assert scan["name"] == "tomo_scan_sim" and scan["result"]["exit_status"] == "completed"
        uid = scan["result"]["run_uids"][0]
        with pytest.raises(rm.RequestFailedError, match="no_such_plan"):
            rm.item_add(BPlan("no_such_plan"))
        # ended early through the queue server: a long scan stopped before its next projection
        long = rm.item_add(BPlan("tomo_scan_sim", angles=400, size=32, rows=4, n_flats=1,
                                 n_darks=1, fps=20.0, sample="stopped"))["item"]["item_uid"]
        rm.queue_start()
        early_uid = running_run_uid(control, long, timeout=120)
        assert early_uid, "the long scan ended before it could be stopped"
        time.sleep(1.0)
        stop_running(control, "good enough: the test says so")
        ended = rm.history_get()["items"][-1]
        assert ended["item_uid"] == long and ended["result"]["exit_status"] == "completed"
    finally:
        rm.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
            n == "stop" and d["run_start"] == early_uid for n, d in docs):
        time.sleep(0.2)
    stop.set()
    starts = [d for n, d in docs if n == "start" and d["uid"] == uid]
    assert starts, f"the queued run {uid} never reached the bus ({len(docs)} documents seen)"
    start = starts[0]
    assert start["plan_name"] == "tomo_scan" and start["steered_by"] == "someone"
    assert start["simulated"]["stage_px"] == [-6.0, 3.0]
    assert start["tomo"]["detector_rows"] == [1, 3]
    events = [d for n, d in docs if n == "event"]
    assert events and any(n == "stream_resource" for n, _ in docs)
    stops = [d for n, d in docs if n == "stop" and d["run_start"] == early_uid]
    assert stops, f"the stopped run {early_uid} has no stop document on the bus"
    assert stops[0]["exit_status"] == "success"
    assert stops[0]["reason"] == "good enough: the test says so"
    assert 0 < stops[0]["num_events"]["primary"] < 400
