"""How many Dask workers (and batch jobs) a reconstruction should ask for, from the scan.

Plain arithmetic, no Prefect and no Dask: the flow knows the scan's size (rows, angles,
columns), a per-worker throughput (measured on this cluster or configured), and a deadline:

- a live run keeps up with the detector: the deadline is the acquisition time,
  ``angles / frames_per_s`` (the volume is done when the scan is);
- a backfill run has a configured target, ``deadline_s``.

Throughput is in sinogram elements (row x angle x column) a worker back-projects per second;
FBP's cost grows with that product. A request never asks for more workers than there are
slabs (a slab is the unit of work), nor fewer than one. A request that needs more jobs than
``max_jobs`` is refused with :class:`ResourceRefused` before any job is submitted, naming what it
needs and the bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tomopipe.errors import PlanError


class ResourceRefused(PlanError):
    """The scan cannot be reconstructed within its deadline inside ``max_jobs``."""


@dataclass(frozen=True)
class ResourceRequest:
    workers: int           # workers to ask for
    jobs: int              # batch jobs that bring them (workers_per_job each)
    deadline_s: float      # the time the reconstruction has
    estimate_s: float      # expected reconstruction time on those workers
    basis: str             # "live" (keep up with the detector) or "deadline"

    def to_dict(self) -> dict:
        return asdict(self)


def request_workers(rows: int, angles: int, cols: int, *, throughput: float,
                    frames_per_s: float | None = None, deadline_s: float | None = None,
                    workers_per_job: int = 1, max_jobs: int = 1,
                    n_slabs: int | None = None) -> ResourceRequest:
    """The workers and jobs that reconstruct ``rows x angles x cols`` within the deadline.

    Exactly one of ``frames_per_s`` (live) and ``deadline_s`` (backfill) is given.
    ``throughput``: sinogram elements per second one worker reconstructs.
    """
    for name, value in (("rows", rows), ("angles", angles), ("cols", cols),
                        ("workers_per_job", workers_per_job), ("max_jobs", max_jobs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"resources: {name} must be a positive whole number, got {value!r}")
    if not throughput or throughput <= 0:
        raise PlanError(f"resources: throughput must be positive, got {throughput!r}")
    if (frames_per_s is None) == (deadline_s is None):
        raise PlanError("resources: give either frames_per_s (a live run) or deadline_s "
                        "(a backfill target), not both or neither")
    if frames_per_s is not None:
        if frames_per_s <= 0:
            raise PlanError(f"resources: frames_per_s must be positive, got {frames_per_s!r}")
        deadline, basis = angles / frames_per_s, "live"
    else:
        if deadline_s <= 0:
            raise PlanError(f"resources: deadline_s must be positive, got {deadline_s!r}")
        deadline, basis = float(deadline_s), "deadline"
    work_s = rows * angles * cols / throughput  # on one worker
    workers = max(1, math.ceil(work_s / deadline - 1e-9))
    if n_slabs is not None:
        workers = min(workers, max(1, n_slabs))  # more workers than slabs would idle
    jobs = math.ceil(workers / workers_per_job)
    if jobs > max_jobs:
        raise ResourceRefused(
            f"resources: needs {jobs} jobs ({workers} workers at {throughput:.3g} elements/s "
            f"each to reconstruct {rows}x{angles}x{cols} in {deadline:.3g} s), max_jobs is "
            f"{max_jobs}")
    workers = jobs * workers_per_job  # a job brings all its workers
    if n_slabs is not None:
        workers = min(workers, max(1, n_slabs))
    return ResourceRequest(workers=workers, jobs=jobs, deadline_s=deadline,
                           estimate_s=work_s / workers, basis=basis)


def request_for_scan(bounds: dict, *, label: str, rows: int, angles: int, cols: int,
                     n_slabs: int, frames_per_s: float | None = None) -> ResourceRequest:
    """The request of one reconstruction against a cluster's ``bounds`` (``max_jobs``,
    ``workers_per_job``, ``throughput``, ``backfill_deadline_s``; see ``infra.scaling``).

    A live run (``frames_per_s`` known) keeps up with the detector; any other run meets the
    cluster's backfill deadline. A refusal names the scan: ``<label>: resources: needs ...``.
    """
    try:
        return request_workers(
            rows, angles, cols, throughput=bounds["throughput"], frames_per_s=frames_per_s,
            deadline_s=None if frames_per_s else bounds["backfill_deadline_s"],
            workers_per_job=bounds["workers_per_job"], max_jobs=bounds["max_jobs"],
            n_slabs=n_slabs)
    except ResourceRefused as exc:
        raise ResourceRefused(f"{label}: {exc}") from None


def provenance_entry(request: ResourceRequest | None, bounds: dict | None, *,
                     frames_per_s: float | None = None, workers: int | None = None) -> dict:
    """What the volume's provenance says about resources before the run's slabs go out: the
    request (``asked``, with the rate or deadline used) on a cluster that takes requests, else
    ``{"cluster": "fixed", "workers": N}`` (local workers, or a scheduler someone else runs)."""
    if request is None or bounds is None:
        return {"cluster": "fixed", "workers": workers}
    return {"cluster": "adaptive", "basis": request.basis,
            "frames_per_s": frames_per_s, "deadline_s": round(request.deadline_s, 3),
            "throughput": bounds["throughput"],
            "max_jobs": bounds["max_jobs"], "workers_per_job": bounds["workers_per_job"],
            "asked": {"workers": request.workers, "jobs": request.jobs},
            "estimate_s": round(request.estimate_s, 3)}
