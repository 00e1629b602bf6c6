"""Start a Prefect process worker as soon as its server answers:
``python -m tomopipe.infra.worker_server --pool POOL [--name NAME]``.

Importing Prefect takes seconds on a small machine, so ``tomopipe up`` starts this together
with the server: the import overlaps the server's own start-up, and the worker begins the
moment ``$PREFECT_API_URL/health`` answers. It is the worker of ``prefect worker start --type
process``, plus infra/wakeup.py, which makes it poll the moment a run of its pool is scheduled
(so it can poll slowly the rest of the time).

It also starts the flow-run fork server (infra/zygote.py) on ``$TOMOPIPE_HOME/zygote.sock``
unless TOMOPIPE_ZYGOTE=0: the deployments' command, ``python -m tomopipe.infra.zygote_client``,
finds it through TOMOPIPE_ZYGOTE_SOCKET, which the flow-run processes inherit from this worker.
"""

from __future__ import annotations

import argparse
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
    return subprocess.Popen([sys.executable, "-m", "tomopipe.infra.zygote", path],
                            stdin=subprocess.DEVNULL)


def serve(pool: str, name: str | None) -> None:
    import anyio
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker
    from prefect.workers.process import ProcessWorker
    from tomopipe.infra.plain_http import skip_ca_bundle_in_prefect_clients
    from tomopipe.infra.wakeup import run_worker

    skip_ca_bundle_in_prefect_clients()

    # As `prefect worker start` does: a first SIGTERM/SIGINT stops taking runs, a second kills.
    setup_signal_handlers_worker(os.getpid(), "the process worker", print)
    worker = ProcessWorker(
        work_pool_name=pool, name=name, prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()))
    anyio.run(run_worker, worker, print, os.environ.get("TOMOPIPE_HOME"))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tomopipe.infra.worker_server", description=__doc__)
    p.add_argument("--pool", required=True, help="work pool (created as a process pool if absent)")
    p.add_argument("--name", help="worker name shown in the UI (default: Prefect picks one)")
    args = p.parse_args(argv)
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        sys.exit("worker: PREFECT_API_URL is not set")
    # Flow runs are started with the command `python ...`: make that this virtualenv's Python,
    # as activating it would.
    bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    import prefect.workers.process  # noqa: F401  the slow part, done while the server starts

    start_zygote()  # after our own import, not to slow it on a small machine

    wait_for_api(api, WAIT_S)
    try:
        serve(args.pool, args.name)
    except KeyboardInterrupt:  # the signal handlers' way of stopping
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
