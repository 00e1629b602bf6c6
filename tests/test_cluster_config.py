"""The `cluster:` section of config.yaml: parsing, SLURM job scripts, connecting to a scheduler.

SLURM cannot run here. The job-script tests only generate scripts (dask-jobqueue needs no SLURM
for that). The adaptive test puts a stand-in `sbatch`/`scancel` on PATH that runs the generated
job script as a local process group, so the real worker command of the script connects to the
real scheduler; that stand-in is the only thing mocked.
"""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import yaml
from tomopipe.infra.cluster import (
    ClusterConfig,
    dask_client,
    parse_cluster_config,
    slurm_job_script,
    worker_resources,
)

from tomopipe.config import load_settings
from tomopipe.errors import ConfigError

pytest.importorskip("dask_jobqueue")

SLURM = {"kind": "slurm", "cores": 8, "memory": "64GB", "walltime": "02:00:00",
         "queue": "tomo-gpu", "account": "mx1234", "min_jobs": 0, "max_jobs": 4}


@pytest.mark.parametrize("raw, key, fault", [
    ("slurm", "cluster", "expected a mapping"),
    ({"kind": "kubernetes"}, "cluster.kind", "must be one of"),
    ({"kind": "local", "cores": 4}, "cluster", "unknown key(s) ['cores']"),
    ({"kind": "local", "workers": 0}, "cluster.workers", "at least 1"),
    ({"kind": "local", "memory_limit": "lots"}, "cluster.memory_limit", "size"),
    ({"kind": "address"}, "cluster.address", "required"),
    ({"kind": "address", "address": "tcp://host"}, "cluster.address", "host:port"),
    ({"kind": "slurm", "memory": "8GB"}, "cluster.cores", "required"),
    ({"kind": "slurm", "cores": 8}, "cluster.memory", "required"),
    ({**SLURM, "cores": "eight"}, "cluster.cores", "whole number"),
    ({**SLURM, "memory": "-3GB"}, "cluster.memory", "must be positive"),
    ({**SLURM, "walltime": "two hours"}, "cluster.walltime", "SLURM time"),
    ({**SLURM, "min_jobs": 5, "max_jobs": 2}, "cluster.max_jobs", "below cluster.min_jobs"),
    ({**SLURM, "processes": 16}, "cluster.processes", "cannot share"),
    ({**SLURM, "gpus_per_job": 2, "processes": 4}, "cluster.processes", "one worker per GPU"),
    ({**SLURM, "job_extra_directives": "--gres=gpu:1"}, "cluster.job_extra_directives",
     "list of strings"),
    ({**SLURM, "job_extra_directives": ["#SBATCH --exclusive"]},
     "cluster.job_extra_directives", "not an sbatch option"),
    ({**SLURM, "queue": 7}, "cluster.queue", "string"),
    ({**SLURM, "death_timeout_s": -1}, "cluster.death_timeout_s", "positive"),
])
def test_bad_cluster_config_names_the_key(raw, key, fault):
    with pytest.raises(ConfigError) as err:
        parse_cluster_config(raw)
    assert str(err.value).startswith(key + ":"), str(err.value)
    assert fault in str(err.value)


def test_good_configs_parse():
    assert parse_cluster_config(None) == ClusterConfig(kind="local")
    local = parse_cluster_config({"workers": 3, "memory_limit": "2GiB", "gpus": 0})
    assert (local.kind, local.workers, local.memory_limit, local.gpus) == ("local", 3, 2 * 2**30, 0)
    assert parse_cluster_config({"kind": "local", "gpus": "auto"}).gpus is None
    slurm = parse_cluster_config({**SLURM, "gpus_per_job": 2, "walltime": "1-12:00:00"})
    assert (slurm.cores, slurm.memory, slurm.workers_per_job) == (8, 64 * 10**9, 2)
    assert slurm.walltime == "1-12:00:00"


def test_load_settings_rejects_bad_cluster_naming_file_and_key(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"cluster": {**SLURM, "walltime": "soon"}}))
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path)
    assert str(tmp_path / "config.yaml") in str(err.value)
    assert "cluster.walltime" in str(err.value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"cluster": ["slurm"]}))
    with pytest.raises(ConfigError, match="cluster must be a mapping"):
        load_settings(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"cluster": SLURM}))
    assert load_settings(tmp_path).cluster == SLURM


def _sbatch_lines(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.startswith("#SBATCH")]


def test_gpu_job_script_carries_configured_directives():
    cfg = parse_cluster_config({**SLURM, "gpus_per_job": 2,
                                "job_extra_directives": ["--constraint=h100"],
                                "job_script_prologue": ["module load cuda/12.4"]})
    script = slurm_job_script(cfg)
    directives = _sbatch_lines(script)
    for expected in ("#SBATCH -p tomo-gpu", "#SBATCH -A mx1234", "#SBATCH --cpus-per-task=8",
                     "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:2",
                     "#SBATCH --constraint=h100"):
        assert expected in directives, (expected, directives)
    mem = [d for d in directives if d.startswith("#SBATCH --mem=")]
    # 64 GB asked for; SLURM gets it in whole GiB (dask-jobqueue rounds)
    assert mem == [f"#SBATCH --mem={round(64e9 / 2**30)}G"]
    assert "module load cuda/12.4" in script
    worker = next(line for line in script.splitlines() if "-m dask" in line)
    assert " -m dask cuda worker " in worker  # dask-cuda: one worker per GPU of the job
    assert "--nthreads 4" in worker  # 8 cores shared by the 2 GPU workers
    assert "--nworkers" not in worker


