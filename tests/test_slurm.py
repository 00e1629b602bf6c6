"""The standing adaptive cluster on a real single-node SLURM (tests/slurm_support.py).

SLURM (munged, slurmctld, slurmd) is started once for the session in a temporary folder and
stopped after; the tests skip, saying why, only where it cannot start (not root, no binaries:
``make slurm`` installs them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_support import slurm_fixture
from tomopipe.infra import dask_service
from tomopipe.infra.cluster import adapt_options, parse_cluster_config
from tomopipe.infra.processes import free_port

from tomopipe.config import load_settings
from tomopipe.errors import ConfigError

JOB_NAME = "tomopipe-test-dask"
IDLE_S = 15


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    yield from slurm_fixture(tmp_path_factory)


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_slurm_runs_a_batch_job(slurm, tmp_path):
    out = tmp_path / "hello.txt"
    job = slurm.run("sbatch", "--parsable", "-J", "hello", "-o", str(tmp_path / "%j.log"),
                    "--wrap", f"echo hello from $SLURM_JOB_ID > {out}").strip()
    _wait(lambda: out.exists() and out.read_text().strip(), 60, "the job's output")
    assert out.read_text().strip() == f"hello from {job}"


def test_idle_timeout_is_validated_and_sets_scale_down():
    base = {"kind": "slurm", "cores": 1, "memory": "1GB", "max_jobs": 3}
    cfg = parse_cluster_config({**base, "idle_timeout_s": 30})
    opts = adapt_options(cfg)
    assert (opts["minimum_jobs"], opts["maximum_jobs"]) == (0, 3)
    assert opts["wait_count"] == 30 and opts["interval"] == "1.0s"
    assert parse_cluster_config(base).idle_timeout_s == 60.0
    for bad in (0, -1, "soon", True):
        with pytest.raises(ConfigError, match=r"cluster\.idle_timeout_s: expected a positive"):
            parse_cluster_config({**base, "idle_timeout_s": bad})


def _home(tmp_path: Path, **more) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({"cluster": {**more,
        "kind": "slurm", "cores": 1, "memory": "1GB", "processes": 1, "min_jobs": 0,
        "max_jobs": 2, "idle_timeout_s": IDLE_S, "walltime": "00:30:00",
        "job_name": JOB_NAME, "log_directory": str(tmp_path / "job-logs"),
        "local_directory": str(tmp_path / "worker-space"), "death_timeout_s": 60}}))
    return home


def _scan(path: Path) -> Path:
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange

    s = make_phantom_scan(64, 8, 90, center=32.0, n_flats=4, n_darks=4)
    return write_dxchange(path, s["projections"], s["flats"], s["darks"], s["angles_deg"])


def test_standing_slurm_cluster_scales_with_runs_and_gives_jobs_back(slurm, tmp_path):
    """What ``tomopipe up`` starts for kind slurm: the scheduler with no job while idle, worker
    jobs in squeue while a reconstruction runs, the warm jobs reused, none after the idle time."""
    home = _home(tmp_path)
    ours = lambda: [j for j in slurm.jobs() if j[1] == JOB_NAME]  # noqa: E731
    try:
        with _standing_service(home, tmp_path / "dask-service.log") as state:
            assert dask_service.healthy(state)
            from distributed import Client
            from tomopipe.infra.cluster import worker_resources

            with Client(state["dask_scheduler"], set_as_default=False) as client:
                # no worker yet: the planner sizes slabs from what the jobs will bring
                assert worker_resources(client) == (2, 10**9)
            time.sleep(2)
            assert ours() == [], "jobs were submitted while nothing was asked of the cluster"

            scan = _scan(tmp_path / "scan.h5")
            seen: set[str] = set()

            def recon(out: str) -> subprocess.CompletedProcess:
                run = subprocess.Popen(
                    [str(Path(sys.executable).with_name("tomopipe")), "recon", str(scan), "--out",
                     str(tmp_path / out), "--center", "32", "--scheduler",
                     state["dask_scheduler"], "--json"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                while run.poll() is None:
                    seen.update(j[0] for j in ours())
                    time.sleep(0.5)
                out_, err = run.communicate()
                assert run.returncode == 0, err[-2000:]
                return out_

            recon("a.zarr")
            first = set(seen)
            assert first, "no SLURM job was submitted for the run"
            assert len(first) <= 2  # max_jobs
            seen.clear()
            recon("b.zarr")  # a second run of the burst, right after: the warm jobs serve it
            assert seen & first, f"the second run of a burst got only new jobs {seen}"
            assert len(first | seen) <= 2  # max_jobs over the burst
            assert (tmp_path / "a.zarr").is_dir() and (tmp_path / "b.zarr").is_dir()
            _wait(lambda: not ours(), IDLE_S + 90, "the idle jobs to be given back")
    finally:
        for job_id, _, _ in ours():  # the test failed with jobs still queued
            subprocess.run(["scancel", job_id], env=slurm.env(), check=False)


@contextlib.contextmanager
def _standing_service(home: Path, log_path: Path):
    """The ``dask`` service ``tomopipe up`` starts for kind slurm; yields its state keys."""
    sched, dash = free_port(), free_port()
    log = open(log_path, "wb")
    env = {**os.environ, "TOMOPIPE_HOME": str(home)}
    proc = subprocess.Popen(dask_service.argv(home, sched, dash), stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: dask_service.ready(home) or proc.poll() is not None, 120, "the service")
        assert proc.poll() is None, log_path.read_text()
        yield dask_service.state_keys(load_settings(home), sched, dash)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_runs_ask_the_standing_slurm_cluster_for_workers(slurm, tmp_path):
    """A reconstruction asks the standing SLURM cluster for the workers its scan needs before
    any slab goes out, and the volume's provenance says what it asked for and got; a request
    above max_jobs is refused in one line before any job is submitted."""
    from distributed import Client
    from tomopipe.infra import scaling
    from tomopipe.tasks.recon.engine import reconstruct
    from tomopipe.tasks.recon.params import ReconParams
    from tomopipe.tasks.recon.resources import ResourceRefused, request_workers
    from tomopipe.tasks.sources import open_scan
    from tomopipe.tasks.storage.omezarr import read_provenance

    home = _home(tmp_path, worker_throughput=2e5)
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange

    s = make_phantom_scan(64, 32, 90, center=32.0, n_flats=4, n_darks=4)
    spec = open_scan(write_dxchange(tmp_path / "scan.h5", s["projections"], s["flats"],
                                         s["darks"], s["angles_deg"]))
    params = ReconParams(center=32.0)
    ours = lambda: [j for j in slurm.jobs() if j[1] == JOB_NAME]  # noqa: E731
    with _standing_service(home, tmp_path / "dask-service.log") as state:
        # 32 rows x 90 angles x 64 columns at 2e5 elements/s: 0.92 s on one worker; at 1000
        # frames a second the scan takes 0.09 s, so all 4 slabs need a worker each: 4 jobs
        with pytest.raises(ResourceRefused) as refused:
            reconstruct(spec, params, tmp_path / "refused.zarr", scheduler=state["dask_scheduler"],
                        frames_per_s=1000.0, max_slab_rows=8)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{spec.label}: resources: needs 4 jobs"), message
        assert message.endswith("max_jobs is 2"), message
        time.sleep(3)  # adaptive scaling looks every second: long enough to have submitted
        assert ours() == [], "a job was submitted for a request that was refused"
        assert not (tmp_path / "refused.zarr").exists()
        assert not list(tmp_path.glob("refused.zarr*")), "the refused run left a partial volume"

        # asking brings the jobs while no slab waits (adaptive scaling alone would submit none)
        with Client(state["dask_scheduler"], set_as_default=False) as client:
            assert scaling.bounds(client) == {
                "max_jobs": 2, "min_jobs": 0, "workers_per_job": 1, "throughput": 2e5,
                "backfill_deadline_s": 600.0}
            with scaling.held(client, 2) as record:
                _wait(lambda: len(ours()) == 2, 60, "the two jobs asked for")
                held_ids = {j[0] for j in ours()}
                client.wait_for_workers(1, timeout=120)
            got = record["got"]
            assert 1 <= got["workers"] <= 2 and got["jobs"] == len(got["job_ids"]) >= 1
            assert set(got["job_ids"]) <= held_ids, (got, held_ids)

        # a live run at 180 frames a second: 0.5 s to keep up, 2 workers, 2 jobs
        out = tmp_path / "live.zarr"
        seen: set[str] = set()
        with Client(state["dask_scheduler"], set_as_default=False) as client:
            import threading

            done = threading.Event()

            def watch():
                while not done.is_set():
                    seen.update(j[0] for j in ours())
                    time.sleep(0.3)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                reconstruct(spec, params, out, client=client, frames_per_s=180.0,
                            max_slab_rows=8)
            finally:
                done.set()
                watcher.join()
        prov = read_provenance(out)
        res = prov["resources"]
        expected = request_workers(32, 90, 64, throughput=2e5, frames_per_s=180.0,
                                   workers_per_job=1, max_jobs=2, n_slabs=4)
        assert (expected.workers, expected.jobs) == (2, 2)
        assert res["cluster"] == "adaptive" and res["basis"] == "live"
        assert res["frames_per_s"] == 180.0 and res["deadline_s"] == 0.5
        assert res["throughput"] == 2e5 and res["max_jobs"] == 2
        assert res["asked"] == {"workers": 2, "jobs": 2}
        got = res["got"]
        assert 1 <= got["workers"] <= 2, got
        assert got["jobs"] == len(got["job_ids"]) >= 1, got
        assert set(got["job_ids"]) <= seen, (got, seen)
        _wait(lambda: not ours(), IDLE_S + 90, "the idle jobs to be given back")
    for job_id, _, _ in ours():
        subprocess.run(["scancel", job_id], env=slurm.env(), check=False)
