"""Long-running service processes: start them detached, check on them, stop them.

Each service runs in its own session (``start_new_session=True``), so its process group id is
its pid and stopping it also stops whatever it spawned (the Prefect server starts uvicorn, the
worker starts flow runs). What left the group (a flow run in a session of its own, the children
of a fork server) is found by the home in its environment (``processes_of_home``). A pid is kept
together with the process's start time, so a pid that the system has since handed to an
unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tomopipe.errors import ServiceError

LOOPBACK = "127.0.0.1"
# In the environment of every service process of a home (and so of everything they start): the
# home. `tomopipe down` stops whatever still carries it once the services' groups are stopped.
SERVICE_ENV = "TOMOPIPE_SERVICE_HOME"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def spawn(argv: list[str], *, env: dict[str, str], log_path: Path,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def start_time(pid: int) -> float | None:
    """The process's creation time, or None when there is no such (living) process."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def alive(pid: int | None, started: float | None = None) -> bool:
    """True when ``pid`` runs and, if ``started`` is given, is still the process we started."""
    if not pid:
        return False
    created = start_time(pid)
    if created is None:
        return False
    # psutil's create_time is the boot time (/proc/stat btime, whole seconds, recomputed from the
    # clock, so it steps when the clock is adjusted) plus the start ticks: the same process can
    # read a whole second apart (seen after 16 h of uptime, when every `tomopipe up` then waited
    # for a healthy service forever).
    return started is None or abs(created - started) < 2.5


def _reap(pid: int) -> None:
    # Our own children (when up ran in this process) stay zombies until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_group(pid: int, started: float | None = None, *, timeout: float = 10.0) -> bool:
    """SIGTERM the process group led by ``pid``, then SIGKILL it after ``timeout`` seconds.

    Returns True when something was stopped, False when it was not running.
    """
    return bool(stop_groups([(pid, started)], timeout=timeout))


def stop_groups(leaders: list[tuple[int, float | None]], *, timeout: float = 10.0) -> list[int]:
    """Stop several process groups at once (SIGTERM all, wait, SIGKILL what is left).

    ``leaders`` holds (pid, start time or None); returns the pids that were running.
    """
    running = [(pid, t) for pid, t in leaders if alive(pid, t)]
    for pid, _ in leaders:
        _reap(pid)
    members = [m for pid, _ in running for m in _group_members(pid)]
    for pid, _ in running:
        _signal_group(pid, signal.SIGTERM)

    def left() -> bool:
        for pid, _ in running:
            _reap(pid)
        return any(alive(p.pid, t) for p, t in members) or any(alive(p, t) for p, t in running)

    deadline = time.monotonic() + timeout
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    if left():
        for pid, _ in running:
            _signal_group(pid, signal.SIGKILL)
        for proc, created in members:  # children that left the group still get killed
            if alive(proc.pid, created):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        end = time.monotonic() + 5
        while left() and time.monotonic() < end:
            time.sleep(0.05)
    return [pid for pid, _ in running]


def processes_of_home(home: Path | str) -> list[psutil.Process]:
    """Every process started for the services of ``home`` and whatever they started in turn:
    they carry SERVICE_ENV=home in their environment (set by ``tomopipe up``), wherever they
    have moved since (a flow run's own session, a fork server's child whose parent died). This
    process and its ancestors are left out."""
    mine = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        mine.update(p.pid for p in psutil.Process().parents())
    found = []
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            if proc.environ().get(SERVICE_ENV) == str(home):
                found.append(proc)
        except psutil.Error:  # gone, a zombie, or another user's
            continue
    return found


def stop_processes(procs: list[psutil.Process], *, timeout: float = 10.0) -> list[int]:
    """SIGTERM each, SIGKILL what is left after ``timeout`` s; returns the pids signalled."""
    signalled = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            signalled.append(proc.pid)
    _, alive_ = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive_:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive_, timeout=5)
    for pid in signalled:
        _reap(pid)
    return signalled


def _group_members(pid: int) -> list[tuple[psutil.Process, float]]:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out.append((proc, proc.create_time()))
    return out


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def http_ok(url: str, *, timeout: float = 2.0, headers: dict | None = None) -> bool:
    """True when a GET on ``url`` answers 2xx."""
    try:
        return httpx.get(url, timeout=timeout, headers=headers).is_success
    except httpx.HTTPError:
        return False


def tcp_listening(address: str) -> bool:
    """True when something accepts connections at ``tcp://host:port``."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return port_in_use(int(port), host or LOOPBACK)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def wait_healthy(name: str, check: Callable[[], bool], *, proc: subprocess.Popen | None,
                 log_path: Path | None, timeout: float, interval: float = 0.25) -> float:
    """Poll ``check`` until it passes; returns the seconds it took.

    Raises ServiceError naming the service and its log when the process exits or time runs out.
    """
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        where = f"; see its log {log_path}:\n{log_tail(log_path)}" if log_path else ""
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{name} exited with status {proc.returncode} before it became "
                               f"healthy{where}")
        if time.monotonic() - t0 > timeout:
            raise ServiceError(f"{name} did not become healthy within {timeout:.0f} s{where}")
        time.sleep(interval)
