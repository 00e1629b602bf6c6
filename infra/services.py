"""The embedded services of one tomopipe home: bring them up, check them, bring them down.

``up`` starts, each as its own detached process on loopback with its log under
``$TOMOPIPE_HOME/logs``:

- ``prefect``: the Prefect server (SQLite under ``$TOMOPIPE_HOME/prefect``, its PREFECT_HOME);
- ``worker``: a Prefect worker on the ``tomopipe`` process work pool (the worker creates the pool
  when it is absent), woken by the server's event stream when a run is scheduled
  (infra/wakeup.py), polling every 5 s as a fallback;
- ``zmq_proxy``: bluesky's 0MQ proxy, the document bus (loopback only; documents in
  msgpack unless config.yaml's ``bus.serializer`` says json or pickle);
- ``tiled``: a Tiled catalog server that stores Bluesky runs and reads the data roots;
- ``dask``: the standing Dask cluster (``infra/dask_service.py``), scheduler and nanny-managed
  workers on loopback, when config.yaml's ``cluster.kind`` is ``local`` (the default); with
  ``address`` the configured scheduler goes into the state instead and nothing is started;
- ``bridge``: ``python -m tomopipe.deployments.bridge --home H`` (documents -> catalog +
  Prefect events), started after the state file is written, because it reads the Tiled key
  from there;
- with ``--with-queue``: ``redis`` (Debian's redis-server, infra/redis_server.py) and ``queue``
  (bluesky-queueserver's RE Manager running the simulated beamline, infra/queue_server.py,
  its worker environment opened), after the bridge;

then registers the deployments (``deployments.register.register_all(settings, state)``).
Everything lives under the home, so two homes run side by side on different ports.

The addresses are configuration (``services:`` in config.yaml, ``tomopipe.config``): ``up``
binds the configured ports (the ``--*-port`` options first), picks free ones for the rest the
first time and keeps them in the home's addresses.yaml, so every address, the Prefect UI's
included, stays the same across restarts. The state file (``infra.state``) records the
processes only: pids and started ({service: pid / process start time}), logs ({service:
path}), startup_seconds and startup_timings (seconds from start to each one healthy), and
tiled_api_key (made at each start). ``view``/``status`` show both together: prefect_api,
prefect_ui, zmq_in, zmq_out, zmq_serializer, tiled, dask_scheduler, dask_dashboard, work_pool,
home, prefect_home, data_root (the first of data_roots), data_roots, output_root and the
process keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tomopipe.infra import dask_service, processes, queue_server, redis_server, tiled_server
from tomopipe.infra.processes import LOOPBACK
from tomopipe.infra.state import STARTING_FILE, clear_services, read_services, write_services

from tomopipe.config import Settings, configured_addresses, record_service_addresses
from tomopipe.context import prefect_api_scope, run_context
from tomopipe.errors import ConfigError, ServiceError

WORK_POOL = "tomopipe"
SERIALIZER = "msgpack"  # the default of config.yaml's bus.serializer
# Start order; down stops them in reverse.
CORE_SERVICES = ("prefect", "dask", "worker", "zmq_proxy", "tiled", "bridge", "stream_starter")
QUEUE_SERVICES = ("redis", "queue")  # with --with-queue
SERVICES = CORE_SERVICES + QUEUE_SERVICES

# The worker is woken by the server's event stream when a run of its pool is scheduled
# (infra/wakeup.py), so its polling is only a fallback: every 5 s rather than the 0.25 s that
# polling alone needed, whose database writes stalled the embedded SQLite server. Heartbeats
# every 5 s let `status` tell a live worker. The runner setting only matters for flow.serve().
WORKER_ENV = {
    "PREFECT_WORKER_QUERY_SECONDS": "5",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    # flow runs send heartbeats, for Prefect's zombie-flow automation (deployments/crash_recovery)
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


@dataclass
class Ports:
    """Ports to bind; None picks a free one."""

    prefect: int | None = None
    tiled: int | None = None
    zmq_in: int | None = None
    zmq_out: int | None = None
    dask_scheduler: int | None = None
    dask_dashboard: int | None = None


def _exe(name: str) -> str:
    """A console script of this virtualenv (beside the running Python), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"cannot find the program {name!r} beside {sys.executable} or on PATH")
    return found


