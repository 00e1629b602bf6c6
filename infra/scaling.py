"""Resource requests on an adaptive SLURM cluster: the scheduler's side and the client's.

A reconstruction asks the cluster for the workers its scan needs (``tasks.recon.resources``)
before it submits a slab, and gives them back when its slabs are done. The scheduler may be in
this process (``dask_client`` with kind slurm) or in the home's ``dask`` service (kind slurm
under ``tomopipe up``); either way the client reaches it the same way, by functions run on the
scheduler (``Client.run_on_scheduler``), so nothing in the service needs its own protocol.

Scheduler side (:class:`Requests`, installed by :func:`install` on every SLURM cluster we start):

- ``bounds()``: what a request is sized against: ``max_jobs``, workers per job, the per-worker
  throughput and the backfill deadline of the cluster's config.
- ``ask(token, workers)``: the adaptive minimum becomes ``min_jobs`` workers plus every open
  request (within ``max_jobs``), so the jobs are submitted now, not one adaptive step at a time,
  and stay while the run holds them; from then on the workers that join are counted for it.
- ``release(token)``: the request is closed and what it got is returned: the most workers the
  scheduler had at once while it was open, and the SLURM jobs those workers came from. Idle
  jobs then go after ``idle_timeout_s`` as before.

A cluster without ``Requests`` (local workers, a scheduler someone else runs) takes no request:
:func:`bounds` answers None and the run records a ``fixed`` cluster.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

ATTR = "tomopipe_requests"  # the Requests object on the Scheduler


class Requests:
    """Open requests of one adaptive SLURM cluster (lives beside its scheduler)."""

    def __init__(self, cluster, cfg):
        self.cluster = cluster
        self.cfg = cfg
        self.open: dict[str, dict] = {}
        self.lock = threading.Lock()

    # -- what a request is sized against
    def bounds(self) -> dict:
        cfg = self.cfg
        return {"max_jobs": cfg.max_jobs, "min_jobs": cfg.min_jobs,
                "workers_per_job": cfg.workers_per_job, "throughput": cfg.worker_throughput,
                "backfill_deadline_s": cfg.backfill_deadline_s}

    # -- open and close
    def ask(self, token: str, workers: int) -> dict:
        with self.lock:
            self.open[token] = {"asked": int(workers), "peak": 0, "workers": set()}
            self._observe()
            minimum = self._minimum()
        return {"adaptive_minimum": minimum}

    def release(self, token: str) -> dict:
        with self.lock:
            self._observe()
            held = self.open.pop(token, None)
            self._minimum()
        if held is None:
            return {"workers": 0, "jobs": 0, "job_ids": []}
        jobs = sorted({self._job(name) for name in held["workers"]} - {None})
        ids = sorted({str(self.cluster.workers[j].job_id) for j in jobs
                      if j in self.cluster.workers and self.cluster.workers[j].job_id})
        return {"workers": held["peak"], "jobs": len(jobs), "job_ids": ids}

    def _minimum(self) -> int:
        """Set the adaptive minimum from the open requests; returns it (in workers)."""
        per_job = self.cfg.workers_per_job
        wanted = self.cfg.min_jobs * per_job + sum(r["asked"] for r in self.open.values())
        minimum = min(wanted, self.cfg.max_jobs * per_job)
        adaptive = getattr(self.cluster, "_adaptive", None)
        if adaptive is not None:
            adaptive.minimum = minimum
        return minimum

    # -- what the open requests got
    def _observe(self) -> None:
        names = {getattr(ws, "name", None) for ws in self.scheduler.workers.values()}
        for req in self.open.values():
            req["workers"] |= names
            req["peak"] = max(req["peak"], len(names))

    def worker_joined(self) -> None:
        with self.lock:
            self._observe()

    def _job(self, worker_name) -> str | None:
        """The job (``cluster.workers`` key) a worker came from: its name, or its name less the
        ``-<i>`` of one of several workers per job."""
        name = str(worker_name)
        if name in self.cluster.workers:
            return name
        head = name.rsplit("-", 1)[0]
        return head if head in self.cluster.workers else None

    @property
    def scheduler(self):
        return self.cluster.scheduler


def install(cluster, cfg) -> Requests:
    """Attach a :class:`Requests` to ``cluster``'s scheduler (in this process), with a plugin
    that counts workers as they join."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    requests = Requests(cluster, cfg)

    class _Joined(SchedulerPlugin):
        name = "tomopipe-requests"

        def add_worker(self, scheduler=None, worker=None):
            requests.worker_joined()

    setattr(cluster.scheduler, ATTR, requests)
    cluster.scheduler.add_plugin(_Joined(), name=_Joined.name)
    return requests


# -- run on the scheduler (by Client.run_on_scheduler); None where no Requests is installed
def _bounds(dask_scheduler=None):
    requests = getattr(dask_scheduler, ATTR, None)
    return requests.bounds() if requests else None


def _ask(token, workers, dask_scheduler=None):
    return getattr(dask_scheduler, ATTR).ask(token, workers)


def _release(token, dask_scheduler=None):
    requests = getattr(dask_scheduler, ATTR, None)
    return requests.release(token) if requests else {}


# -- the client's side
def bounds(client) -> dict | None:
    """What the connected cluster sizes requests against, or None: it takes no request."""
    try:
        return client.run_on_scheduler(_bounds)
    except Exception:  # a scheduler without tomopipe (kind address), or an older service
        return None


@contextlib.contextmanager
def held(client, workers: int) -> Iterator[dict]:
    """Ask the cluster for ``workers`` for the duration of the block; the yielded dict gets
    ``got`` (workers, jobs, job_ids) when the block ends, whether it ended well or not."""
    token = uuid.uuid4().hex
    record: dict = {}
    client.run_on_scheduler(_ask, token, workers)
    try:
        yield record
    finally:
        try:
            record["got"] = client.run_on_scheduler(_release, token)
        except Exception as exc:  # the scheduler went away: the run fails on its own account
            record["got"] = {"error": f"{type(exc).__name__}: {exc}"}
