"""The embedded services: ``tomopipe up``, ``status``, ``down`` with real processes on loopback.

Everything here is real: the Prefect server and worker, bluesky's 0MQ proxy, the Tiled server
and the bridge run as processes; their addresses are checked by HTTP, a 0MQ round trip and
``tiled.client.from_uri``. The cheap tests at the top start no service (or only fail to).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgpack
import psutil
import pytest
import yaml
import zmq
from conftest import tomopipe_cli
from tomopipe.infra import processes
from tomopipe.infra import services as svc
from tomopipe.infra.state import read_services, state_path, write_services

from tomopipe.config import load_settings
from tomopipe.errors import ConfigError, ServiceError

CONTRACT = ("prefect_api", "prefect_ui", "zmq_in", "zmq_out", "zmq_serializer", "tiled",
            "dask_scheduler", "dask_dashboard", "tiled_api_key", "data_root", "home", "pids",
            "logs")
ADDRESS_KEYS = ("prefect_api", "prefect_ui", "zmq_in", "zmq_out", "tiled", "dask_scheduler",
                "dask_dashboard")


def _group_pids(state: dict) -> set[int]:
    """Every process of the services: the leaders and all their descendants."""
    pids = set()
    for pid in state["pids"].values():
        pids.add(pid)
        try:
            pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return pids


# ---------------------------------------------------------------- no services running

def test_status_and_down_when_nothing_is_up(tmp_path):
    home = tmp_path / "empty"
    status = tomopipe_cli("status", "--json", home=home)
    assert status.returncode == 1
    assert json.loads(status.stdout) == {"home": str(home.resolve()), "running": False}
    plain = tomopipe_cli("status", home=home)
    assert plain.returncode == 1 and "no services are up" in plain.stderr
    down = tomopipe_cli("down", home=home)
    assert down.returncode == 0 and "nothing was running" in down.stdout


def test_state_file_is_readable_by_its_owner_only(tmp_path):
    """services.json holds the Tiled API key, whoever writes it (`up` or the production
    bootstrap)."""
    write_services(tmp_path, {"tiled_api_key": "k"})
    write_services(tmp_path, {"tiled_api_key": "k2"})  # and when it is written again
    assert state_path(tmp_path).stat().st_mode & 0o777 == 0o600
    assert read_services(tmp_path) == {"tiled_api_key": "k2"}


def test_stale_state_is_reported_unhealthy_and_cleared_without_signalling(tmp_path):
    # A pid from an old state file may since belong to someone else: the start time guards it.
    bystander = psutil.Process()  # this test process: must survive `down`
    state = {"prefect_api": "http://127.0.0.1:9/api", "prefect_ui": "http://127.0.0.1:9",
             "zmq_in": "tcp://127.0.0.1:9", "zmq_out": "tcp://127.0.0.1:9",
             "zmq_serializer": "pickle", "tiled": "http://127.0.0.1:9", "data_root": "/x",
             "pids": {"prefect": bystander.pid}, "started": {"prefect": 1.0}}
    write_services(tmp_path, state)
    status = tomopipe_cli("status", "--json", home=tmp_path)
    assert status.returncode == 2
    assert json.loads(status.stdout)["health"] == {"prefect": False}
    assert svc.down(tmp_path) == []
    assert bystander.is_running() and read_services(tmp_path) is None


def test_configured_port_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = tomopipe_cli("up", f"--tiled-port={port}", home=tmp_path)
    assert proc.returncode == 1
    assert f"port {port} for tiled is already in use" in proc.stderr
    assert read_services(tmp_path) is None and not (tmp_path / "logs").exists()


def test_missing_data_root_is_a_config_error(tmp_path):
    (tmp_path / "config.yaml").write_text(f"data_roots: [{tmp_path / 'nowhere'}]\n")
    with pytest.raises(ConfigError, match="nowhere is not a directory"):
        svc.up(load_settings(tmp_path))


def test_a_service_that_dies_fails_up_naming_it_and_stops_the_rest(tmp_path, monkeypatch):
    # Tiled replaced by a program that exits at once: up must notice without waiting for the
    # others, name it and its log, and stop what it had started.
    spawned = []
    real_spawn = processes.spawn

    def spawn(argv, **kw):
        proc = real_spawn(argv, **kw)
        spawned.append(proc)
        return proc

    monkeypatch.setattr(processes, "spawn", spawn)
    monkeypatch.setattr(svc.tiled_server, "argv", lambda exe, config, port: [
        sys.executable, "-c", "import sys; print('tiled cannot start'); sys.exit(3)"])
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as err:
        svc.up(load_settings(tmp_path), timeout=120, bridge=False, register=False)
    message = str(err.value)
    assert "tiled exited with status 3" in message
    assert str(tmp_path / "logs" / "tiled.log") in message and "tiled cannot start" in message
    assert time.monotonic() - t0 < 60
    # all but the bridge and the stream starter, which start last (and the queue, not asked for)
    assert len(spawned) == len(svc.CORE_SERVICES) - 2
    assert not any(processes.alive(p.pid) for p in spawned)
    assert read_services(tmp_path) is None


def test_down_stops_what_a_killed_up_had_started(tmp_path):
    env = {**os.environ, "TOMOPIPE_HOME": str(tmp_path)}
    up = subprocess.Popen([sys.executable, "-m", "tomopipe.cli", "up", "--no-deployments"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    starting = tmp_path / svc.STARTING_FILE
    try:
        deadline = time.monotonic() + 60
        pids = {}
        while len(pids) < 4 and time.monotonic() < deadline:
            if starting.exists():
                with contextlib.suppress(ValueError):
                    pids = json.loads(starting.read_text())["pids"]
            time.sleep(0.1)
        assert len(pids) >= 4, f"up started {pids} within 60 s"
    finally:
        up.kill()  # as by SIGKILL or a lost terminal: up cannot clean up itself
        up.wait()
    assert any(processes.alive(pid) for pid in pids.values())
    down = tomopipe_cli("down", home=tmp_path)
    assert down.returncode == 0
    assert not [n for n, pid in pids.items() if processes.alive(pid)]
    assert not starting.exists()


# ---------------------------------------------------------------- with the session's services

def test_status_json_contract(services, services_home):
    proc = tomopipe_cli("status", "--json", home=services_home)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    for key in CONTRACT:
        assert key in status, key
    assert status["zmq_serializer"] == "msgpack"
    assert status["home"] == str(services_home.resolve())
    # every core service, and the queue's where a test added it to this home, all healthy
    assert set(svc.CORE_SERVICES) <= set(status["health"]) <= set(svc.SERVICES)
    assert all(status["health"].values()), status["health"]
    assert status["healthy"] is True
    for key in ("prefect_api", "prefect_ui", "tiled"):
        assert status[key].startswith("http://127.0.0.1:")
    for key in ("zmq_in", "zmq_out"):
        assert status[key].startswith("tcp://127.0.0.1:")
    for name, log in status["logs"].items():
        assert Path(log) == services_home.resolve() / "logs" / f"{name}.log"
        assert Path(log).stat().st_size > 0
    # the readable form prints the addresses but never the API key
    plain = tomopipe_cli("status", home=services_home)
    assert plain.returncode == 0 and status["tiled"] in plain.stdout
    assert status["tiled_api_key"] not in plain.stdout + plain.stderr


def test_prefect_server_and_worker_answer(services):
    api = services["prefect_api"]
    assert httpx.get(f"{api}/health", timeout=10).json() is True
    assert httpx.get(services["prefect_ui"], timeout=10).is_success
    pool = httpx.get(f"{api}/work_pools/{services['work_pool']}", timeout=10).json()
    assert pool["type"] == "process"
    workers = httpx.post(f"{api}/work_pools/{services['work_pool']}/workers/filter", json={},
                         timeout=10).json()
    assert [w["status"] for w in workers] == ["ONLINE"]
    # the worker process carries the settings that make triggered runs start promptly
    env = psutil.Process(services["pids"]["worker"]).environ()
    assert env["PREFECT_API_URL"] == api
    assert env["TOMOPIPE_HOME"] == services["home"]
    assert env["PREFECT_WORKER_QUERY_SECONDS"] == svc.WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"]


def test_zmq_proxy_round_trip(services):
    assert services["zmq_serializer"] == "msgpack"
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(services["zmq_out"])
        pub.connect(services["zmq_in"])
        doc = {"uid": "round-trip", "time": time.time()}
        # bluesky's Publisher frame: b"<prefix> <name> <serialized doc>"
        message = b" ".join([b"", b"start", msgpack.packb(doc)])
        deadline = time.monotonic() + 20
        received = None
        while received is None and time.monotonic() < deadline:
            pub.send(message)  # resend: a new subscription takes a moment to reach the proxy
            if sub.poll(250):
                received = sub.recv()
        assert received == message
        _, name, payload = received.split(b" ", 2)
        assert name == b"start" and msgpack.unpackb(payload) == doc
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_tiled_opens_with_the_key_and_refuses_without(services):
    from tiled.client import from_uri

    assert httpx.get(f"{services['tiled']}/healthz", timeout=10).is_success
    catalog = from_uri(services["tiled"], api_key=services["tiled_api_key"])
    assert type(catalog).__name__ == "CatalogOfBlueskyRuns"
    anonymous = httpx.get(f"{services['tiled']}/api/v1/metadata/", timeout=10)
    assert anonymous.status_code == 401


def test_tiled_stores_a_run_and_serves_its_hdf5_from_the_data_root(services, services_home):
    # A simulated scan writes HDF5 under the data root and emits StreamResource documents;
    # TiledWriter stores them; reading the frames back through Tiled proves it reads the root.
    pytest.importorskip("tomopipe.infra.simulator.run")
    import numpy as np
    from bluesky.callbacks.tiled_writer import TiledWriter
    from tiled.client import from_uri
    from tomopipe.infra.simulator.run import simulate

    frames = {}

    def on_frame(kind, index, frame):
        frames[(kind, index)] = np.array(frame)

    catalog = from_uri(services["tiled"], api_key=services["tiled_api_key"])
    settings = load_settings(services_home)
    uid = simulate(settings, size=8, rows=2, angles=4, fps=None, sample="services-test",
                   callbacks=[TiledWriter(catalog)], n_flats=1, n_darks=1, on_frame=on_frame)
    run = catalog[uid]
    assert run.start["uid"] == uid
    written = sorted(Path(services["data_root"]).rglob("*.h5"))
    assert written and all(p.is_relative_to(services["data_root"]) for p in written)
    stream = run["primary"]
    arrays = [stream[k] for k in stream if getattr(stream[k], "shape", ())[-2:] == (2, 8)]
    assert arrays, f"no (n, 2, 8) detector array in the primary stream: {list(stream)}"
    served = arrays[0].read()
    projections = [frames[k] for k in sorted(frames) if k[0] == "projection"]
    assert served.shape[0] == len(projections) == 4
    np.testing.assert_array_equal(served, np.stack(projections))


def test_second_up_changes_nothing(services, services_home):
    before = state_path(services_home).read_bytes()
    proc = tomopipe_cli("up", home=services_home)
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stdout
    assert state_path(services_home).read_bytes() == before
    assert all(processes.alive(pid) for pid in services["pids"].values())


def test_two_homes_side_by_side_then_down_stops_every_process(services, services_home,
                                                               tmp_path, request):
    other = tmp_path / "other-home"
    # whatever fails below, the second home's processes must not outlive the test
    request.addfinalizer(lambda: tomopipe_cli("down", home=other, timeout=60))
    t0 = time.monotonic()
    prefect_port = processes.free_port()  # a configured port is used as given
    proc = tomopipe_cli("up", "--no-deployments", "--timeout=240",
                        f"--prefect-port={prefect_port}", home=other, timeout=280)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The state file records processes only; the addresses are configuration.
    assert set(read_services(other)) <= set(svc.PROCESS_KEYS)
    second = svc.view(other)
    assert second["prefect_api"] == f"http://127.0.0.1:{prefect_port}/api"
    print(f"second `tomopipe up` took {seconds:.1f} s: {second.get('startup_timings')}")

    ports = {a.rsplit(":", 1)[1] for a in (second["prefect_ui"], second["tiled"],
                                           second["zmq_in"], second["zmq_out"])}
    first = {a.rsplit(":", 1)[1] for a in (services["prefect_ui"], services["tiled"],
                                           services["zmq_in"], services["zmq_out"])}
    assert len(ports) == 4 and not ports & first
    assert Path(second["prefect_home"]) == other.resolve() / "prefect"
    assert all(svc.health(second).values()) and all(svc.health(services).values())

    everything = _group_pids(second)
    # children too: the worker's fork server, the Prefect server's own processes
    assert everything - set(second["pids"].values())
    down = tomopipe_cli("down", home=other, timeout=60)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not [pid for pid in everything if processes.alive(pid)]
    assert read_services(other) is None
    again = tomopipe_cli("down", home=other)
    assert again.returncode == 0 and "nothing was running" in again.stdout
    assert tomopipe_cli("status", home=other).returncode == 1
    # the first home is untouched
    assert all(svc.health(services).values())


@pytest.mark.slow  # two full `up`s (about 80 s): make test-faults runs it
@pytest.mark.timeout(900)
def test_restarted_services_keep_their_addresses(tmp_path, request):
    """`down` then `up` with no options: every service is where it was, so the Prefect UI
    address a person bookmarked still opens; the state file records processes only."""
    home = tmp_path / "restart-home"
    request.addfinalizer(lambda: tomopipe_cli("down", home=home, timeout=60))
    addresses = []
    for _ in range(2):
        proc = tomopipe_cli("up", "--no-deployments", "--no-bridge", "--timeout=300",
                            home=home, timeout=360)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert set(read_services(home)) <= set(svc.PROCESS_KEYS)
        view = svc.view(home)
        addresses.append({k: view[k] for k in ADDRESS_KEYS})
        ui_settings = httpx.get(f"{view['prefect_ui']}/ui-settings", timeout=10).json()
        assert ui_settings["api_url"] == view["prefect_api"]
        assert tomopipe_cli("down", home=home, timeout=60).returncode == 0
    assert addresses[0] == addresses[1]
    picked = yaml.safe_load((home / "addresses.yaml").read_text())
    assert picked["prefect_api"] == addresses[0]["prefect_api"]
