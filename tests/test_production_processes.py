"""infra/production stays runnable: every service its compose file names, started as processes.

No Docker here, so each service of ``infra/production/docker-compose.yml`` runs as a process with
the compose file's own command and environment, translated for one machine: service host names
become 127.0.0.1 and free ports, container paths become temporary folders, the ``.env`` secrets
are test values, and ``postgres`` is Debian's server (tests/pg_support.py) set up by the compose
file's own ``postgres/init-databases.sh``. The Tiled service reads the production
``tiled/config.yml`` (its host and folders translated the same way). The home's config.yaml is
``config.example.yaml`` (what the operator copies), its data paths under a temporary folder.

Checked: the bootstrap writes the home's services.json and registers the deployments in
PostgreSQL; the Prefect API answers, refuses a client without the auth string and takes one
with it; the worker joins the ``tomopipe`` pool; Tiled refuses a client without the API key and
answers one with it; the bridge takes a run off the 0MQ proxy and writes it into the catalog,
whose rows are in PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from pg_support import Postgres, pg_bin, postgres_unavailable, start_postgres
from tomopipe.infra.processes import free_port

REPO = Path(__file__).resolve().parents[1]
PROD = REPO / "infra/production"
BIN = Path(sys.executable).parent
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "PREFECT_DB_PASSWORD": "prefect-secret",
           "TILED_DB_PASSWORD": "tiled-secret",
           "TILED_SINGLE_USER_API_KEY": "0123456789abcdef0123456789abcdef",  # Tiled: alphanumeric
           "PREFECT_API_AUTH_STRING": "tomo:prefect-pass"}
# the order compose starts them in (depends_on)
ORDER = ("zmq-proxy", "prefect-server", "tiled", "bootstrap", "prefect-worker", "bridge")

pytestmark = pytest.mark.slow


def substitute(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR:?message}."""
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":?" and not value:
            raise AssertionError(f"compose needs {name}: {arg}")
        if op == ":-" and not value:
            return arg
        return value or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, text)


