"""Start a flow run through the zygote: ``python -m tomopipe.infra.zygote_client [FLOW_RUN_ID]``.

The process worker runs this in place of ``python -m prefect.engine`` (prefect.yaml sets it as the
deployments' ``command``). It hands its environment, working directory, argv and stdin/stdout/
stderr to the zygote (infra/zygote.py), which forks an already-imported engine for it, then it
stands in for that child: SIGTERM/SIGINT sent to it (the worker cancels a run by signalling the
process it started) are passed on, and it ends with the child's exit status. When the zygote
cannot be reached it execs ``python -m prefect.engine`` itself, so runs still start, only slower.

Only the standard library is imported here, so this starts in a few tens of milliseconds.
"""

from __future__ import annotations

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
    # The zygote writes the exit code once it has reaped the child. Should the zygote die first,
    # the connection closes only when the child (which holds a copy of it) exits as well.
    code = recv_int(sock)
    if code is None:
        print(f"zygote_client: lost the zygote while child {pid} ran", file=sys.stderr)
        sys.exit(1)
    exit_like(code)


if __name__ == "__main__":
    main(sys.argv[1:])
