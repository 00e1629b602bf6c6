"""Start a flow run through the zygote: ``python -m tomopipe.infra.zygote_client [FLOW_RUN_ID]``.

The process worker runs this in place of ``python -m prefect.engine`` (prefect.yaml sets it as the
deployments' ``command``). It hands its environment, working directory, argv and stdin/stdout/
stderr to the zygote (infra/zygote.py), which forks an already-imported engine for it, then it
stands in for that child: SIGTERM/SIGINT sent to it (the worker cancels a run by signalling the
process it started) are passed on, and it ends with the child's exit status. When the zygote
cannot be reached it execs ``python -m prefect.engine`` itself, so runs still start, only slower.

It also keeps the worker's side of the books for crash recovery (deployments/crash_recovery.py):
while the run's process lives, ``$TOMOPIPE_HOME/flow-runs/<flow run id>.json`` names it (this
client and the engine it stands for, each with its start time). Once those processes are gone,
the worker's sweep removes the record, and marks the run Crashed when Prefect still has it
running: it died without a word (its worker was killed, say). And this client dies with its
worker (the kernel sends it SIGTERM when the worker dies, PR_SET_PDEATHSIG, which it passes on
to the engine, so it stops), so no flow run goes on writing after the process that watches it
has gone.

Only the standard library is imported here, so this starts in a few tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "TOMOPIPE_ZYGOTE_SOCKET"
# The module a flow-run process runs; another one only in tests (the zygote reads it too).
ENGINE_MODULE = os.environ.get("TOMOPIPE_ZYGOTE_MODULE", "prefect.engine")
HEADER = struct.Struct("!I")  # length of the JSON request that follows
REPLY = struct.Struct("!i")  # the child's pid, then its exit code (negative: killed by signal)
FORWARDED = (signal.SIGTERM, signal.SIGINT)
RECORDS = "flow-runs"  # under $TOMOPIPE_HOME: one launch record per flow run in progress
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only);
    False where it cannot. A parent that is already gone gets the signal sent at once."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), sig)
    return True


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc/PID/stat), or None when there is
    no such process: with the pid it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19]) if fields[0] != b"Z" else None  # field 22 of proc(5); zombies: gone


def record_path(flow_run_id: str) -> str | None:
    home = os.environ.get("TOMOPIPE_HOME")
    return os.path.join(home, RECORDS, f"{flow_run_id}.json") if home and flow_run_id else None


def write_record(child: int) -> str | None:
    """Name this client and the engine ``child`` as the processes of this flow run."""
    path = record_path(os.environ.get("PREFECT__FLOW_RUN_ID", ""))
    if path is None:
        return None
    me = os.getpid()
    body = {"flow_run_id": os.environ["PREFECT__FLOW_RUN_ID"],
            "processes": [[me, start_ticks(me)], [child, start_ticks(child)]]}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{me}.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
        os.replace(tmp, path)
    except OSError as exc:  # no record: the run still goes, only without crash detection
        print(f"zygote_client: cannot write {path}: {exc}", file=sys.stderr, flush=True)
        return None
    return path




def request(argv: list[str]) -> bytes:
    body = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
                       "prefix": sys.prefix}).encode()
    return HEADER.pack(len(body)) + body


def recv_int(sock: socket.socket) -> int | None:
    """One REPLY integer, or None when the zygote closed the connection first."""
    data = b""
    while len(data) < REPLY.size:
        chunk = sock.recv(REPLY.size - len(data))
        if not chunk:
            return None
        data += chunk
    return REPLY.unpack(data)[0]


def fallback(argv: list[str], why: str) -> None:
    print(f"zygote_client: {why}; starting python -m {ENGINE_MODULE} directly", file=sys.stderr,
          flush=True)
    # exec keeps the pid, so the engine is this process; its record outlives it, and crash
    # recovery tells a run that ended from one that died by the flow run's state
    write_record(os.getpid())
    os.execv(sys.executable, [sys.executable, "-m", ENGINE_MODULE, *argv])


def exit_like(code: int) -> None:
    """Exit with the child's status; for a signal death, die of the same signal."""
    if code < 0:
        try:
            signal.signal(-code, signal.SIG_DFL)  # not a handler of ours or Python's
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP have no handler
        os.kill(os.getpid(), -code)
    sys.exit(code if code >= 0 else 128 - code)


def main(argv: list[str]) -> None:
    die_with_parent(signal.SIGTERM)  # forwarded to the engine below, like a cancellation
    path = os.environ.get(SOCKET_ENV)
    if not path:
        fallback(argv, f"{SOCKET_ENV} is not set")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        socket.send_fds(sock, [request(argv)], [0, 1, 2])
        pid = recv_int(sock)
    except OSError as exc:
        fallback(argv, f"zygote at {path} unreachable ({exc})")
    if pid is None or pid <= 0:
        sock.close()
        fallback(argv, f"zygote at {path} refused the request")

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    write_record(pid)  # left for crash recovery's sweep, which tells by the run's state
    # The zygote writes the exit code once it has reaped the child. Should the zygote die first,
    # the connection closes only when the child (which holds a copy of it) exits as well.
    code = recv_int(sock)
    if code is None:
        print(f"zygote_client: lost the zygote while child {pid} ran", file=sys.stderr)
        sys.exit(1)
    exit_like(code)


if __name__ == "__main__":
    main(sys.argv[1:])
