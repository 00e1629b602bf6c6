"""The queue server: bluesky-queueserver's RE Manager running the simulated beamline.

``tomopipe up --with-queue`` starts it after Redis (infra/redis_server.py). Its worker runs
``infra/simulator/qserver_startup.py``: the RunEngine, the sample stage motors and the plans of
``infra/simulator/queue_plans.py``, with every document published to the home's 0MQ bus, so the
bridge, the catalog and the live flow see queued scans like any other. Agents and people submit
plans through bluesky-queueserver-api at ``queue_control`` (0MQ).

The manager's files (permissions, the list of plans and devices it writes) live under
``$TOMOPIPE_HOME/queue``; its Redis keys under the prefix ``tomopipe``.
"""

from __future__ import annotations

import time
from pathlib import Path

from tomopipe.errors import ServiceError

STARTUP_SCRIPT = Path(__file__).resolve().parent / "simulator" / "qserver_startup.py"
REDIS_PREFIX = "tomopipe"
PERMISSIONS = """\
# Who may queue what on the simulated beamline: everything but names starting with '_'.
user_groups:
  root:
    allowed_plans: [null]
    forbidden_plans: [":^_"]
    allowed_devices: [null]
    forbidden_devices: [":^_:?.*"]
    allowed_functions: [null]
    forbidden_functions: [":^_"]
  primary:
    allowed_plans: [":.*"]
    forbidden_plans: [null]
    allowed_devices: [":?.*:depth=5"]
    forbidden_devices: [null]
    allowed_functions: [null]
    forbidden_functions: [null]
"""


def folder(home: Path) -> Path:
    path = Path(home) / "queue"
    path.mkdir(parents=True, exist_ok=True)
    return path


def argv(exe: str, home: Path, *, control: str, info: str, redis_addr: str) -> list[str]:
    here = folder(home)
    permissions = here / "user_group_permissions.yaml"
    permissions.write_text(PERMISSIONS)
    return [exe, "--zmq-control-addr", control, "--zmq-info-addr", info,
            "--redis-addr", redis_addr, "--redis-name-prefix", REDIS_PREFIX,
            "--startup-script", str(STARTUP_SCRIPT),
            "--existing-plans-devices", str(here / "existing_plans_and_devices.yaml"),
            "--user-group-permissions", str(permissions),
            "--zmq-publish-console", "OFF", "--use-ipython-kernel", "OFF"]


def api(control: str, *, timeout: float = 10.0):
    """A bluesky-queueserver-api client of the manager at ``control`` (0MQ)."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    return REManagerAPI(zmq_control_addr=control, timeout_recv=timeout, timeout_send=timeout)


def healthy(control: str) -> bool:
    """True when the manager answers its status request."""
    try:
        rm = api(control, timeout=2.0)
        try:
            rm.status()
            return True
        finally:
            rm.close()
    except Exception:
        return False


def open_environment(control: str, *, timeout: float = 120.0) -> None:
    """Open the worker environment (the RunEngine, devices and plans) and wait until it is
    idle; an environment that does not open names the manager's reason."""
    rm = api(control)
    try:
        status = rm.status()
        if not status["worker_environment_exists"]:
            rm.environment_open()
        asked = time.monotonic()
        deadline = asked + timeout
        while True:
            status = rm.status()
            if status["worker_environment_exists"] and status["manager_state"] == "idle":
                return
            if (status["manager_state"] == "idle" and time.monotonic() - asked > 5
                    and not status["worker_environment_exists"]):
                raise ServiceError(f"queue server {control}: the worker environment failed to "
                                   "open (its startup script raised); see the queue log")
            if time.monotonic() > deadline:
                raise ServiceError(f"queue server {control}: the worker environment did not "
                                   f"open in {timeout:.0f} s (manager state "
                                   f"{status['manager_state']}); see its log")
            time.sleep(0.5)
    finally:
        rm.close()
