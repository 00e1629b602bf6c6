"""Start a Prefect worker as soon as its server answers: ``python -m infra.worker_server ARGS``.

ARGS are those of ``prefect worker start``. Importing Prefect takes seconds on a small machine,
so ``tomopipe up`` starts this together with the server: the import overlaps the server's own
start-up, and the worker begins the moment ``$PREFECT_API_URL/health`` answers.

It also starts the flow-run fork server (infra/zygote.py) on ``$TOMOPIPE_HOME/zygote.sock``
unless TOMOPIPE_ZYGOTE=0: the deployments' command, ``python -m infra.zygote_client``, finds it
through TOMOPIPE_ZYGOTE_SOCKET, which the flow-run processes inherit from this worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

WAIT_S = float(os.environ.get("TOMOPIPE_WORKER_WAIT_S", "300"))


def wait_for_api(api: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"worker: the Prefect server at {api} did not answer within {timeout:.0f} s")


def start_zygote() -> subprocess.Popen | None:
    """The fork server, in this process group (so `tomopipe down` stops it with the worker)."""
    home = os.environ.get("TOMOPIPE_HOME")
    if not home or os.environ.get("TOMOPIPE_ZYGOTE", "1") == "0":
        return None
    path = os.path.join(home, "zygote.sock")
    os.environ["TOMOPIPE_ZYGOTE_SOCKET"] = path
    return subprocess.Popen([sys.executable, "-m", "infra.zygote", path], stdin=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        sys.exit("worker: PREFECT_API_URL is not set")
    # Flow runs are started with the command `python ...`: make that this virtualenv's Python,
    # as activating it would.
    bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    from prefect.cli import app  # the slow part, done while the server starts

    start_zygote()  # after our own import, not to slow it on a small machine

    wait_for_api(api, WAIT_S)
    sys.argv = ["prefect", "worker", "start", *argv]
    return app()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
