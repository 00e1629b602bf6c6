"""A fork server for flow runs: ``python -m tomopipe.infra.zygote SOCKET_PATH``.

A flow-run process must import Prefect, NumPy, Dask, h5py, zarr and our flows before its run can
turn RUNNING: seconds, or 10-15 s on a loaded machine. This server imports them once, then for
each request from infra/zygote_client.py forks a child that takes on the client's environment,
working directory, argv and stdin/stdout/stderr and runs what ``python -m prefect.engine`` runs.
The server sends the client the child's pid, reaps the child, and sends its exit code.

Fork safety: the server starts no threads, event loops or API clients (it checks that it has no
Python thread before it serves), so a child gets a consistent copy of a single-threaded process.
The native thread pools that NumPy's and SciPy's OpenBLAS start at import are fork-aware (they
stop and restart around fork with pthread_atfork). State
that a fresh process derives from its environment at import time (Prefect's settings and logging
configuration, Dask's config, NumPy's global random seed) is rebuilt in the child from the
client's environment. A request whose Python (sys.prefix) or PYTHONPATH differs from the
server's is refused, and the client then starts the engine itself.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
import warnings

from tomopipe.infra.zygote_client import ENGINE_MODULE, HEADER, REPLY, die_with_parent

# What `python -m prefect.engine` imports before a run of ours turns RUNNING, then what our tasks
# import lazily (measured by listing a child's new sys.modules at its exit). The catalog's
# client (tiled.client, and bluesky_tiled_plugins, loaded when it connects: 2-4 s here) brings
# pyarrow, whose jemalloc would start a background thread at import: main() turns that thread
# off (JEMALLOC_CONF_ENV) and serve() refuses to fork should one run anyway.
PRELOAD = (
    "prefect", "prefect.engine", "prefect.flow_engine", "prefect.client.orchestration",
    "prefect.deployments.steps", "prefect.results", "prefect.task_engine",
    "prefect.utilities.visualization",
    "numpy", "h5py", "zarr", "dask.distributed",
    "tomopipe.flows.live", "tomopipe.flows.single_run", "tomopipe.flows.backfill",
    "tomopipe.flows.retention", "tomopipe.tasks.recon.engine", "tomopipe.tasks.recon.backends",
    "tomopipe.tasks.recon.slab", "tomopipe.tasks.preprocess.center",
    "tomopipe.tasks.preprocess.normalize", "tomopipe.tasks.preprocess.stripes",
    "tomopipe.tasks.preprocess.zingers", "tomopipe.tasks.preview",
    "tomopipe.tasks.sources.bluesky_run", "tomopipe.tasks.staging.scan",
    "tomopipe.tasks.transfer.movers", "tomopipe.infra.cluster",
    "tiled.client", "bluesky_tiled_plugins", "tomopipe.tasks.catalog",
    "tomopipe.flows.stream", "tomopipe.tasks.stream_tasks", "tomopipe.tasks.recon.streaming",
    "tomopipe.tasks.recon.incremental",
)
# pyarrow's bundled jemalloc reads its options from here (later options win)
JEMALLOC_CONF_ENV = "JE_ARROW_MALLOC_CONF"
NO_BACKGROUND_THREAD = "background_thread:false"
MAX_REQUEST = 16 << 20
ORPHAN_GRACE_S = 10.0  # SIGTERM, then SIGKILL, for a child whose client vanished


def log(msg: str) -> None:
    print(f"zygote[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def preload(names: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import the heavy modules; returns those that failed (a flow file being edited, say)."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the child imports it again and reports the error
            failed.append(name)
            log(f"cannot preload {name}: {type(exc).__name__}: {exc}")
    return failed


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    try:
        if len(msg) < HEADER.size:
            raise ValueError("short request")
        (size,) = HEADER.unpack(msg[:HEADER.size])
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        body = msg[HEADER.size:]
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def refusal(req: dict, fds: list[int]) -> str | None:
    """Why the forked engine would differ from `python -m prefect.engine`, if it would."""
    if len(fds) != 3:
        return f"expected 3 file descriptors, got {len(fds)}"
    if req.get("prefix") != sys.prefix:
        return f"client Python {req.get('prefix')} is not {sys.prefix}"
    if req["env"].get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
        return "client PYTHONPATH differs"
    return None


def exit_code(exc: SystemExit) -> int:
    """The status the interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def logging_env(env: dict) -> dict:
    """What Prefect's logging configuration is derived from (besides the profile's file)."""
    return {k: v for k, v in env.items() if k.startswith("PREFECT_LOGGING_")
            or k in ("PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")}


def refresh_from_environment(server_env: dict) -> None:
    """Rebuild, from the child's new os.environ, what modules read from it at import."""
    if "prefect.context" in sys.modules:
        # Always: settings also come from .env / prefect.toml in the working directory.
        sys.modules["prefect.context"].refresh_global_settings_context()
        if logging_env(server_env) != logging_env(os.environ):
            from prefect.logging.configuration import setup_logging

            setup_logging(incremental=False)  # ~70 ms, so only when it would differ
    if "dask.config" in sys.modules:
        sys.modules["dask.config"].refresh()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # else every child draws the same numbers


