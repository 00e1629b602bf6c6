"""Security of the facility configuration and of the embedded services.

- The production compose file protects the Prefect API with Prefect's basic auth
  (PREFECT_SERVER_API_AUTH_STRING on the server, PREFECT_API_AUTH_STRING for the worker, the
  bridge and the bootstrap), Tiled with its API key, and publishes ports only on
  TOMOPIPE_PUBLISH_ADDRESS (127.0.0.1 unless the operator names an interface).
- Basic auth for real: a real Prefect server with PREFECT_SERVER_API_AUTH_STRING refuses a client
  without the string (and with a wrong one); the real bootstrap, as a process, registers the
  deployments with PREFECT_API_AUTH_STRING and stops with one line naming the variable without
  it. The string is never printed nor written to services.json.
- Every listening socket of every process of a real ``tomopipe up`` home is on loopback
  (psutil's net_connections).

No container runs here (no Docker daemon): the compose file is parsed, not started.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "infra/production"
LOOPBACK = {"127.0.0.1", "::1"}
AUTH = "tomopipe:s3cret-" + "x7Qp2"  # built, so a grep of the sources does not find it whole


def _compose() -> dict:
    return yaml.safe_load((PROD / "docker-compose.yml").read_text())


def test_compose_protects_prefect_with_basic_auth_and_tiled_with_its_key():
    services = _compose()["services"]
    server_env = services["prefect-server"]["environment"]
    assert re.fullmatch(r"\$\{PREFECT_API_AUTH_STRING:\?.+\}",
                        server_env["PREFECT_SERVER_API_AUTH_STRING"])
    for client in ("prefect-worker", "bridge", "bootstrap"):
        env = services[client]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == server_env["PREFECT_SERVER_API_AUTH_STRING"], \
            f"{client} does not send the server's auth string"
    assert re.fullmatch(r"\$\{TILED_SINGLE_USER_API_KEY:\?.+\}",
                        services["tiled"]["environment"]["TILED_SINGLE_USER_API_KEY"])
    tiled_cfg = yaml.safe_load((PROD / "tiled/config.yml").read_text())
    assert tiled_cfg["authentication"]["single_user_api_key"] == "${TILED_SINGLE_USER_API_KEY}"
    example = (PROD / ".env.example").read_text()
    for name in ("PREFECT_API_AUTH_STRING", "TILED_SINGLE_USER_API_KEY",
                 "TOMOPIPE_PUBLISH_ADDRESS"):
        assert re.search(rf"^#?\s*{name}=", example, re.MULTILINE), f"{name} not in .env.example"


def test_compose_publishes_ports_on_loopback_unless_the_operator_says():
    published = {name: svc.get("ports") or [] for name, svc in _compose()["services"].items()}
    assert {n for n, p in published.items() if p} == {"prefect-server", "tiled", "zmq-proxy"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("${TOMOPIPE_PUBLISH_ADDRESS:-127.0.0.1}:"), \
                f"{name} publishes {port} on every interface"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _basic(auth: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


@pytest.fixture(scope="module")
def prefect_with_auth(tmp_path_factory):
    """A real Prefect server (SQLite, its own PREFECT_HOME) requiring AUTH."""
    base = tmp_path_factory.mktemp("prefect_auth")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(base / "prefect"),
           "PREFECT_SERVER_API_AUTH_STRING": AUTH, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY"):
        env.pop(name, None)
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prefect server did not start:\n{(base / 'server.log').read_text()}")
            time.sleep(0.5)
        yield api, base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.timeout(600)  # a Prefect server's start on a busy machine
def test_prefect_refuses_clients_without_the_auth_string(prefect_with_auth):
    api, _ = prefect_with_auth
    assert httpx.get(f"{api}/health", timeout=10).is_success  # probes stay open
    assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
    wrong = _basic("tomopipe:guess")
    assert httpx.post(f"{api}/flows/filter", json={}, headers=wrong,
                      timeout=10).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, headers=_basic(AUTH),
                      timeout=10).status_code == 200


def _bootstrap(api: str, home: Path, auth: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "TOMOPIPE_HOME": str(home),
           "PREFECT_HOME": str(home / "prefect-client"),
           "TOMOPIPE_TILED_URL": "http://127.0.0.1:9", "TOMOPIPE_TILED_API_KEY": "k3y"}
    env.pop("PREFECT_API_AUTH_STRING", None)
    if auth is not None:
        env["PREFECT_API_AUTH_STRING"] = auth
    return subprocess.run([sys.executable, "-m", "tomopipe.infra.production.bootstrap",
                           "--wait-s", "60"], env=env, capture_output=True, text=True,
                          timeout=240, cwd=REPO)


@pytest.mark.timeout(600)  # a Prefect server's start on a busy machine
def test_bootstrap_registers_with_the_auth_string_and_names_it_when_missing(prefect_with_auth):
    api, base = prefect_with_auth
    refused = _bootstrap(api, base / "home-no-auth", None)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "PREFECT_API_AUTH_STRING" in lines[0] and "401" in lines[0], \
        refused.stderr
    wrong = _bootstrap(api, base / "home-wrong", "tomopipe:guess")
    assert wrong.returncode == 2 and "was refused" in wrong.stderr and "guess" not in wrong.stderr

    done = _bootstrap(api, base / "home", AUTH)
    assert done.returncode == 0, done.stderr
    assert "registered" in done.stdout
    r = httpx.post(f"{api}/deployments/filter", json={}, headers=_basic(AUTH), timeout=30)
    names = {d["name"] for d in r.json()}
    assert {"live", "single-run", "backfill"} <= names
    state_file = base / "home" / "services.json"
    assert AUTH not in state_file.read_text()
    assert AUTH not in done.stdout + done.stderr
    assert state_file.stat().st_mode & 0o777 == 0o600


def _home_processes(state: dict) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in (state.get("pids") or {}).values():
        try:
            top = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for p in [top, *top.children(recursive=True)]:
            procs[p.pid] = p
    return list(procs.values())


@pytest.mark.timeout(900)  # the session's `tomopipe up` on a busy 2-core machine
def test_every_embedded_service_listens_on_loopback_only(services):
    procs = _home_processes(services)
    names = set(services["pids"])
    assert {"prefect", "worker", "zmq_proxy", "tiled", "bridge"} <= names
    listening = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                listening.append((p.pid, " ".join(p.cmdline()[:4]), c.laddr.ip, c.laddr.port))
    ports = {port for *_, port in listening}
    for address in (services["prefect_api"], services["tiled"], services["zmq_in"],
                    services["zmq_out"]):
        assert int(address.rsplit(":", 1)[1].split("/")[0]) in ports, f"{address} not found"
    exposed = [entry for entry in listening if entry[2] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.timeout(600)
def test_a_local_dask_cluster_listens_on_loopback_only():
    """The cluster ``tomopipe recon --workers N`` and the flows start for a run: scheduler,
    workers, nannies and the dashboard all on loopback (the dashboard used to take every
    interface)."""
    from tomopipe.infra.cluster import local_cluster

    me = psutil.Process()

    def sockets() -> set[tuple[int, str, int]]:
        return {(p.pid, c.laddr.ip, c.laddr.port) for p in [me, *me.children(recursive=True)]
                for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    before = sockets()  # whatever else this test process already listens on is not the cluster's
    cluster = local_cluster(workers=1)
    try:
        listening = sockets() - before
        dashboard_port = int(cluster.dashboard_link.split(":")[2].split("/")[0])
        assert dashboard_port in {port for *_, port in listening}
        exposed = [entry for entry in listening if entry[1] not in LOOPBACK]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        cluster.close()
