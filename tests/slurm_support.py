"""A real single-node SLURM for the tests: munged, slurmctld and slurmd on localhost.

Nothing is installed here (``make slurm`` installs Debian's ``slurm-wlm`` and ``munge`` where it
is root). :func:`start_slurm` writes a munge key and ``slurm.conf`` into a
temporary folder, starts the three daemons as root with their state, logs and sockets there, and
waits until the node is idle. Plugins are the ones that work in a container without systemd:
``proctrack/linuxproc``, ``task/none`` (no cgroup is created), ``select/cons_tres`` on one node.
:func:`slurm_unavailable` says why SLURM cannot start here (not root, binaries missing), or None.

The client commands (``sbatch``, ``squeue``, ``scancel``) find the cluster through ``SLURM_CONF``;
:meth:`Slurm.env` gives it, and :meth:`Slurm.activate` sets it in this process (dask-jobqueue
calls the commands with the process environment).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def slurm_unavailable() -> str | None:
    """Why a real SLURM cannot start on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "SLURM tests need root (munged, slurmctld and slurmd run as root here)"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM binaries missing ({', '.join(missing)}): run `make slurm` as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slurm:
    root: Path
    conf: Path
    partition: str = "tomo"
    procs: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def activate(self) -> None:
        os.environ["SLURM_CONF"] = str(self.conf)

    def run(self, *args: str) -> str:
        done = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of every job SLURM still holds."""
        out = self.run("squeue", "--noheader", "--format=%i|%j|%T")
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


def _write_config(root: Path, cpus: int, memory_mb: int, partition: str) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log", "run", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, slurmd_port = _free_port(), _free_port()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=tomopipe-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=2
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    # slurmd 22.05 always loads a cgroup plugin; no cgroup.conf means autodetect, and with
    # proctrack/linuxproc and task/none it is never asked to create a cgroup.
    return conf


def _wait(check, timeout: float, what: str, slurm: Slurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for proc in slurm.procs:
            if proc.poll() is not None:
                break
        time.sleep(0.2)
    raise RuntimeError(
        f"SLURM did not start ({what}); slurmctld log:\n{slurm.log('slurmctld')[-2000:]}"
        f"\nslurmd log:\n{slurm.log('slurmd')[-2000:]}"
    )


def start_slurm(root: Path, cpus: int | None = None, memory_mb: int = 4000,
                timeout: float = 60.0) -> Slurm:
    """Configure and start munged, slurmctld and slurmd under ``root``; wait for an idle node."""
    reason = slurm_unavailable()
    if reason:
        raise RuntimeError(reason)
    root = Path(root)
    cpus = cpus or os.cpu_count() or 1
    slurm = Slurm(root=root, conf=_write_config(root, cpus, memory_mb, "tomo"))
    munge = root / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge.chmod(0o700)
    env = slurm.env()
    try:
        slurm.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}",
             f"--socket={munge}/munge.socket", f"--pid-file={munge}/munged.pid",
             f"--log-file={root}/log/munged.log", f"--seed-file={munge}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env))
        _wait(lambda: (munge / "munge.socket").exists(), timeout, "munged socket", slurm)
        for daemon in ("slurmctld", "slurmd"):
            slurm.procs.append(subprocess.Popen(
                [daemon, "-D", "-f", str(slurm.conf)],
                stdout=open(root / "log" / f"{daemon}.out", "wb"),
                stderr=subprocess.STDOUT, env=env, start_new_session=True))

        def idle() -> bool:
            done = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env,
                                  capture_output=True, text=True)
            return done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc")

        _wait(idle, timeout, "node idle", slurm)
    except BaseException:
        slurm.stop()
        raise
    return slurm


def slurm_fixture(tmp_path_factory):
    """Body of a session fixture: a started SLURM, stopped after; skip only where it cannot run."""
    import pytest

    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    slurm = start_slurm(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    slurm.activate()
    try:
        yield slurm
    finally:
        for job_id, _, _ in slurm.jobs():
            subprocess.run(["scancel", job_id], env=slurm.env(), check=False)
        slurm.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
