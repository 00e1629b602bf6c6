"""Start a Prefect worker as soon as its server answers: ``python -m infra.worker_server ARGS``.

ARGS are those of ``prefect worker start``. Importing Prefect takes seconds on a small machine,
so ``tomopipe up`` starts this together with the server: the import overlaps the server's own
start-up, and the worker begins the moment ``$PREFECT_API_URL/health`` answers.
"""

from __future__ import annotations

import os
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


def main(argv: list[str]) -> int:
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        sys.exit("worker: PREFECT_API_URL is not set")
    from prefect.cli import app  # the slow part, done while the server starts

    wait_for_api(api, WAIT_S)
    sys.argv = ["prefect", "worker", "start", *argv]
    return app()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