def prefect_home(home: Path) -> Path:
    return Path(home) / "prefect"


def _database_env(settings) -> dict[str, str]:
    """The Prefect server's database: ``services.prefect_database`` (PostgreSQL at a facility)."""
    url = settings.services.prefect_database
    return {"PREFECT_API_DATABASE_CONNECTION_URL": url} if url else {}


def base_env(home: Path, prefect_api: str | None = None) -> dict[str, str]:
    """The environment of every service process: this home, its own PREFECT_HOME."""
    env = dict(os.environ)
    env["TOMOPIPE_HOME"] = str(home)
    env[processes.SERVICE_ENV] = str(home)  # `down` finds what the services started by it
    env["PREFECT_HOME"] = str(prefect_home(home))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_CLI_COLORS"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PREFECT_API_KEY", None)
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    else:
        env.pop("PREFECT_API_URL", None)
    return env


# ---------------------------------------------------------------- health checks

def worker_online(prefect_api: str, *, max_age_s: float = 30.0) -> bool:
    """True when a worker of the tomopipe pool has sent a heartbeat within ``max_age_s``."""
    try:
        resp = httpx.post(f"{prefect_api}/work_pools/{WORK_POOL}/workers/filter", json={},
                          timeout=2.0)
    except httpx.HTTPError:
        return False
    if not resp.is_success:
        return False

    now = datetime.now(UTC)
    for worker in resp.json():
        beat = worker.get("last_heartbeat_time")
        if not beat:
            continue
        when = datetime.fromisoformat(beat.replace("Z", "+00:00"))
        if (now - when).total_seconds() < max_age_s and worker.get("status") != "OFFLINE":
            return True
    return False


def _checks(state: dict) -> dict[str, Callable[[], bool]]:
    pids, started = state.get("pids", {}), state.get("started", {})

    def running(name: str) -> bool:
        return processes.alive(pids.get(name), started.get(name))

    return {
        "prefect": lambda: running("prefect")
        and processes.http_ok(f"{state['prefect_api']}/health"),
        "worker": lambda: running("worker") and worker_online(state["prefect_api"]),
        "zmq_proxy": lambda: running("zmq_proxy") and processes.tcp_listening(state["zmq_in"])
        and processes.tcp_listening(state["zmq_out"]),
        "tiled": lambda: running("tiled") and tiled_server.healthy(state["tiled"]),
        "bridge": lambda: running("bridge"),
        "stream_starter": lambda: running("stream_starter"),
        "dask": lambda: running("dask") and dask_service.healthy(state),
        "redis": lambda: running("redis") and redis_server.healthy(state["redis"]),
        "queue": lambda: running("queue") and queue_server.healthy(state["queue_control"]),
    }


def health(state: dict) -> dict[str, bool]:
    """Each service of ``state`` (those it has a pid for) -> whether it answers now."""
    checks = _checks(state)
    return {name: checks[name]() for name in SERVICES if name in state.get("pids", {})}


# What the state file holds: the processes of one `up`, nothing that is configuration.
PROCESS_KEYS = ("pids", "started", "logs", "startup_seconds", "startup_timings",
                "tiled_api_key")


def view(home: Path) -> dict | None:
    """The services of this home as one dict: the addresses and settings they run with (the
    configuration) and their processes (the state file); None when nothing is up."""
    runtime = read_services(home)
    if runtime is None:
        return None
    ctx = run_context(home)
    settings = ctx.settings
    # the database URL may hold a password: not shown
    return {**runtime, **ctx.services.model_dump(exclude_none=True,
                                                 exclude={"prefect_database"}),
            # config.yaml's bus.serializer, unless a production bootstrap's state names one
            "zmq_serializer": runtime.get("zmq_serializer") or settings.bus.serializer,
            "home": str(settings.home),
            "prefect_home": str(prefect_home(settings.home)),
            "data_root": str(settings.data_roots[0]),
            "data_roots": [str(r) for r in settings.data_roots],
            "output_root": str(settings.output_root)}


def status(home: Path) -> dict | None:
    """The services of this home (``view``) with a ``health`` mapping added, or None when
    nothing is up."""
    state = view(home)
    if state is None:
        return None
    state["health"] = health(state)
    state["healthy"] = bool(state["health"]) and all(state["health"].values())
    return state


# ---------------------------------------------------------------- up / down

