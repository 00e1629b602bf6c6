"""Prefect's server on a real PostgreSQL (tests/pg_support.py), as a facility runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from pg_support import postgres_unavailable, start_postgres
from tomopipe.infra.prefect_server import uses_sqlite
from tomopipe.infra.processes import free_port

FLOW = """
from prefect import flow, task

@task
def double(x):
    return 2 * x

@flow(name="pg-check")
def check():
    return sum(double.map([1, 2, 3]).result())

assert check() == 12
"""


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    pg = start_postgres(tmp_path_factory.mktemp("pg"), free_port())
    yield pg
    pg.stop()


def test_sqlite_patch_only_for_sqlite():
    assert uses_sqlite(None) and uses_sqlite("sqlite+aiosqlite:///x.db")
    assert not uses_sqlite("postgresql+asyncpg://u@127.0.0.1:5432/prefect")


def test_prefect_server_on_postgres_records_flow_runs(postgres, tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    log = open(tmp_path / "prefect.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "tomopipe.infra.prefect_server", "server",
                               "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "prefect.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prefect server did not become healthy"
            time.sleep(0.5)
        done = subprocess.run([sys.executable, "-c", FLOW], env={**env, "PREFECT_API_URL": api},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        # the run and its task runs are rows of the PostgreSQL database
        assert postgres.psql("select count(*) from flow_run f join flow on f.flow_id = flow.id "
                             "where flow.name = 'pg-check' and f.state_type = 'COMPLETED'"
                             ).strip() == "1"
        assert int(postgres.psql("select count(*) from task_run").strip()) >= 3
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_bad_database_url_is_one_line_naming_the_key(tmp_path):
    from tomopipe.config import load_settings
    from tomopipe.errors import ConfigError

    (tmp_path / "config.yaml").write_text("services:\n  prefect_database: mysql://db/prefect\n")
    with pytest.raises(ConfigError, match=r"services\.prefect_database: expected postgresql"):
        load_settings(tmp_path)


@pytest.mark.slow
def test_tomopipe_up_runs_prefect_on_the_configured_postgres(postgres, tmp_path):
    """Facility mode: ``services.prefect_database`` puts the services' Prefect on PostgreSQL
    (the deployments ``up`` registers are rows there) and status does not show the URL; the
    dataflow runs on it end to end: a simulated scan on the bus, the bridge's event, the live-run
    deployment's flow run taken by the worker, the volume, the COMPLETED run a PostgreSQL row."""
    import yaml
    from conftest import tomopipe_cli
    from test_flows_support import LIVE, final_run
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks.storage.omezarr import is_complete

    from tomopipe.config import load_settings

    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "data").mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({
        "data_roots": [str(tmp_path / "data")],
        "services": {"prefect_database": postgres.url}}))
    try:
        up = tomopipe_cli("up", "--timeout=240", home=home, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert int(postgres.psql("select count(*) from deployment").strip()) >= 1
        status = tomopipe_cli("status", "--json", home=home)
        assert postgres.url not in status.stdout

        from tomopipe.infra.services import view

        state = view(home)  # the services' addresses
        api = state["prefect_api"]
        # reconstruct in the flow's process (workers=0): a tiny scan, as tests/test_flows.py
        dep = httpx.get(f"{api}/deployments/name/{LIVE}/live", timeout=30).json()
        httpx.patch(f"{api}/deployments/{dep['id']}", timeout=30, json={
            "parameters": {**(dep.get("parameters") or {}), "workers": 0}}).raise_for_status()
        uid = simulate(load_settings(home), size=32, rows=8, angles=45, fps=None,
                       sample="pg-dataflow", publish_to=state["zmq_in"])
        fr = final_run(state, LIVE, uid, 300)
        assert fr["state_type"] == "COMPLETED", fr["state"]["message"]
        assert postgres.psql(
            "select count(*) from flow_run f join flow on f.flow_id = flow.id where flow.name ="
            f" '{LIVE}' and f.state_type = 'COMPLETED' and f.parameters->>'uid' = '{uid}'"
        ).strip() == "1"
        from tomopipe.tasks import results_table

        row = results_table.read_one(home, uid)
        assert row["state"] == "completed" and is_complete(row["output"])
    finally:
        tomopipe_cli("down", home=home, timeout=120)
