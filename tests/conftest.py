"""Fixtures shared by the whole suite.

- The test session gets its own TOMOPIPE_HOME and PREFECT_HOME (temporary directories), so no
  test touches a user's real home and Prefect's SQLite files are never shared with anyone else.
- ``services``: the embedded services (Prefect server and worker, 0MQ proxy, Tiled, bridge,
  deployments) of that home, started once per session by the real ``tomopipe up`` command and
  stopped by ``tomopipe down`` at the end. Session fixtures are lazy, so only sessions that run a
  test asking for it pay for it; such tests are marked ``services`` (deselect with
  ``-m "not services"``).
- ``peer_data``: TomoPy's reference data in /work/shared/peer-data/tomopy (skips when absent).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEER_DATA = Path(__file__).resolve().parents[2] / "shared/peer-data/tomopy"
UP_TIMEOUT_S = 280  # `tomopipe up` on a busy 2-core machine; about 15 s on an idle one

_SESSION_DIR: Path | None = None


def pytest_configure(config):
    global _SESSION_DIR
    config.addinivalue_line("markers", "services: starts real embedded services")
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="tomopipe-tests-"))
    os.environ["TOMOPIPE_HOME"] = str(_SESSION_DIR / "home")
    os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect-home")


def pytest_unconfigure(config):
    # An ephemeral Prefect server started by an in-process flow stops at interpreter exit, after
    # pytest has closed the stream Prefect's log handler writes to; its last "Stopping temporary
    # server" line would then print a logging traceback under the test summary.
    logging.getLogger("prefect").disabled = True
    if _SESSION_DIR is not None and not os.environ.get("TOMOPIPE_KEEP_TEST_HOME"):
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)


def tomopipe_cli(*args: str, home: Path | str | None = None, timeout: float = 120,
                 check: bool = False) -> subprocess.CompletedProcess:
    """Run ``tomopipe ARGS`` as a real process (for ``home`` when given)."""
    env = dict(os.environ)
    if home is not None:
        env["TOMOPIPE_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "tomopipe.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"tomopipe {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def services_home() -> Path:
    return Path(os.environ["TOMOPIPE_HOME"])


@pytest.fixture(scope="session")
def services(services_home):
    """This session's running services: their addresses and processes (infra.services.view)."""
    from tomopipe.infra.services import view

    proc = tomopipe_cli("up", f"--timeout={UP_TIMEOUT_S - 20}", home=services_home,
                        timeout=UP_TIMEOUT_S)
    try:
        if proc.returncode != 0:
            pytest.fail(f"tomopipe up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        state = view(services_home)
        assert state is not None, "tomopipe up succeeded but wrote no state file"
        yield state
    finally:
        tomopipe_cli("down", home=services_home, timeout=60)


def peer_array(name: str):
    """One of TomoPy's peer arrays (``proj``, ``sinogram``, ...); skips when the data is absent."""
    import numpy as np

    path = PEER_DATA / f"{name}.npy"
    if not path.exists():
        pytest.skip(f"TomoPy peer data not found at {path}")
    return np.load(path)


@pytest.fixture(scope="session")
def peer_data() -> Path:
    """TomoPy's peer data (README.md there says what each file holds)."""
    if not PEER_DATA.is_dir():
        pytest.skip(f"TomoPy peer data not found at {PEER_DATA}")
    return PEER_DATA