def _pick_ports(ports: Ports) -> Ports:
    chosen = {}
    fields = ("prefect", "tiled", "zmq_in", "zmq_out", "dask_scheduler", "dask_dashboard")
    # configured ports first, so a free one picked for another service cannot take theirs
    for field in sorted(fields, key=lambda f: getattr(ports, f) is None):
        port = getattr(ports, field)
        if port is None:
            port = processes.free_port()
            while port in chosen.values():
                port = processes.free_port()
        elif not 0 < port < 65536:
            raise ConfigError(f"port for {field}: {port} is not a TCP port")
        elif processes.port_in_use(port):
            raise ServiceError(f"port {port} for {field} is already in use on {LOOPBACK}; "
                               "choose another or leave it out to pick a free one (ports "
                               "picked before are kept in the home's addresses.yaml)")
        chosen[field] = port
    if len(set(chosen.values())) != len(chosen):
        raise ConfigError(f"ports must differ: {chosen}")
    return Ports(**{f: chosen[f] for f in fields})


def _data_roots(settings: Settings) -> list[Path]:
    default = (settings.home / "data").resolve()
    for root in settings.data_roots:
        if root == default:
            root.mkdir(parents=True, exist_ok=True)
        elif not root.is_dir():
            raise ConfigError(f"{settings.config_file}: data_roots: {root} is not a directory")
    return list(settings.data_roots)


