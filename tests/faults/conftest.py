"""Fixtures of the fault tests. ``fault_services`` lives here, not in fault_support.py: a
session fixture imported into several modules would be started once per module."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import tomopipe_cli

from faults.fault_support import up


@pytest.fixture(scope="session")
def fault_services():
    """(home, state) of a home whose services the fault tests may kill."""
    folder = Path(tempfile.mkdtemp(prefix="tomopipe-faults-"))
    home = folder / "home"
    try:
        state = up(home)
        yield home, state
    finally:
        tomopipe_cli("down", home=home, timeout=90)
        if not os.environ.get("TOMOPIPE_KEEP_TEST_HOME"):
            shutil.rmtree(folder, ignore_errors=True)