def _wait(check, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p, log in procs:
            if p.poll() is not None and name != "bootstrap":
                raise AssertionError(f"{name} exited {p.returncode}: {log.read_text()[-3000:]}")
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_every_compose_service_runs_as_a_process_and_they_talk(tmp_path):
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    ports = {name: free_port() for name in ("postgres", "prefect", "tiled", "zin", "zout")}
    home, data, tiled_data = tmp_path / "home", tmp_path / "gpfs", tmp_path / "tiled-data"
    for d in (home, data / "raw", data / "volumes", tiled_data):
        d.mkdir(parents=True)
    env_file = {**SECRETS, "FACILITY_DATA": str(data), "TOMOPIPE_PUBLISH_ADDRESS": "127.0.0.1",
                "PREFECT_PUBLIC_URL": f"http://127.0.0.1:{ports['prefect']}"}

    def translate(text: str) -> str:
        text = substitute(text, env_file)
        for old, new in ((r"postgres:5432", f"127.0.0.1:{ports['postgres']}"),
                         (r"prefect-server:4200", f"127.0.0.1:{ports['prefect']}"),
                         (r"//tiled:8000", f"//127.0.0.1:{ports['tiled']}"),
                         (r"zmq-proxy:5577", f"127.0.0.1:{ports['zin']}"),
                         (r"zmq-proxy:5578", f"127.0.0.1:{ports['zout']}"),
                         ("/tomopipe/home", str(home)), ("/tiled/data", str(tiled_data)),
                         ("/etc/tiled/config.yml", str(tmp_path / "tiled.yml")),
                         ("/gpfs/tomo", str(data))):
            text = text.replace(old, new)
        return text

    compose = yaml.safe_load(translate((PROD / "docker-compose.yml").read_text()))
    services = compose["services"]
    assert set(services) == {"postgres", *ORDER}, "a service was added: start it here too"
    (tmp_path / "tiled.yml").write_text(translate((PROD / "tiled/config.yml").read_text()))
    (home / "config.yaml").write_text(translate((PROD / "config.example.yaml").read_text()))

    # postgres: Debian's server, then the compose file's first-start script
    pg = start_postgres(tmp_path / "pg", ports["postgres"], database="tomopipe_scratch")
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    try:
        init = subprocess.run(
            ["bash", str(PROD / "postgres/init-databases.sh")], capture_output=True, text=True,
            timeout=60, env={**os.environ, **services["postgres"]["environment"],
                             "PATH": f"{pg_bin()}:{os.environ['PATH']}",
                             "PGHOST": "127.0.0.1", "PGPORT": str(ports["postgres"])})
        assert init.returncode == 0, init.stderr
        prefect_db = Postgres(pg.data, pg.port, "prefect")
        tiled_db = Postgres(pg.data, pg.port, "tiled")
        assert prefect_db.psql("select current_database()").strip() == "prefect"

        def start(name: str) -> subprocess.Popen:
            svc = services[name]
            argv = [str(a) for a in svc["command"]]
            argv = ["127.0.0.1" if a == "0.0.0.0" else a for a in argv]
            port_for = {"prefect-server": ports["prefect"], "tiled": ports["tiled"]}
            if "--port" in argv:  # the container's fixed port -> a free one here
                argv[argv.index("--port") + 1] = str(port_for[name])
            if name == "zmq-proxy":
                argv[argv.index("--in-address") + 1] = str(ports["zin"])
                argv[argv.index("--out-address") + 1] = str(ports["zout"])
            exe = BIN / argv[0] if (BIN / argv[0]).exists() else shutil.which(argv[0])
            argv[0] = sys.executable if argv[0] == "python" else str(exe)
            env = {**os.environ, **{k: str(v) for k, v in (svc.get("environment") or {}).items()},
                   "PREFECT_HOME": str(tmp_path / f"prefect-home-{name}")}
            for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "TOMOPIPE_HOME"):
                if key not in (svc.get("environment") or {}):
                    env.pop(key, None)  # nothing of this session leaks into the service
            log = tmp_path / f"{name}.log"
            p = subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
            procs.append((name, p, log))
            return p

        api = f"http://127.0.0.1:{ports['prefect']}/api"
        tiled = f"http://127.0.0.1:{ports['tiled']}"
        auth = {"Authorization": "Basic " + base64.b64encode(
            SECRETS["PREFECT_API_AUTH_STRING"].encode()).decode()}
        key = {"Authorization": f"Apikey {SECRETS['TILED_SINGLE_USER_API_KEY']}"}

        start("zmq-proxy")
        start("prefect-server")
        start("tiled")
        _wait(lambda: httpx.get(f"{api}/health", timeout=5).is_success, 240,
              "the Prefect server (healthcheck)", procs)
        _wait(lambda: httpx.get(f"{tiled}/healthz", timeout=5).is_success, 180,
              "Tiled (healthcheck)", procs)

        bootstrap = start("bootstrap")
        assert bootstrap.wait(timeout=300) == 0, (tmp_path / "bootstrap.log").read_text()[-3000:]
        state = json.loads((home / "services.json").read_text())
        assert state["prefect_api"] == api and state["tiled"] == tiled
        assert state["zmq_in"] == f"tcp://127.0.0.1:{ports['zin']}"
        assert SECRETS["PREFECT_API_AUTH_STRING"] not in (home / "services.json").read_text()
        start("prefect-worker")
        start("bridge")

        # Prefect: auth required; the deployments are rows in PostgreSQL
        assert httpx.get(f"{api}/admin/version", timeout=10).status_code == 401
        assert httpx.get(f"{api}/admin/version", headers=auth, timeout=10).is_success
        names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={},
                                                headers=auth, timeout=10).json()}
        assert "live-run" in names or any("live" in n for n in names), names
        assert int(prefect_db.psql("select count(*) from deployment").strip()) == len(names)
        _wait(lambda: httpx.post(f"{api}/work_pools/tomopipe/workers/filter", json={},
                                 headers=auth, timeout=10).json(), 180,
              "the worker to join pool tomopipe", procs)

        # Tiled: the API key is required
        assert httpx.get(f"{tiled}/api/v1/search/", timeout=10).status_code in (401, 403)
        assert httpx.get(f"{tiled}/api/v1/search/", headers=key, timeout=10).is_success

        # the bridge: a run published to the proxy lands in the catalog (rows in PostgreSQL)
        from test_flows_support import publish

        uid = str(uuid.uuid4())
        docs = [("start", {"uid": uid, "time": time.time(), "plan_name": "count",
                           "scan_id": 1}),
                ("stop", {"uid": str(uuid.uuid4()), "run_start": uid, "time": time.time(),
                          "exit_status": "success", "num_events": {}})]

        sent = {"at": 0.0}

        def in_catalog() -> bool:
            # the bridge subscribes once it has started: send again until the run is there
            # (a run sent twice is written once)
            if time.monotonic() - sent["at"] > 10:
                publish(f"tcp://127.0.0.1:{ports['zin']}", docs, serializer="msgpack")
                sent["at"] = time.monotonic()
            return httpx.get(f"{tiled}/api/v1/metadata/{uid}", headers=key,
                             timeout=10).is_success

        _wait(in_catalog, 120, f"run {uid} in the catalog", procs)
        assert int(tiled_db.psql("select count(*) from nodes").strip()) >= 1
        for name, p, log in procs:
            if name != "bootstrap":
                assert p.poll() is None, f"{name} stopped: {log.read_text()[-2000:]}"
    finally:
        for _name, p, _ in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _name, p, _ in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        pg.stop()