class _Launcher:
    """Starts processes for one ``up`` and stops them all if it fails."""

    def __init__(self, home: Path):
        self.home = home
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str],
              cwd: Path | None = None) -> subprocess.Popen:
        log = self.home / "logs" / f"{name}.log"
        self.logs[name] = log
        self.procs[name] = processes.spawn(argv, env=env, log_path=log, cwd=cwd)
        # Kept until up ends, so `down` can stop what an `up` that was killed had started.
        _write_json(self.home / STARTING_FILE, {"pids": self.pids(), "started": self.started()})
        return self.procs[name]

    def done(self) -> None:
        (self.home / STARTING_FILE).unlink(missing_ok=True)

    def wait(self, name: str, check: Callable[[], bool], timeout: float) -> float:
        def healthy() -> bool:
            self.fail_if_one_exited()  # do not wait on one service while another has died
            return check()

        return processes.wait_healthy(name, healthy, proc=self.procs[name],
                                      log_path=self.logs[name], timeout=timeout)

    def fail_if_one_exited(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.logs[name]
                raise ServiceError(f"{name} exited with status {proc.returncode} before it "
                                   f"became healthy; see its log {log}:\n"
                                   f"{processes.log_tail(log)}")

    def stop_all(self) -> None:
        processes.stop_groups([(p.pid, None) for p in self.procs.values()], timeout=5)
        self.done()

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def started(self) -> dict[str, float | None]:
        return {name: processes.start_time(proc.pid) for name, proc in self.procs.items()}


def running_state(home: Path) -> dict | None:
    """The services of this home (``view``) when every one runs and answers, else None."""
    state = view(home)
    if state is None:
        return None
    checks = health(state)
    if checks and all(checks.values()):
        return state
    return None


@contextlib.contextmanager
def home_lock(home: Path):
    """One ``up`` or ``down`` at a time per home; a second one waits for the first."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "services.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up(settings: Settings, *, ports: Ports | None = None, timeout: float = 180.0,
       bridge: bool = True, register: bool = True, with_queue: bool = False,
       echo: Callable[[str], None] = lambda msg: None) -> tuple[dict, bool]:
    """Bring up this home's services; returns (state, started_now).

    When they are already up and healthy, nothing changes and started_now is False. Leftovers of
    an earlier ``up`` that are no longer healthy are stopped first. On failure everything started
    here is stopped and ServiceError names the service and its log.
    """
    home = Path(settings.home).resolve()
    with home_lock(home):
        return _up(settings, home, ports=ports, timeout=timeout, bridge=bridge,
                   register=register, with_queue=with_queue, echo=echo)


def _up(settings: Settings, home: Path, *, ports: Ports | None, timeout: float, bridge: bool,
        register: bool, echo: Callable[[str], None],
        with_queue: bool = False) -> tuple[dict, bool]:
    existing = running_state(home)
    if existing is not None and (not with_queue or "queue" in existing.get("pids", {})):
        return existing, False
    if existing is not None:  # up, but without the queue: add it
        echo("the services are up; starting the queue (Redis, RE Manager)")
        return _add_queue(settings, home, existing, timeout), True
    if read_services(home) is not None or (home / STARTING_FILE).exists():
        echo("stopping what is left of an earlier `tomopipe up` (not all of it is healthy)")
        _down(home, timeout=10.0)

    data_roots = _data_roots(settings)
    ports = _pick_ports(_with_configured(ports or Ports(), settings))
    prefect_api = f"http://{LOOPBACK}:{ports.prefect}/api"
    addresses = {
        "prefect_api": prefect_api,
        "zmq_in": f"tcp://{LOOPBACK}:{ports.zmq_in}",
        "zmq_out": f"tcp://{LOOPBACK}:{ports.zmq_out}",
        "tiled": f"http://{LOOPBACK}:{ports.tiled}",
        # dask_scheduler, dask_dashboard: the standing cluster (or the configured address)
        **dask_service.state_keys(settings, ports.dask_scheduler, ports.dask_dashboard),
    }
    state = {
        "home": str(home),
        **addresses,
        "prefect_ui": f"http://{LOOPBACK}:{ports.prefect}",
        "prefect_home": str(prefect_home(home)),
        "work_pool": WORK_POOL,
        "zmq_serializer": _bus_serializer(settings, echo),
        "tiled_api_key": tiled_server.new_api_key(),
        "data_root": str(data_roots[0]),
        "data_roots": [str(r) for r in data_roots],
        "output_root": str(settings.output_root),
    }
    env = base_env(home, prefect_api)
    run = _Launcher(home)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        # The three servers start together; each takes seconds to import and initialise.
        # The UI asks /ui-settings where the API is; without PREFECT_UI_API_URL it says
        # Prefect's default port, not this server's, and the page cannot connect.
        run.start("prefect", [sys.executable, "-m", "tomopipe.infra.prefect_server", "server",
                              "start", "--host", LOOPBACK, "--port", str(ports.prefect)],
                  {**base_env(home, None), "PREFECT_UI_API_URL": prefect_api,
                   **_database_env(settings)}, cwd=home)
        # The worker imports Prefect meanwhile and starts when the server answers; it creates
        # the process work pool when it is absent.
        run.start("worker", [sys.executable, "-m", "tomopipe.infra.worker_server",
                             "--pool", WORK_POOL, "--name", f"tomopipe-{ports.prefect}"],
                  {**env, **WORKER_ENV}, cwd=home)
        run.start("zmq_proxy", [_exe("bluesky-0MQ-proxy"), "--in-address", state["zmq_in"],
                                "--out-address", state["zmq_out"]], env)
        config = tiled_server.write_config(home, data_roots, state["tiled_api_key"])
        run.start("tiled", tiled_server.argv(_exe("tiled"), config, ports.tiled), env)
        if dask_service.starts_service(settings):
            (home / dask_service.READY_FILE).unlink(missing_ok=True)
            run.start("dask", dask_service.argv(home, ports.dask_scheduler, ports.dask_dashboard),
                      env, cwd=home)

        checks = _checks({**state, "pids": run.pids(), "started": run.started()})
        run.wait("prefect", checks["prefect"], timeout)
        timings["prefect"] = time.monotonic() - t0
        run.wait("zmq_proxy", checks["zmq_proxy"], timeout)
        timings["zmq_proxy"] = time.monotonic() - t0
        run.wait("tiled", checks["tiled"], timeout)
        timings["tiled"] = time.monotonic() - t0
        processes.wait_healthy(
            "tiled (reading its catalog with the API key)",
            lambda: tiled_server.catalog_answers(state["tiled"], state["tiled_api_key"]),
            proc=run.procs["tiled"], log_path=run.logs["tiled"], timeout=30)
        if "dask" in run.procs:
            run.wait("dask", lambda: dask_service.ready(home) and checks["dask"](), timeout)
            timings["dask"] = time.monotonic() - t0
        run.wait("worker", checks["worker"], timeout)
        timings["worker"] = time.monotonic() - t0
        _wait_for_zygote(home, run, timeout)
        timings["zygote"] = time.monotonic() - t0

        # All healthy: the addresses picked are kept (addresses.yaml) for the next start.
        # The bridge reads them from there, and the Tiled key from the state file.
        record_service_addresses(home, addresses if "dask" in run.procs else {
            k: v for k, v in addresses.items() if not k.startswith("dask_")})  # not ours
        state.update(pids=run.pids(), started=run.started(),
                     logs={k: str(v) for k, v in run.logs.items()})
        write_services(home, _processes(state))

        if bridge:
            run.start("bridge", [sys.executable, "-m", "tomopipe.deployments.bridge",
                                 "--home", str(home)],
                      env, cwd=home)
            if state.get("dask_scheduler") and not state.get("dask_adaptive"):
                # starts a run's blocks at its first frame, before its live flow runs
                run.start("stream_starter", [sys.executable, "-m",
                                             "tomopipe.deployments.stream_starter",
                                             "--home", str(home)], env, cwd=home)
            _wait_stays_up(run, "bridge", seconds=2.0)
            timings["bridge"] = time.monotonic() - t0
            if "stream_starter" in run.procs:
                _wait_stays_up(run, "stream_starter", seconds=0.5)
        state.update(pids=run.pids(), started=run.started(),
                     logs={k: str(v) for k, v in run.logs.items()})
        write_services(home, _processes(state))

        if with_queue:
            _start_queue(settings, home, state, run, timeout)
            timings["queue"] = time.monotonic() - t0
            state.update(pids=run.pids(), started=run.started(),
                         logs={k: str(v) for k, v in run.logs.items()})
            write_services(home, _processes(state))

        if register:
            _register(settings, state)
            timings["deployments"] = time.monotonic() - t0
    except BaseException:
        run.stop_all()
        clear_services(home)
        raise
    state["startup_seconds"] = round(time.monotonic() - t0, 1)
    state["startup_timings"] = {k: round(v, 1) for k, v in timings.items()}
    write_services(home, _processes(state))
    run.done()
    return state, True


def _start_queue(settings: Settings, home: Path, state: dict, run: _Launcher,
                 timeout: float) -> None:
    """Redis, then the RE Manager with the simulated beamline, its environment opened."""
    configured = settings.services
    redis_port = configured.port("redis") or processes.free_port()
    control_port = configured.port("queue_control") or processes.free_port()
    info_port = configured.port("queue_info") or processes.free_port()
    while info_port == control_port:
        info_port = processes.free_port()
    addresses = {"redis": redis_server.address(redis_port),
                 "queue_control": f"tcp://{LOOPBACK}:{control_port}",
                 "queue_info": f"tcp://{LOOPBACK}:{info_port}"}
    state.update(addresses)
    env = base_env(home, state["prefect_api"])
    run.start("redis", redis_server.argv(home, redis_port), env)
    run.wait("redis", lambda: redis_server.healthy(addresses["redis"]), timeout)
    run.start("queue", queue_server.argv(_exe("start-re-manager"), home,
                                         control=addresses["queue_control"],
                                         info=addresses["queue_info"],
                                         redis_addr=addresses["redis"]), env, cwd=home)
    run.wait("queue", lambda: queue_server.healthy(addresses["queue_control"]), timeout)
    queue_server.open_environment(addresses["queue_control"], timeout=timeout)
    record_service_addresses(home, {**_recorded(home), **addresses})


def _add_queue(settings: Settings, home: Path, state: dict, timeout: float) -> dict:
    run = _Launcher(home)
    try:
        _start_queue(settings, home, state, run, timeout)
    except BaseException:
        run.stop_all()
        raise
    runtime = read_services(home) or {}
    for key in ("pids", "started", "logs"):
        runtime[key] = {**runtime.get(key, {}), **{
            "pids": run.pids(), "started": run.started(),
            "logs": {k: str(v) for k, v in run.logs.items()}}[key]}
    write_services(home, _processes(runtime))
    run.done()
    return view(home)


def _recorded(home: Path) -> dict:
    from tomopipe.config import _picked_addresses

    return _picked_addresses(home)


def _processes(state: dict) -> dict:
    return {k: state[k] for k in PROCESS_KEYS if k in state}


# Ports field -> the address it is the port of
PORT_OF = {"prefect": "prefect_api", "tiled": "tiled", "zmq_in": "zmq_in", "zmq_out": "zmq_out",
           "dask_scheduler": "dask_scheduler", "dask_dashboard": "dask_dashboard"}


def _with_configured(ports: Ports, settings: Settings) -> Ports:
    """The ports given to ``up`` first, then those of the addresses in the configuration
    (a person's, or those an earlier ``up`` picked). A given port that contradicts an address a
    person configured is refused: every reader would look for the service at the other one."""
    configured, set_by_person = settings.services, configured_addresses(settings.home)
    chosen = {}
    for field, key in PORT_OF.items():
        given, port = getattr(ports, field), configured.port(key)
        if given and key in set_by_person and port and given != port:
            raise ConfigError(f"port {given} for {field}: the configuration says "
                              f"services.{key}: {set_by_person[key]}; change it there")
        chosen[field] = given or port
    return Ports(**chosen)


def _bus_serializer(settings: Settings, echo: Callable[[str], None]) -> str:
    """The bus codec config.yaml asks for; pickle only with a warning (it runs code)."""
    bus = getattr(settings, "bus", None)
    kind = getattr(bus, "serializer", None) or SERIALIZER
    if kind == "pickle":
        from tomopipe.deployments.bus import PICKLE_WARNING

        echo(f"WARNING: {PICKLE_WARNING}")
    return kind


def _wait_for_zygote(home: Path, run, timeout: float) -> None:
    """Wait for the worker's flow-run fork server, so the first live run starts warm too."""
    if os.environ.get("TOMOPIPE_ZYGOTE", "1") == "0":
        return
    sock = home / "zygote.sock"
    processes.wait_healthy("worker's flow-run fork server (zygote)", sock.exists,
                           proc=run.procs["worker"], log_path=run.logs["worker"], timeout=timeout)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)



def _wait_stays_up(run: _Launcher, name: str, seconds: float) -> float:
    """For a process without a health endpoint: healthy when it has not exited after a while."""
    t0 = time.monotonic()
    proc = run.procs[name]
    while time.monotonic() - t0 < seconds:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with status {proc.returncode} at start; see its "
                               f"log {run.logs[name]}:\n{processes.log_tail(run.logs[name])}")
        time.sleep(0.1)
    return time.monotonic() - t0


