"""The standing Dask cluster of a home: one process that holds the scheduler and its workers.

    python -m tomopipe.infra.dask_service --home H --scheduler-port P --dashboard-port D

``tomopipe up`` starts it as the ``dask`` service when the home's ``cluster:`` kind is ``local``
(the default); every flow run and ``tomopipe recon`` then submit their slabs to it instead of
starting a cluster each. What stands up follows ``infra.cluster.local_cluster``: one
single-threaded worker process per core, or one worker per GPU (dask-cuda) when pynvml sees GPUs
and the ``gpu`` extra is installed; ``cluster.workers`` / ``memory_limit`` / ``gpus`` size it.

- Scheduler, workers and dashboard listen on 127.0.0.1 only.
- Each worker runs under a nanny, which starts a new worker when its process dies; the
  scheduler gives the dead worker's tasks (slabs) to the others, and since a slab's done-marker
  is written after its shards, a re-run slab rewrites the same whole shards.
- Workers import the engine at start (``PRELOAD``), so a run pays no import cost.
- SIGTERM or SIGINT closes the cluster (workers first) and exits 0.

Kind ``address`` starts nothing: the configured scheduler is used. Kind ``slurm`` starts this
service with a dask-jobqueue ``SLURMCluster`` scaled adaptively (``infra.cluster.adapt_options``):
the scheduler listens on ``cluster.scheduler_host`` (default 127.0.0.1, right for a single-node
SLURM) and the service is ready with no worker; jobs come as slabs wait and go after
``cluster.idle_timeout_s``. Its scheduler takes the runs' requests for workers
(``infra.scaling``): a run asks before it submits a slab and releases after its last.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from tomopipe.infra.processes import LOOPBACK

# Modules every worker imports before it takes work (the engine's per-slab path).
PRELOAD = (
    "tomopipe.tasks.recon.engine",
    "tomopipe.tasks.recon.slab",
    "tomopipe.tasks.recon.fourier",
    "tomopipe.tasks.recon.backends",
    "tomopipe.tasks.sources.hdf5io",
    "tomopipe.tasks.storage.omezarr",
    "tomopipe.tasks.storage.pyramid",
    "zarr", "finufft",  # the two our modules import lazily, and the heaviest
)
READY_FILE = "dask.json"  # written under the home once every worker has joined


def standing_cluster(cfg, *, scheduler_port: int, dashboard_port: int):
    """The cluster the service holds for a ``cluster:`` config (``infra.cluster.ClusterConfig``)."""
    from tomopipe.infra.cluster import local_cluster

    from tomopipe.errors import ConfigError

    if cfg.kind == "local":
        return local_cluster(cfg, host=LOOPBACK, scheduler_port=scheduler_port,
                             dashboard_address=f"{LOOPBACK}:{dashboard_port}",
                             preload=list(PRELOAD))
    if cfg.kind == "slurm":
        from tomopipe.infra.cluster import adapt_options, slurm_cluster

        cluster = slurm_cluster(cfg, scheduler_options={
            "host": cfg.scheduler_host or LOOPBACK, "port": scheduler_port,
            "dashboard_address": f"{LOOPBACK}:{dashboard_port}"})
        cluster.adapt(**adapt_options(cfg))
        # clients connect by address: the scheduler tells them what the jobs will bring,
        # and takes their requests for workers (infra.scaling)
        cluster.scheduler.tomopipe_expected = cluster.tomopipe_expected
        from tomopipe.infra.scaling import install

        install(cluster, cfg)
        return cluster
    raise ConfigError(f"cluster.kind: {cfg.kind!r} has no standing service (the configured "
                      "scheduler is used)")


def starts_service(settings) -> bool:
    """Whether ``tomopipe up`` starts this service for the home's ``cluster:`` (local, slurm)."""
    return standing_kind(settings) in ("local", "slurm")


