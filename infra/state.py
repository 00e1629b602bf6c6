"""The processes of a home's running services, kept in ``$TOMOPIPE_HOME/services.json``.

``tomopipe up`` records there what it started: pids and start times, logs, start-up timings and
the Tiled API key of this start. Whether the file exists says whether services are up. The
addresses are configuration (``tomopipe.config``); ``tomopipe.context.run_context`` and
``infra.services.view`` put both together. A state file written by the production bootstrap
(``infra/production/bootstrap.py``) may also name addresses, which fill what the configuration
leaves open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_FILE = "services.json"
STARTING_FILE = "services.starting.json"  # pids of a `tomopipe up` in progress


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def read_services(home: Path) -> dict | None:
    """The services of this home as ``tomopipe up`` wrote them, or None when none are up."""
    path = state_path(home)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_services(home: Path, state: dict) -> None:
    """Write the state, readable by the owner only (it holds the Tiled API key)."""
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover would keep its own mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)  # readers never see half a file


def clear_services(home: Path) -> None:
    state_path(home).unlink(missing_ok=True)


def wait_while_starting(home: Path, timeout_s: float, poll_s: float = 0.5) -> None:
    """Return once no ``tomopipe up`` is starting this home's services: its state is written,
    it gave up, or ``timeout_s`` passed. A flow run the worker takes while ``up`` is still
    starting the rest (the worker starts early, and re-runs the runs a crash left) would
    otherwise find no services and fail."""
    import time

    deadline = time.monotonic() + timeout_s
    while (not state_path(home).exists() and (Path(home) / STARTING_FILE).exists()
           and time.monotonic() < deadline):
        time.sleep(poll_s)