def watch_client(conn: socket.socket) -> None:
    """End this child when its client goes (it was SIGKILLed, say): it sends nothing, so any
    return from recv means its end closed."""
    try:
        conn.recv(1)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


def run_child(req: dict, fds: list[int], conn: socket.socket) -> None:
    """In the forked child: become the client's `python -m prefect.engine`. Never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        server_env = dict(os.environ)
        os.environ.clear()
        os.environ.update(req["env"])
        sys.path[0] = req["cwd"]  # as `python -m` puts the working directory first
        sys.argv = ["-m", *req["argv"]]  # runpy sets argv[0] to the module's file
        refresh_from_environment(server_env)
        threading.Thread(target=watch_client, args=(conn,), daemon=True).start()
        with warnings.catch_warnings():
            # runpy warns that prefect.engine is already imported: we run its __main__ block
            # afresh in a new namespace, as `python -m` does, and reuse only its dependencies.
            warnings.filterwarnings("ignore", ".*found in sys.modules", RuntimeWarning)
            runpy.run_module(ENGINE_MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        # What interpreter exit would do, then leave without unwinding into the server's loop.
        try:
            threading._shutdown()  # join non-daemon threads
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


class Zygote:
    def __init__(self, path: str):
        self.path = path
        self.children: dict[int, socket.socket] = {}  # pid -> its client's connection
        self.parent = os.getppid()
        self.pid = os.getpid()

    def serve(self) -> None:
        if threading.active_count() != 1:
            sys.exit(f"zygote: threads {threading.enumerate()} started while preloading; "
                     "forking would be unsafe")
        if "jemalloc_bg_thd" in native_threads():
            sys.exit("zygote: pyarrow's jemalloc started a background thread while preloading "
                     f"({JEMALLOC_CONF_ENV}={os.environ.get(JEMALLOC_CONF_ENV)!r}); forking "
                     "would be unsafe")
        wake_r, wake_w = socket.socketpair()
        for s in (wake_r, wake_w):
            s.setblocking(False)
        # SIGCHLD (and SIGTERM) wake the select loop through this pair.
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        if os.path.exists(self.path):
            os.unlink(self.path)  # left by a zygote that was killed
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.listener.listen(64)
        self.private = [self.listener, wake_r, wake_w]
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        log(f"serving on {self.path}")
        try:
            while os.getppid() == self.parent:  # the worker that started us is gone: stop
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is self.listener:
                        self.accept()
                    else:
                        while True:
                            try:
                                if not wake_r.recv(512):
                                    break
                            except BlockingIOError:
                                break
                self.reap()
        finally:
            if os.getpid() == self.pid and os.path.exists(self.path):
                os.unlink(self.path)

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(5.0)  # a stuck client must not hold up the others
        try:
            req, fds = read_request(conn)
        except (OSError, ValueError) as exc:
            log(f"bad request: {exc}")
            conn.close()
            return
        why = refusal(req, fds)
        if why:
            log(f"refused: {why}")
            for fd in fds:
                os.close(fd)
            conn.sendall(REPLY.pack(0))
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                for s in self.private + list(self.children.values()):
                    s.close()  # the child must not keep other clients' connections open
                signal.set_wakeup_fd(-1)
                conn.settimeout(None)
                run_child(req, fds, conn)
            finally:
                os._exit(1)  # never unwind into the server's loop
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        try:
            conn.sendall(REPLY.pack(pid))
        except OSError:
            pass  # the client is gone; the child's watcher ends it

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(REPLY.pack(os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()


def native_threads() -> list[str]:
    """The names of this process's OS threads (Linux; [] elsewhere)."""
    names = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: python -m tomopipe.infra.zygote SOCKET_PATH")
    conf = os.environ.get(JEMALLOC_CONF_ENV)
    os.environ[JEMALLOC_CONF_ENV] = f"{conf},{NO_BACKGROUND_THREAD}" if conf \
        else NO_BACKGROUND_THREAD
    die_with_parent(signal.SIGTERM)  # the worker that started us died: so do we (also checked
    # every second in serve, for systems without PR_SET_PDEATHSIG)
    t0 = time.monotonic()
    failed = preload()
    log(f"preloaded in {time.monotonic() - t0:.1f} s" + (f"; failed: {failed}" if failed else ""))
    if "prefect.client.orchestration" in sys.modules:
        from tomopipe.infra.plain_http import skip_ca_bundle_in_prefect_clients

        skip_ca_bundle_in_prefect_clients()  # inherited by every child
    try:
        Zygote(argv[0]).serve()
    except OSError as exc:
        sys.exit(f"zygote: cannot serve on {argv[0]}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
