"""The reconstruction engine: centre, plan, one Dask task per slab, atomic publish.

Only descriptors travel through the scheduler (the ScanSpec, a row range, the parameters, the
output path). Each worker reads its own rows from the source files, reconstructs them, builds
their pyramid levels, writes its own shards and then its slab's done-marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.planning import ChunkPlan, plan
from tomopipe.tasks.sources.spec import ScanSpec
from tomopipe.tasks.storage import publish, space
from tomopipe.tasks.storage.location import volume_key
from tomopipe.tasks.storage.omezarr import create_volume

from tomopipe import __version__
from tomopipe.errors import InputError, TomopipeError

CENTER_BAND_ROWS = 32


@dataclass
class ReconResult:
    output: str
    key: str
    center: float
    center_method: str
    center_confidence: float | None
    backend: str
    shape: tuple[int, int, int]  # (z, y, x) of level 0
    seconds: float
    skipped: bool
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class SlabJob:
    """What one Dask task needs: small, picklable, no arrays."""

    spec: ScanSpec
    rows: tuple[int, int]  # detector rows [start, stop)
    z0: int  # first plane of the slab in the output volume
    params: ReconParams
    center: float
    backend: str
    pixel_size_um: float | None
    partial: str
    n_levels: int


def software_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"tomopipe": __version__, "python": platform.python_version()}
    for name, dist in (("numpy", "numpy"), ("zarr", "zarr"), ("dask", "dask"),
                       ("distributed", "distributed"), ("finufft", "finufft"),
                       ("astra", "astra-toolbox"), ("h5py", "h5py")):
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def resolve_rows(spec: ScanSpec, params: ReconParams) -> tuple[int, int]:
    if params.rows is None:
        return 0, spec.n_rows
    r0, r1 = (int(v) for v in params.rows)
    if not 0 <= r0 < r1 <= spec.n_rows:
        raise InputError(spec.label, f"row range {r0}:{r1} is not inside the detector's "
                         f"0:{spec.n_rows}", where="rows")
    return r0, r1


def pixel_size(spec: ScanSpec, params: ReconParams) -> float | None:
    value = params.pixel_size_um if params.pixel_size_um is not None else spec.pixel_size_um
    if value is not None and not (np.isfinite(value) and value > 0):
        raise InputError(spec.label, f"pixel size must be a positive number of micrometres, "
                         f"got {value!r}", where="pixel_size_um")
    return value


def angles_rad(spec: ScanSpec) -> np.ndarray:
    return np.deg2rad(np.asarray(spec.angles_deg, dtype=np.float64))


def find_center(spec: ScanSpec, params: ReconParams, rows: tuple[int, int]) -> dict:
    """The centre to use: the given number, or auto_center on a band of central rows."""
    if params.center != "auto":
        try:
            value = float(params.center)
        except (TypeError, ValueError):
            raise InputError(spec.label, f"centre must be 'auto' or a number of pixels, got "
                             f"{params.center!r}", where="center") from None
        if not 0 <= value < spec.n_cols:
            raise InputError(spec.label, f"centre {value} lies outside the detector row "
                             f"0:{spec.n_cols}", where="center")
        return {"value": value, "method": "given", "confidence": None, "estimates": {}}
    from tomopipe.tasks.preprocess.center import find_rotation_axis
    from tomopipe.tasks.recon.slab import preprocess_slab
    from tomopipe.tasks.recon.slab_inputs import load_slab

    mid = (rows[0] + rows[1]) // 2
    band = (max(rows[0], mid - CENTER_BAND_ROWS // 2), min(rows[1], mid + CENTER_BAND_ROWS // 2))
    inputs = load_slab(spec, band, params)
    sinos = preprocess_slab(*inputs.frames, params, **inputs.options)
    est = find_rotation_axis(sinos, angles_rad(spec))  # 360-degree offset axes included
    return {"value": float(est.value), "method": str(est.method),
            "confidence": float(est.confidence),
            "estimates": {str(k): float(v) for k, v in dict(est.estimates).items()},
            "band": list(band)}


def run_slab(job: SlabJob) -> dict:
    """Reconstruct one slab and write it; runs on a worker. Idempotent (done-marker)."""
    from tomopipe.tasks.recon.slab import reconstruct_slab
    from tomopipe.tasks.recon.slab_inputs import load_slab
    from tomopipe.tasks.storage.omezarr import write_levels
    from tomopipe.tasks.storage.pyramid import build_levels

    z_rows = (job.z0, job.z0 + job.rows[1] - job.rows[0])
    if publish.slab_done(job.partial, z_rows):
        return {"rows": list(job.rows), "skipped": True}
    t0 = time.perf_counter()
    with _READ_LOCK:  # one reader per process: HDF5 (SWMR refresh) breaks on concurrent opens
        inputs = load_slab(job.spec, job.rows, job.params)  # with halo rows, flat-drift schedule
    proj, flats, darks = inputs.frames
    options = inputs.options
    del inputs
    t1 = time.perf_counter()
    backend = _cached_backend(job.backend, job.params.algorithm,
                              _worker_threads().get("nthreads"))
    recon = reconstruct_slab(proj, flats, darks, angles_rad(job.spec), job.center, job.params,
                             backend=backend, **{**options, "pixel_size_um": job.pixel_size_um})
    del proj, flats, darks
    t2 = time.perf_counter()
    levels = build_levels(recon, job.n_levels)
    t3 = time.perf_counter()
    write_levels(Path(job.partial), job.z0, levels)
    del levels, recon
    t4 = time.perf_counter()
    info = {"read_s": t1 - t0, "recon_s": t2 - t1, "pyramid_s": t3 - t2, "write_s": t4 - t3,
            "pid": os.getpid()}
    publish.mark_slab_done(job.partial, z_rows, info)
    _release_memory()
    return {"rows": list(job.rows), "skipped": False, **info}


_BACKENDS = threading.local()
# Slab threads of one process read their HDF5 rows one at a time (h5py serialises its calls
# anyway; two handles of one SWMR file refreshed at once crash HDF5).
_READ_LOCK = threading.Lock()


def _cached_backend(name: str, algorithm: str, nthreads: int | None):
    """One backend per thread (a Dask worker has one; in-process runs one per slab thread):
    backends keep plans (e.g. NUFFT) between slabs, and a plan is not shared between threads."""
    from tomopipe.tasks.recon.backends import get_backend

    cache = _BACKENDS.__dict__.setdefault("by_key", {})
    key = (name, algorithm, nthreads)
    if key not in cache:
        cache[key] = get_backend(name, algorithm, **({"nthreads": nthreads} if nthreads else {}))
    return cache[key]


def _worker_threads() -> dict:
    """One thread per slab task, on a Dask worker or in this process.

    Parallelism comes from slabs running side by side. A multithreaded NUFFT adds into its grid
    in an order that depends on thread timing, so pinning one thread per task is what makes a
    volume bit-for-bit the same whatever the cluster, and a resumed run equal to a fresh one.
    """
    return {"nthreads": 1}


def _release_memory() -> None:
    """Give freed slab buffers back to the OS, so a worker's peak does not creep up slab after
    slab (glibc keeps freed memory of other threads' arenas otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


@contextlib.contextmanager
def _executor(client, scheduler, workers, memory_limit, threads=None):
    """Yields a Dask client, a thread pool (``threads``: slabs side by side in this process, no
    Dask) or None for serial in-process execution (workers == 0)."""
    if client is not None:
        yield client
    elif scheduler is None and workers == 0:
        yield None
    elif scheduler is None and workers is None and threads:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slab") as pool:
            yield pool
    else:
        from tomopipe.infra.cluster import dask_client

        with dask_client(scheduler=scheduler, workers=workers, memory_limit=memory_limit) as c:
            yield c


def _budget(client, memory_limit) -> tuple[int, int]:
    from tomopipe.infra.cluster import default_memory_per_worker, parse_memory, worker_resources

    limit = parse_memory(memory_limit)
    if client is None or isinstance(client, Executor):
        import psutil

        n = getattr(client, "_max_workers", 1)
        return n, limit or int(psutil.virtual_memory().available * 0.8 / n)
    n, worker_limit = worker_resources(client)
    n = max(1, n)
    return n, limit or worker_limit or default_memory_per_worker(n)


def _run_jobs(client, jobs: Sequence[SlabJob], progress, done0: int, total: int) -> list[dict]:
    results = []
    done = done0
    if client is None:
        for job in jobs:
            results.append(run_slab(job))
            done += 1
            if progress:
                progress(done, total)
        return results
    if isinstance(client, Executor):
        from concurrent.futures import as_completed as finished

        pending = [client.submit(run_slab, job) for job in jobs]
        try:
            for fut in finished(pending):
                results.append(fut.result())
                done += 1
                if progress:
                    progress(done, total)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        return results
    from distributed import KilledWorker, as_completed

    token = uuid.uuid4().hex[:8]
    futures = [client.submit(run_slab, job, key=f"tomopipe-slab-{job.rows[0]}-{token}",
                             pure=False) for job in jobs]
    try:
        for fut in as_completed(futures, loop=client.loop):  # (no default client is set)
            results.append(fut.result())
            done += 1
            if progress:
                progress(done, total)
    except KilledWorker as exc:
        client.cancel(futures)
        raise TomopipeError(
            f"a slab killed its Dask worker several times ({exc}); the worker most likely ran "
            "out of memory: raise --memory-limit or lower --slab-rows, then re-run to resume"
        ) from None
    except BaseException:
        client.cancel(futures)
        raise
    return results


def reconstruct(spec: ScanSpec, params: ReconParams, out: str | os.PathLike, *, client=None,
                scheduler: str | None = None, workers: int | None = None,
                memory_limit: int | str | None = None,
                progress: Callable[[int, int], None] | None = None,
                extra_provenance: dict | None = None, overwrite: bool = False,
                levels: int | None = None, max_slab_rows: int | None = None,
                threads: int | None = None, frames_per_s: float | None = None) -> ReconResult:
    """Reconstruct ``spec`` with ``params`` into the OME-Zarr volume ``out``.

    ``client``: a distributed Client to use; else ``scheduler`` (an address) is connected, else
    with ``threads`` slabs run on that many threads of this process (no Dask), else a local
    cluster of ``workers`` is started (``workers=0`` runs in this process, one slab at a time).
    ``memory_limit`` (bytes or '4GB') is the budget per worker for the chunk planner;
    ``levels`` (pyramid levels, level 0 included) and ``max_slab_rows`` override its choices.
    ``frames_per_s``: a live run's acquisition rate; on an adaptive SLURM cluster the run asks
    for the workers that keep up with it (else for those that meet the backfill deadline), and
    the provenance's ``resources`` say what was asked and got (``tasks.recon.resources``).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    from tomopipe.tasks.recon.slab_inputs import prepare_spec

    spec = prepare_spec(spec, params)  # flats/darks from other files, when the params name them
    key = volume_key(spec, params)  # the one place that decides keys and paths
    rows = resolve_rows(spec, params)
    shape = (rows[1] - rows[0], spec.n_cols, spec.n_cols)

    pub = publish.begin(out, key, overwrite=overwrite)
    if pub.state == "skip":
        prov = pub.existing
        center = prov.get("center", {})
        return ReconResult(
            output=str(out), key=key, center=center.get("value"),
            center_method=center.get("method"), center_confidence=center.get("confidence"),
            backend=prov.get("backend", {}).get("name"), shape=tuple(prov.get("shape", shape)),
            seconds=time.perf_counter() - t_start, skipped=True, timings={},
        )

    _import_in_background("zarr")  # needed once the centre is known; imported meanwhile
    from tomopipe.tasks.recon.backends import get_backend

    px = pixel_size(spec, params)
    from tomopipe.tasks.recon.slab import output_width, require_pixel_size

    require_pixel_size(params, px, spec.label)
    backend = get_backend(params.backend if pub.state == "fresh" else pub.job["backend"]["name"],
                          params.algorithm)
    if params.center != "auto":
        given = find_center(spec, params, rows)  # check a given centre before starting a cluster
        width = output_width(angles_rad(spec), given["value"], spec.n_cols)  # 360 offset: wider
        shape = (shape[0], width, width)
    needed = _space_needed(pub, shape, levels)
    space.check_fits(out, needed, pub.partial)  # refuse before anything starts or is written
    try:
        return _reconstruct(spec, params, out, pub, key, rows, shape, px, backend, timings,
                            t_start, client=client, scheduler=scheduler, workers=workers,
                            threads=threads, memory_limit=memory_limit, progress=progress,
                            extra_provenance=extra_provenance, levels=levels,
                            max_slab_rows=max_slab_rows, frames_per_s=frames_per_s)
    except OSError as exc:
        if space.is_disk_full(exc):
            raise space.disk_full_error(out, needed) from None
        raise


def _import_in_background(*modules: str) -> None:
    """Import ``modules`` on a thread while this one reads and finds the centre (a fresh
    ``tomopipe recon`` process would otherwise wait for Zarr's import after them)."""
    import importlib
    import sys

    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return

    def work():
        for name in missing:
            with contextlib.suppress(Exception):  # the real import reports any error
                importlib.import_module(name)

    threading.Thread(target=work, name="import-ahead", daemon=True).start()


def _space_needed(pub, shape, levels) -> int:
    """Bytes the volume still needs: all of it, or a resumed job's slabs still to do."""
    from tomopipe.tasks.recon.planning import default_levels

    if pub.state == "resume":
        chunk_plan = ChunkPlan.from_dict(pub.job["plan"])
        slabs = chunk_plan.slabs()
        todo = sum(not publish.slab_done(pub.partial, s) for s in slabs)
        return space.volume_bytes(shape, chunk_plan.n_levels) * todo // max(1, len(slabs))
    n_levels = levels if levels is not None else default_levels(shape[0], shape[1])
    return space.volume_bytes(shape, n_levels)


def _reconstruct(spec, params, out, pub, key, rows, shape, px, backend, timings, t_start, *,
                 client, scheduler, workers, threads, memory_limit, progress, extra_provenance,
                 levels, max_slab_rows, frames_per_s=None) -> ReconResult:
    backend_name, backend_device = backend.name, backend.device
    t = time.perf_counter()
    with _executor(client, scheduler, workers, memory_limit, threads) as dask:
        timings["cluster_s"] = time.perf_counter() - t
        t = time.perf_counter()
        from tomopipe.tasks.recon.planning import DEFAULT_OVERHEAD
        from tomopipe.tasks.recon.slab import output_width
        from tomopipe.tasks.recon.slab_inputs import halo_bytes

        if pub.state == "resume":
            center = pub.job["center"]
            chunk_plan = ChunkPlan.from_dict(pub.job["plan"])
            shape = (shape[0], chunk_plan.n_cols, chunk_plan.n_cols)
            resources = _resources(dask, spec, chunk_plan, frames_per_s)
        else:
            center = find_center(spec, params, rows)
            width = output_width(angles_rad(spec), center["value"], spec.n_cols)
            shape = (shape[0], width, width)  # a stitched 360-degree scan is wider
            timings["center_s"] = time.perf_counter() - t
            t = time.perf_counter()
            n_workers, budget = _budget(dask, memory_limit)
            gpu_mem = None
            if backend_device == "gpu":
                from tomopipe.infra.cluster import gpu_memory_bytes

                gpu_mem = gpu_memory_bytes()
            chunk_plan = plan(
                shape[0], spec.n_angles, width,
                raw_itemsize=np.dtype(spec.dtype).itemsize,
                bytes_per_row=int(backend.bytes_per_row(spec.n_angles, width)),
                memory_budget=budget, n_workers=n_workers, levels=levels,
                n_flats_darks=_n_frames(spec.flats) + _n_frames(spec.darks),
                gpu_memory=gpu_mem, max_slab_rows=max_slab_rows,
                overhead=DEFAULT_OVERHEAD + halo_bytes(spec, params),  # phase retrieval's rows
            )
            # asked before anything is written or submitted: a request above max_jobs refuses
            resources = _resources(dask, spec, chunk_plan, frames_per_s)
            provenance = _provenance(spec, params, key, rows, center, backend_name,
                                     backend_device, px, chunk_plan, shape, extra_provenance)
            pub.partial.mkdir(parents=True, exist_ok=True)
            create_volume(pub.partial, chunk_plan.levels, pixel_size_um=px,
                          provenance=provenance, name=Path(spec.label).name)
            publish.record_job(pub, {"plan": chunk_plan.to_dict(), "center": center,
                                     "backend": {"name": backend_name, "device": backend_device}})

        timings["plan_s"] = time.perf_counter() - t
        slabs = chunk_plan.slabs()
        todo = [s for s in slabs if not publish.slab_done(pub.partial, s)]
        # Workers read frames only: the spec's extra (the staging manifest, stream details)
        # need not travel with every task through the scheduler.
        bare = dataclasses.replace(spec, extra={})
        jobs = [SlabJob(spec=bare, rows=(rows[0] + a, rows[0] + b), z0=a, params=params,
                        center=float(center["value"]), backend=backend_name, pixel_size_um=px,
                        partial=str(pub.partial.absolute()), n_levels=chunk_plan.n_levels)
                for a, b in todo]
        if progress:
            progress(len(slabs) - len(todo), len(slabs))
        t = time.perf_counter()
        with _held(dask, resources):
            results = _run_jobs(dask, jobs, progress, len(slabs) - len(todo), len(slabs))
        timings["slabs_s"] = time.perf_counter() - t

    missing = [s for s in slabs if not publish.slab_done(pub.partial, s)]
    if missing:  # never publish a volume with a hole
        raise TomopipeError(f"{out}: slabs {missing} have no done-marker after the run; "
                            f"re-run the same command to resume")
    for name in ("read_s", "recon_s", "pyramid_s", "write_s"):
        timings[f"sum_{name}"] = float(sum(r.get(name, 0.0) for r in results))
    # which processes computed the slabs (this one, or the cluster's workers)
    timings["slab_pids"] = sorted({r["pid"] for r in results if "pid" in r})
    timings["n_slabs_computed"] = len(jobs)
    timings["resumed"] = pub.state == "resume"
    seconds = time.perf_counter() - t_start
    timings["total_s"] = seconds
    publish.finish(pub, {"timings": timings, "resources": resources,
                         "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    return ReconResult(
        output=str(out), key=key, center=float(center["value"]), center_method=center["method"],
        center_confidence=center.get("confidence"), backend=backend_name, shape=shape,
        seconds=seconds, skipped=False, timings=timings,
    )


def _resources(dask, spec, chunk_plan, frames_per_s) -> dict | None:
    """The run's request for workers, decided before any slab is submitted (None: no Dask).

    On a cluster that takes requests (adaptive SLURM, ``infra.scaling``) a request above
    ``max_jobs`` raises ``ResourceRefused`` here, naming the scan, the jobs and the bound."""
    if dask is None or isinstance(dask, Executor):
        return None
    from tomopipe.infra import scaling
    from tomopipe.tasks.recon.resources import provenance_entry, request_for_scan

    bounds = scaling.bounds(dask)
    if bounds is None:
        return provenance_entry(None, None, workers=len(dask.scheduler_info()["workers"]))
    request = request_for_scan(bounds, label=spec.label, rows=chunk_plan.n_rows,
                               angles=chunk_plan.n_angles, cols=chunk_plan.n_cols,
                               n_slabs=len(chunk_plan.slabs()), frames_per_s=frames_per_s)
    return provenance_entry(request, bounds, frames_per_s=frames_per_s)


@contextlib.contextmanager
def _held(dask, resources: dict | None):
    """Hold the requested workers while the slabs run; ``resources["got"]`` says what came."""
    if not resources or resources.get("cluster") != "adaptive":
        yield
        return
    from tomopipe.infra.scaling import held

    with held(dask, resources["asked"]["workers"]) as record:
        yield
    resources["got"] = record.get("got")


def _n_frames(sets) -> int:
    import h5py

    n = 0
    for fs in sets:
        if fs.indices is not None:
            n += len(fs.indices)
        else:
            with h5py.File(fs.path, "r") as f:
                n += int(f[fs.dataset].shape[0])
    return n


def _provenance(spec, params, key, rows, center, backend_name, backend_device, px, chunk_plan,
                shape, extra) -> dict:
    from tomopipe.tasks.recon.slab_inputs import science_provenance

    return {
        "key": key,
        "source": {"label": spec.label, "identity": spec.identity,
                   "files": sorted({fs.path for fs in spec.projections}),
                   "shape": list(spec.shape), "dtype": spec.dtype},
        "params": params.to_dict(),
        "rows": list(rows),
        "shape": list(shape),
        "center": center,
        "preprocess": science_provenance(spec, params, center["value"]),
        "backend": {"name": backend_name, "device": backend_device},
        "pixel_size_um": px,
        "units": "1/cm" if px else "1/pixel",
        "plan": {k: v for k, v in chunk_plan.to_dict().items() if k != "levels"},
        "versions": software_versions(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "extra": extra or {},
    }


def center_search(spec: ScanSpec, params: ReconParams, out_dir: str | os.PathLike,
                  candidates: Sequence[float], *, row: int | None = None) -> list[Path]:
    """Reconstruct one slice per candidate centre and write each as a TIFF named for it.

    The file ``center_<c>.tif`` holds the slice reconstructed with centre ``c``; its
    ImageDescription (JSON) says the same centre, the row and the source.
    """
    import tifffile
    from tomopipe.tasks.recon.backends import get_backend
    from tomopipe.tasks.recon.slab import preprocess_slab, reconstruct_sinograms, require_pixel_size
    from tomopipe.tasks.recon.slab_inputs import load_slab, prepare_spec

    spec = prepare_spec(spec, params)
    candidates = [float(c) for c in candidates]
    if not candidates:
        raise InputError("--center-search", "no candidate centres in the range")
    bad = [c for c in candidates if not 0 <= c < spec.n_cols]
    if bad:
        raise InputError(spec.label, f"candidate centres {bad[:3]} lie outside the detector row "
                         f"0:{spec.n_cols}", where="center")
    r0, r1 = resolve_rows(spec, params)
    row = (r0 + r1) // 2 if row is None else int(row)
    px = pixel_size(spec, params)
    require_pixel_size(params, px, spec.label)
    inputs = load_slab(spec, (row, row + 1), params)
    sinos = preprocess_slab(*inputs.frames, params, **inputs.options)
    backend = get_backend(params.backend, params.algorithm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c in candidates:
        # a 360-degree scan with the axis off-centre is stitched about each candidate
        img = reconstruct_sinograms(sinos, angles_rad(spec), c, params,
                                    backend)[0].astype(np.float32)
        if px:
            img /= np.float32(px / 1e4)
        path = out_dir / f"center_{c:.2f}.tif"
        tifffile.imwrite(path, img, metadata={
            "center": c, "row": row, "source": spec.label, "backend": backend.name,
            "algorithm": params.algorithm, "units": "1/cm" if px else "1/pixel"})
        written.append(path)
    return written
