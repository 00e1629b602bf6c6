"""Point a tomopipe home at a facility's services, then register the deployments.

At a facility the services run as containers (or are the facility's own), not as processes that
``tomopipe up`` starts. Every part of tomopipe finds the services of its home through
``$TOMOPIPE_HOME/services.json`` (infra.state), so this one-shot writes that file from the
environment, waits for the Prefect API, and registers prefect.yaml's deployments and their
triggers (deployments.register.register_all). Run it as
``python -m tomopipe.infra.production.bootstrap`` (the compose file's ``bootstrap`` service
does, before the worker and the bridge start).

Environment (required: PREFECT_API_URL and TOMOPIPE_TILED_URL):

- PREFECT_API_URL            http://prefect-server:4200/api
- PREFECT_API_AUTH_STRING    "user:password" when the server sets PREFECT_SERVER_API_AUTH_STRING
                             (the production compose file requires it); Prefect's own client
                             reads it, and it is never written to services.json or printed
- TOMOPIPE_PREFECT_UI        the UI address people open (default: the API's host, no /api)
- TOMOPIPE_WORK_POOL         the work pool of the deployments (default: tomopipe)
- TOMOPIPE_TILED_URL         http://tiled:8000
- TOMOPIPE_TILED_API_KEY     the catalog's API key (default: TILED_SINGLE_USER_API_KEY)
- TOMOPIPE_ZMQ_IN / _OUT     tcp://zmq-proxy:5577 / tcp://zmq-proxy:5578 (omit with Kafka)
- TOMOPIPE_ZMQ_SERIALIZER    msgpack (default; pickle only on loopback) or json
- TOMOPIPE_DASK_SCHEDULER    a long-lived scheduler flows use by default (optional; the
                             ``cluster:`` section of config.yaml is the usual way)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tomopipe.errors import ConfigError, ServiceError, TomopipeError

SERIALIZERS = ("msgpack", "json", "pickle")
_HTTP = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_TCP = re.compile(r"^tcp://[^\s:/]+:\d{1,5}$")


def _url(env: Mapping[str, str], name: str, pattern: re.Pattern, example: str,
         required: bool = True) -> str | None:
    value = (env.get(name) or "").strip()
    if not value:
        if required:
            raise ConfigError(f"{name}: required (e.g. {example})")
        return None
    if not pattern.match(value):
        raise ConfigError(f"{name}: expected an address such as {example}, got {value!r}")
    return value.rstrip("/")


def state_from_env(env: Mapping[str, str], settings) -> dict:
    """The services.json of a production home, from environment variables (see the docstring)."""
    api = _url(env, "PREFECT_API_URL", _HTTP, "http://prefect-server:4200/api")
    ui = _url(env, "TOMOPIPE_PREFECT_UI", _HTTP, "https://prefect.facility.org",
              required=False) or api.removesuffix("/api")
    tiled = _url(env, "TOMOPIPE_TILED_URL", _HTTP, "http://tiled:8000")
    zmq_in = _url(env, "TOMOPIPE_ZMQ_IN", _TCP, "tcp://zmq-proxy:5577", required=False)
    zmq_out = _url(env, "TOMOPIPE_ZMQ_OUT", _TCP, "tcp://zmq-proxy:5578", required=False)
    serializer = env.get("TOMOPIPE_ZMQ_SERIALIZER") or "msgpack"
    if serializer not in SERIALIZERS:
        raise ConfigError(f"TOMOPIPE_ZMQ_SERIALIZER: must be one of {list(SERIALIZERS)}, "
                          f"got {serializer!r}")
    state = {
        "prefect_api": api, "prefect_ui": ui,
        "work_pool": env.get("TOMOPIPE_WORK_POOL") or "tomopipe",
        "tiled": tiled,
        "tiled_api_key": env.get("TOMOPIPE_TILED_API_KEY")
        or env.get("TILED_SINGLE_USER_API_KEY") or None,
        "zmq_in": zmq_in, "zmq_out": zmq_out, "zmq_serializer": serializer,
        "home": str(settings.home),
        "data_root": str(settings.data_roots[0]),
        "data_roots": [str(r) for r in settings.data_roots],
        "output_root": str(settings.output_root),
        "managed_by": "tomopipe.infra.production.bootstrap",  # not `tomopipe up`: no pids to stop
    }
    scheduler = _url(env, "TOMOPIPE_DASK_SCHEDULER", _TCP, "tcp://dask-scheduler:8786",
                     required=False)
    if scheduler:
        state["dask_scheduler"] = scheduler
    return state


def wait_for_prefect(api: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{api}/health", timeout=5.0)
            if resp.is_success:
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(1.0)
    raise ServiceError(f"Prefect API {api}: not healthy after {timeout_s:.0f} s ({last})")


def check_prefect_auth(api: str, auth_string: str | None) -> None:
    """Refuse to go on when the API does not accept our credentials (it answers 401).

    The health endpoint answers without credentials, so it cannot tell; an authenticated read
    of the server's version can. The message names the variable, never its value.
    """
    import base64

    import httpx

    headers = {}
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        resp = httpx.get(f"{api}/admin/version", headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        raise ServiceError(f"Prefect API {api}: {type(exc).__name__}") from None
    if resp.status_code == 401:
        what = "was refused" if auth_string else "is not set, and the API requires basic auth"
        raise ConfigError(f"PREFECT_API_AUTH_STRING: {what} (HTTP 401 from {api})")
    if not resp.is_success:
        raise ServiceError(f"Prefect API {api}: HTTP {resp.status_code} on /admin/version")


def ensure_work_pool(api: str, name: str) -> bool:
    """Create the ``process`` work pool ``name`` when the server has none by that name; True
    when created. The worker's service starts only after the bootstrap (compose's depends_on),
    so the pool the deployments name must exist before they are registered."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from tomopipe.context import prefect_api_scope

    async def ensure() -> bool:
        async with get_client() as client:
            try:
                await client.read_work_pool(name)
                return False
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                return True

    with prefect_api_scope(api):
        return asyncio.run(ensure())


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="python -m tomopipe.infra.production.bootstrap",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="TOMOPIPE_HOME to write")
    parser.add_argument("--no-register", action="store_true",
                        help="write services.json only; do not register deployments")
    parser.add_argument("--wait-s", type=float, default=300.0,
                        help="seconds to wait for the Prefect API before giving up")
    args = parser.parse_args(argv)

    from tomopipe.infra.state import write_services

    from tomopipe.config import load_settings

    try:
        settings = load_settings(args.home)
        state = state_from_env(os.environ, settings)
        settings.home.mkdir(parents=True, exist_ok=True)
        write_services(settings.home, state)
        print(f"wrote {settings.home / 'services.json'}")
        if not args.no_register:
            from tomopipe.deployments.register import register_all

            wait_for_prefect(state["prefect_api"], args.wait_s)
            check_prefect_auth(state["prefect_api"], os.environ.get("PREFECT_API_AUTH_STRING"))
            if ensure_work_pool(state["prefect_api"], state["work_pool"]):
                print(f"created the process work pool {state['work_pool']!r}")
            registered = register_all(settings, state)
            print(f"registered {len(registered)} deployment(s): {', '.join(sorted(registered))}")
    except TomopipeError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. Prefect refusing a deployment: one line, no traceback
        print(f"bootstrap: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