def _register(settings: Settings, state: dict) -> None:
    """Register the deployments against this home's server (not any other PREFECT_API_URL)."""
    from tomopipe.deployments.register import register_all

    with prefect_api_scope(state["prefect_api"], Path(state["prefect_home"])):
        try:
            register_all(settings, state)
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(f"registering the deployments on {state['prefect_api']} "
                               f"failed: {type(exc).__name__}: {exc}") from exc


def down(home: Path, *, timeout: float = 10.0) -> list[str]:
    """Stop every service of this home and clear its state file; returns the names stopped.

    Safe to run when nothing is up.
    """
    home = Path(home).resolve()
    if not home.is_dir():
        return []
    with home_lock(home):  # waits for an `up` in progress, then stops what it started
        return _down(home, timeout=timeout)


def _down(home: Path, *, timeout: float) -> list[str]:
    state = read_services(home) or {}
    starting = home / STARTING_FILE
    if starting.exists():  # an `up` that was killed before it finished
        with contextlib.suppress(ValueError, OSError):
            left = json.loads(starting.read_text())
            state = {"pids": {**left.get("pids", {}), **state.get("pids", {})},
                     "started": {**left.get("started", {}), **state.get("started", {})}}
    if not state.get("pids"):
        clear_services(home)
        starting.unlink(missing_ok=True)
        return _stop_strays(home, timeout)
    pids, started = state.get("pids", {}), state.get("started", {})
    order = [n for n in reversed(SERVICES) if n in pids] + [n for n in pids if n not in SERVICES]
    ran = processes.stop_groups([(pids[n], started.get(n)) for n in order], timeout=timeout)
    stopped = [n for n in order if pids[n] in ran]
    stopped += _stop_strays(home, timeout)
    clear_services(home)
    starting.unlink(missing_ok=True)
    return stopped


def _stop_strays(home: Path, timeout: float) -> list[str]:
    """Stop what the services started that outlived their process groups (flow runs in their
    own session, a fork server's children after their worker was killed); ["strays"] or []."""
    left = processes.processes_of_home(home)
    if not left:
        return []
    processes.stop_processes(left, timeout=timeout)
    return ["strays"]
