"""tomopipe as a person installs it: a built wheel in a fresh virtualenv, used from elsewhere.

The wheel is built from this checkout (``uv build``), installed alone into a new virtualenv
(dependencies resolved by uv, from its cache when warm), and then ``tomopipe recon`` and
``tomopipe up`` / ``status`` / ``down`` run from a directory that is not the checkout, so
nothing can come from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"

pytestmark = pytest.mark.skipif(not UV.exists() and shutil.which("uv") is None,
                                reason="uv is not installed beside this Python or on PATH")


def _uv() -> str:
    return str(UV) if UV.exists() else shutil.which("uv")


def _run(argv, *, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([_uv(), "build", "--wheel", "-q", "-o", out, REPO], cwd=REPO)
    (found,) = out.glob("tomopipe-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("venv") / "env"
    _run([_uv(), "venv", "-q", where, "--python", sys.executable], cwd=where.parent)
    _run([_uv(), "pip", "install", "-q", "--python", where / "bin/python", wheel],
         cwd=where.parent)
    return where


def test_the_wheel_holds_one_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tomopipe"}, tops
    for module in ("flows/live.py", "tasks/recon/engine.py", "deployments/bridge.py",
                   "infra/services.py", "prefect.yaml"):
        assert f"tomopipe/{module}" in names, module
    # prefect.yaml is the top-level file itself, not a link
    assert zipfile.ZipFile(wheel).read("tomopipe/prefect.yaml") == \
        (REPO / "prefect.yaml").read_bytes()


def test_recon_and_services_from_the_installed_wheel(venv, tmp_path):
    python, tomopipe = venv / "bin/python", venv / "bin/tomopipe"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHON"))}
    env["TOMOPIPE_HOME"] = str(tmp_path / "home")
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")

    # nothing but tomopipe at the top level of site-packages
    probe = _run([python, "-c", "import importlib.util as u, tomopipe.flows.live as m; "
                  "print(m.__file__); print([n for n in ('flows', 'tasks', 'infra', "
                  "'deployments') if u.find_spec(n)])"], cwd=work, env=env)
    where, stray = probe.stdout.splitlines()
    assert str(venv) in where and str(REPO) not in where
    assert stray == "[]"

    _run([python, "-c", "from tomopipe.infra.datasets import make_phantom_scan, write_dxchange;"
          "s = make_phantom_scan(64, 4, 90, center=32.0);"
          "write_dxchange('scan.h5', s['projections'], s['flats'], s['darks'], "
          "s['angles_deg'])"], cwd=work, env=env)
    recon = _run([tomopipe, "recon", "scan.h5", "--out", "vol.zarr", "--workers", "1",
                  "--json"], cwd=work, env=env)
    result = json.loads(recon.stdout)
    assert result["shape"] == [4, 64, 64] and (work / "vol.zarr" / "zarr.json").exists()

    try:
        _run([tomopipe, "up", "--timeout", "240"], cwd=work, env=env, timeout=400)
        status = json.loads(_run([tomopipe, "status", "--json"], cwd=work, env=env).stdout)
        assert status["healthy"], status["health"]
        deployments = _run([python, "-c", "import httpx, sys; print(len(httpx.post("
                            "sys.argv[1] + '/deployments/filter', json={}).json()))",
                            status["prefect_api"]], cwd=work, env=env)
        assert int(deployments.stdout) >= 4  # prefect.yaml shipped in the wheel was read
    finally:
        _run([tomopipe, "down"], cwd=work, env=env, timeout=120)