def addresses(scheduler_port: int, dashboard_port: int, host: str = LOOPBACK) -> dict[str, str]:
    return {"dask_scheduler": f"tcp://{host}:{scheduler_port}",
            "dask_dashboard": f"http://{LOOPBACK}:{dashboard_port}/status"}


def standing_kind(settings) -> str:
    """What ``tomopipe up`` does for the home's ``cluster:``: "local" (start this service),
    "address" (use the configured scheduler) or "slurm" (nothing standing; runs start jobs)."""
    from tomopipe.infra.cluster import cluster_config

    return cluster_config(settings).kind


def state_keys(settings, scheduler_port: int, dashboard_port: int) -> dict[str, str]:
    """The services-state keys for the home's compute: ``dask_scheduler``, ``dask_dashboard``."""
    from tomopipe.infra.cluster import cluster_config

    cfg = cluster_config(settings)
    if cfg.kind == "local":
        return addresses(scheduler_port, dashboard_port)
    if cfg.kind == "address":
        return {"dask_scheduler": cfg.address}
    # slurm: adaptive, so no worker is healthy too
    return {**addresses(scheduler_port, dashboard_port, cfg.scheduler_host or LOOPBACK),
            "dask_adaptive": "slurm"}


def argv(home: Path, scheduler_port: int, dashboard_port: int) -> list[str]:
    return [sys.executable, "-m", "tomopipe.infra.dask_service", "--home", str(home),
            "--scheduler-port", str(scheduler_port), "--dashboard-port", str(dashboard_port)]


def ready(home: Path) -> bool:
    """True once the service has written its ready file (every worker joined)."""
    return (Path(home) / READY_FILE).exists()


def healthy(state: dict) -> bool:
    """The scheduler answers and has at least one worker (any number when adaptive)."""
    dashboard = state.get("dask_dashboard")
    if not dashboard:
        return False
    joined = workers_joined(dashboard)
    if state.get("dask_adaptive"):
        return joined is not None
    return (joined or 0) >= 1


def workers_joined(dashboard: str) -> int | None:
    """Workers connected to the scheduler, from its HTTP endpoint; None when it does not answer."""
    import httpx

    base = dashboard.rsplit("/status", 1)[0]
    try:
        resp = httpx.get(f"{base}/json/counts.json", timeout=2.0)
    except httpx.HTTPError:
        return None
    if not resp.is_success:
        return None
    try:
        return int(resp.json().get("workers", 0))
    except (ValueError, TypeError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tomopipe.infra.dask_service",
        description="Hold a home's standing Dask cluster (scheduler and nanny-managed workers) "
                    "until SIGTERM.")
    ap.add_argument("--home", required=True, type=Path, help="the tomopipe home")
    ap.add_argument("--scheduler-port", required=True, type=int)
    ap.add_argument("--dashboard-port", required=True, type=int)
    args = ap.parse_args(argv)

    from tomopipe.infra.cluster import cluster_config

    from tomopipe.config import load_settings

    cfg = cluster_config(load_settings(args.home))
    t0 = time.monotonic()
    cluster = standing_cluster(cfg, scheduler_port=args.scheduler_port,
                               dashboard_port=args.dashboard_port)
    n = len(cluster.workers) if cfg.kind == "local" else 0  # adaptive: none until work comes
    if n:
        cluster.wait_for_workers(n, timeout=300)
    info = {**addresses(args.scheduler_port, args.dashboard_port,
                        cfg.scheduler_host or LOOPBACK), "workers": n,
            "kind": type(cluster).__name__, "seconds": round(time.monotonic() - t0, 2)}
    ready = args.home / READY_FILE
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(ready)
    print(f"dask service: {info}", flush=True)

    done = {"flag": False}

    def _stop(signum, frame):
        done["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not done["flag"]:
            time.sleep(0.2)
    finally:
        ready.unlink(missing_ok=True)
        cluster.close(timeout=10)
        print("dask service: closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