def test_cpu_job_script_uses_plain_workers_and_no_gpu():
    cfg = parse_cluster_config({**SLURM, "cores": 16, "processes": 4, "queue": None,
                                "walltime": "45"})
    script = slurm_job_script(cfg)
    directives = _sbatch_lines(script)
    assert "#SBATCH --cpus-per-task=16" in directives
    assert "#SBATCH -t 45" in directives
    assert not any(d.startswith(("#SBATCH -p", "#SBATCH --gres")) for d in directives)
    assert "distributed.cli.dask_worker" in script
    assert "--nworkers 4" in script and "--nthreads 4" in script


def test_facility_jobqueue_config_is_honoured_under_config_yaml():
    """SLURM settings go through dask-jobqueue's own configuration: what a facility put in its
    dask config (``jobqueue.slurm``) applies, and config.yaml's ``cluster:`` keys win over it."""
    import dask

    facility = {"jobqueue.slurm.shebang": "#!/bin/bash -l",
                "jobqueue.slurm.job-directives-skip": ["-n 1"],
                "jobqueue.slurm.queue": "debug"}
    with dask.config.set(facility):
        script = slurm_job_script(parse_cluster_config(SLURM))
    assert script.splitlines()[0] == "#!/bin/bash -l"
    directives = _sbatch_lines(script)
    assert "#SBATCH -n 1" not in directives
    assert "#SBATCH -p tomo-gpu" in directives and "#SBATCH -p debug" not in directives
    # and nothing of it leaks into the next cluster once the facility's config is gone
    assert slurm_job_script(parse_cluster_config(SLURM)).splitlines()[0] != "#!/bin/bash -l"


def test_gpu_directive_is_not_doubled_when_given_explicitly():
    cfg = parse_cluster_config({**SLURM, "gpus_per_job": 1,
                                "job_extra_directives": ["--gpus-per-node=1"]})
    directives = _sbatch_lines(slurm_job_script(cfg))
    assert "#SBATCH --gpus-per-node=1" in directives
    assert not any("--gres" in d for d in directives)


def test_kind_address_connects_to_a_running_scheduler(tmp_path, monkeypatch):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, protocol="tcp://",
                      dashboard_address=":0", memory_limit="1GiB") as running:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(
            {"cluster": {"kind": "address", "address": running.scheduler_address}}))
        monkeypatch.setenv("TOMOPIPE_HOME", str(tmp_path))
        with dask_client() as client:  # no arguments: the home's config decides
            assert client.scheduler.address == running.scheduler_address
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
            assert worker_resources(client) == (1, 2**30)


FAKE_SBATCH = """#!/bin/sh
# Stand-in for SLURM's sbatch: run the job script here, in its own process group.
d="$FAKE_SLURM_DIR"
cp "$1" "$d/job-$$.sh"
setsid sh "$d/job-$$.sh" > "$d/job-$$.log" 2>&1 < /dev/null &
echo $! >> "$d/pids"
echo $!
"""
FAKE_SCANCEL = """#!/bin/sh
kill -TERM -- "-$1" 2>/dev/null
echo "$1" >> "$FAKE_SLURM_DIR/cancelled"
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_adaptive_slurm_cluster_starts_a_job_for_work_and_cancels_it(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    cfg = parse_cluster_config({"kind": "slurm", "cores": 1, "memory": "1GiB", "min_jobs": 0,
                                "max_jobs": 1, "walltime": "00:10:00",
                                "death_timeout_s": 30, "interface": "lo"})
    pids_file = tmp_path / "pids"
    try:
        with dask_client(cluster=cfg) as client:
            # no job yet: the planner is told what a job will bring
            assert worker_resources(client) == (1, 2**30)
            assert not pids_file.exists()
            assert client.submit(sum, [4, 5]).result(timeout=90) == 9  # adapt submitted a job
            assert len(pids_file.read_text().split()) == 1
            n, limit = worker_resources(client)
            assert (n, limit) == (1, 2**30)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert (tmp_path / "cancelled").read_text().split() == [str(p) for p in pids]
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids)
    finally:
        for p in (pids_file.read_text().split() if pids_file.exists() else []):
            if _alive(int(p)):
                os.killpg(int(p), signal.SIGKILL)


def test_kind_local_settings_size_the_local_cluster(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"cluster": {"kind": "local", "workers": 1, "memory_limit": "700MB", "gpus": 0}}))
    monkeypatch.setenv("TOMOPIPE_HOME", str(tmp_path))
    with dask_client() as client:
        assert worker_resources(client) == (1, 700 * 10**6)


def test_slurm_without_sbatch_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch in an empty folder
    cfg = parse_cluster_config({"kind": "slurm", "cores": 1, "memory": "1GB"})
    with pytest.raises(ConfigError, match="sbatch is not on this machine's PATH"):
        with dask_client(cluster=cfg):
            pass
