"""The standing compute service: a real scheduler with nanny-managed worker processes on
loopback (``python -m tomopipe.infra.dask_service``), the one ``tomopipe up`` starts, and
``tomopipe recon`` choosing between it and a run of its own. Nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
import yaml
import zarr
from conftest import tomopipe_cli
from tomopipe.infra import dask_service
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.infra.processes import free_port
from tomopipe.tasks.recon.engine import reconstruct
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.sources import open_scan
from tomopipe.tasks.storage import publish

N, ROWS, ANGLES = 64, 48, 120


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    d = make_phantom_scan(N, ROWS, ANGLES, n_flats=4, n_darks=4, seed=11)
    path = tmp_path_factory.mktemp("standing") / "phantom.h5"
    write_dxchange(path, d["projections"], d["flats"], d["darks"], d["angles_deg"])
    return path


@pytest.fixture(scope="module")
def reference(scan_file, tmp_path_factory):
    """The same parameters, one slab at a time in this process, without Dask."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    reconstruct(open_scan(scan_file), ReconParams(center=32.0), out, workers=0, levels=2,
                max_slab_rows=2)
    return _levels(out)


def _levels(path):
    group = zarr.open_group(str(path), mode="r")
    return [group[str(k)][:] for k in range(len(group))]


@pytest.fixture
def dask_service_process(tmp_path):
    """The service process of a home configured for two workers, and its addresses."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump(
        {"cluster": {"kind": "local", "workers": 2, "memory_limit": "1GiB", "gpus": 0}}))
    ports = free_port(), free_port()
    log = open(tmp_path / "dask.log", "wb")
    proc = subprocess.Popen(dask_service.argv(home, *ports),
                            env={**os.environ, "TOMOPIPE_HOME": str(home)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not dask_service.ready(home):
            assert proc.poll() is None, (tmp_path / "dask.log").read_text()
            assert time.monotonic() < deadline, "the dask service did not become ready"
            time.sleep(0.2)
        yield proc, home, dask_service.addresses(*ports)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


@pytest.mark.timeout(240)
def test_killed_worker_is_replaced_and_its_slab_rerun(dask_service_process, scan_file,
                                                      reference, tmp_path):
    from distributed import Client

    proc, home, addresses = dask_service_process
    # bound to loopback, dashboard answering, two workers under nannies
    assert addresses["dask_scheduler"].startswith("tcp://127.0.0.1:")
    assert httpx.get(addresses["dask_dashboard"], timeout=10).status_code == 200
    assert dask_service.workers_joined(addresses["dask_dashboard"]) == 2
    info = json.loads((home / dask_service.READY_FILE).read_text())
    assert info["workers"] == 2 and info["kind"] == "LocalCluster"

    with Client(addresses["dask_scheduler"], timeout="10s") as client:
        before = _worker_pids(client)
        assert len(before) == 2
        # the engine was imported by the workers before any work arrived (preload)
        loaded = client.run(lambda: "tomopipe.tasks.recon.engine" in sys.modules)
        assert all(loaded.values())

        out = tmp_path / "vol.zarr"
        markers = publish.partial_path(out) / publish.MARKER_DIR
        outcome: dict = {}

        def run():
            try:
                outcome["result"] = reconstruct(
                    open_scan(scan_file), ReconParams(center=32.0), out,
                    scheduler=addresses["dask_scheduler"], levels=2, max_slab_rows=2)
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 120
        victim = None
        while victim is None:
            assert time.monotonic() < deadline and runner.is_alive(), outcome
            if len(list(markers.glob("*.done"))) >= 2:
                busy = [w for w, keys in client.processing().items()
                        if any(str(k).startswith("tomopipe-slab-") for k in keys)]
                if busy:
                    victim = busy[0]
            time.sleep(0.01)
        os.kill(before[victim], signal.SIGKILL)  # mid-slab, as an out-of-memory kill would
        runner.join(180)
        assert not runner.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert result.timings["n_slabs_computed"] == ROWS // 2
        assert not psutil.pid_exists(before[victim]) or \
            psutil.Process(before[victim]).status() == psutil.STATUS_ZOMBIE

        # the nanny started a new worker in its place
        deadline = time.monotonic() + 60
        while True:  # (the scheduler's view: no call to a worker that may be dead)
            now = set(client.scheduler_info(n_workers=-1)["workers"])
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"no replacement worker: {now}"
            time.sleep(0.5)
        assert before[victim] not in _worker_pids(client).values()

    # value for value what one uninterrupted process makes
    for a, b in zip(_levels(out), reference, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(120)
def test_service_stops_on_sigterm_with_its_workers(dask_service_process):
    proc, home, addresses = dask_service_process
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the worker processes
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    assert not dask_service.ready(home)


def test_recon_uses_the_standing_cluster_of_the_home(services, services_home, scan_file,
                                                     tmp_path):
    status = json.loads(tomopipe_cli("status", "--json", home=services_home, check=True).stdout)
    assert status["dask_scheduler"].startswith("tcp://127.0.0.1:")
    assert status["dask_dashboard"].startswith("http://127.0.0.1:")
    assert status["health"]["dask"] is True
    assert httpx.get(status["dask_dashboard"], timeout=10).status_code == 200
    workers = {p.pid for p in psutil.Process(status["pids"]["dask"]).children(recursive=True)}

    out = tmp_path / "v.zarr"
    proc = tomopipe_cli("recon", str(scan_file), "--out", str(out), "--center", "32",
                        "--json", "--no-progress", home=services_home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"using the standing Dask cluster of {services_home.resolve()}" in proc.stderr
    assert status["dask_scheduler"] in proc.stderr
    result = json.loads(proc.stdout)
    # the slabs ran in the service's worker processes, not in a cluster of the command's own
    assert result["timings"]["slab_pids"] and set(result["timings"]["slab_pids"]) <= workers


def test_recon_without_services_runs_slab_threads_in_its_own_process(scan_file, tmp_path):
    home = tmp_path / "home"  # no services up for this home
    out = tmp_path / "v.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "tomopipe.cli", "recon", str(scan_file),
                             "--out", str(out), "--center", "32", "--json", "--no-progress"],
                            env={**os.environ, "TOMOPIPE_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "standing" not in stderr
    result = json.loads(stdout)
    assert result["timings"]["slab_pids"] == [proc.pid]  # no worker processes were started


@pytest.mark.parametrize("cluster, keys", [
    ({}, {"dask_scheduler": "tcp://127.0.0.1:8786",
          "dask_dashboard": "http://127.0.0.1:8787/status"}),
    ({"kind": "address", "address": "tcp://10.0.0.5:8786"},
     {"dask_scheduler": "tcp://10.0.0.5:8786"}),
    ({"kind": "slurm", "cores": 4, "memory": "8GB"},
     {"dask_scheduler": "tcp://127.0.0.1:8786", "dask_adaptive": "slurm",
      "dask_dashboard": "http://127.0.0.1:8787/status"}),
])
def test_what_up_stands_up_follows_the_cluster_kind(tmp_path, cluster, keys):
    """local: this service and its addresses; address: the configured scheduler, nothing
    started; slurm: this service, adaptive (no worker until runs come; tests/test_slurm.py)."""
    from tomopipe.config import load_settings

    if cluster:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"cluster": cluster}))
    settings = load_settings(tmp_path)
    assert dask_service.standing_kind(settings) == cluster.get("kind", "local")
    assert dask_service.state_keys(settings, 8786, 8787) == keys
