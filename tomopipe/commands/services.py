"""``tomopipe up``, ``tomopipe status`` and ``tomopipe down``: the embedded services of a home."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tomopipe.config import home as default_home
from tomopipe.config import load_settings
from tomopipe.errors import ConfigError

ADDRESSES = ("prefect_ui", "prefect_api", "zmq_in", "zmq_out", "tiled", "dask_scheduler",
             "dask_dashboard", "queue_control", "redis", "data_root")


def add_parser(subparsers) -> None:
    up = subparsers.add_parser(
        "up", help="start the embedded services (Prefect, worker, 0MQ proxy, Tiled, Dask, bridge)",
        description="Start the embedded services of $TOMOPIPE_HOME on loopback and register the "
                    "deployments. Does nothing when they already run.")
    for name, what in (("prefect", "Prefect server port"), ("tiled", "Tiled server port"),
                       ("zmq-in", "0MQ proxy port publishers send to"),
                       ("zmq-out", "0MQ proxy port subscribers read from"),
                       ("dask-scheduler", "Dask scheduler port"),
                       ("dask-dashboard", "Dask dashboard port")):
        env = f"TOMOPIPE_{name.replace('-', '_').upper()}_PORT"
        up.add_argument(f"--{name}-port", type=int,
                        help=f"{what} (default: ${env}, else the configured address's, "
                             "else the one picked at the first start)")
    up.add_argument("--timeout", type=float, default=180.0,
                    help="seconds each service may take to become healthy (default 180)")
    up.add_argument("--no-bridge", action="store_true", help="do not start the document bridge")
    up.add_argument("--no-deployments", action="store_true",
                    help="do not register the deployments")
    up.add_argument("--with-queue", action="store_true",
                    help="also start Redis and bluesky-queueserver's RE Manager running the "
                         "simulated beamline (what `tomopipe simulate --steer` queues on)")
    up.set_defaults(func=run_up)

    status = subparsers.add_parser(
        "status", help="show the embedded services and whether they answer",
        description="Exit status: 0 all healthy, 1 nothing up, 2 something up but not healthy.")
    status.add_argument("--json", action="store_true",
                        help="print one JSON object (includes the Tiled API key)")
    status.set_defaults(func=run_status)

    down = subparsers.add_parser("down", help="stop the embedded services")
    down.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait after SIGTERM before SIGKILL (default 10)")
    down.set_defaults(func=run_down)


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}: not a port number: {value!r}") from None


def run_up(args: argparse.Namespace) -> int:
    from tomopipe.infra import services

    settings = load_settings()
    ports = services.Ports(**{
        name: getattr(args, f"{name}_port") or _env_port(f"TOMOPIPE_{name.upper()}_PORT")
        for name in ("prefect", "tiled", "zmq_in", "zmq_out", "dask_scheduler",
                     "dask_dashboard")})
    print(f"starting the services of {settings.home} ...", flush=True)
    t0 = time.monotonic()
    state, started = services.up(
        settings, ports=ports, timeout=args.timeout, bridge=not args.no_bridge,
        register=not args.no_deployments, with_queue=args.with_queue,
        echo=lambda msg: print(msg, flush=True))
    if not started:
        print(f"already up for {settings.home}; nothing changed")
    else:
        print(f"up in {time.monotonic() - t0:.1f} s")
    _print_addresses(state)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from tomopipe.infra import services

    home = default_home()
    state = services.status(home)
    if state is None:
        if args.json:
            print(json.dumps({"home": str(home), "running": False}))
        else:
            print(f"no services are up for {home} (run `tomopipe up`)", file=sys.stderr)
        return 1
    state["running"] = True
    if args.json:
        print(json.dumps(state, sort_keys=True))
    else:
        _print_addresses(state)
        print()
        print(f"{'service':<10} {'pid':>8}  {'health':<8} log")
        for name, ok in state["health"].items():
            pid = state["pids"].get(name, "")
            log = state.get("logs", {}).get(name, "")
            print(f"{name:<10} {pid:>8}  {'ok' if ok else 'DOWN':<8} {log}")
    return 0 if state["healthy"] else 2


def run_down(args: argparse.Namespace) -> int:
    from tomopipe.infra import services

    home = default_home()
    stopped = services.down(home, timeout=args.timeout)
    if stopped:
        print(f"stopped {', '.join(stopped)} for {home}")
    else:
        print(f"nothing was running for {home}")
    return 0


def _print_addresses(state: dict) -> None:
    for key in ADDRESSES:
        if key in state:
            print(f"{key:<15} {state[key]}")
    print(f"{'serializer':<15} {state.get('zmq_serializer')}")
    print(f"{'home':<15} {state.get('home')}")
