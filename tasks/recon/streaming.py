"""Streaming reconstruction on Dask: the volume is accumulated while the scan runs.

Each Dask worker runs one long task for a block of detector rows (``run_block``). It follows the
detector's HDF5 file (SWMR), reads its own rows of the frames that landed since its last batch
(gathered for ``batch_every_s``, as each batch costs one NUFFT grid transform), normalises them
with the flats and darks taken before the projections, and adds their filtered back-projection
to its running sum (``incremental.FBPAccumulator``). Every ``view_every_s`` it writes its rows
of the live views and a progress file (``storage.live_views``). When it falls behind it takes
all landed frames at once (up to ``max_batch``, the memory plan's batch): never drops one. When
the flow says the scan stopped (``live_views.request_stop`` with the number of frames), it adds
the last frames, builds its pyramid levels and writes its shards of the volume with a
done-marker, as a slab of the one-shot engine does. The flow then only publishes.

The flow's side is ``StreamRun``: it decides whether the run can stream (``stream_refusal``,
``plan_stream``: the accumulators must fit the workers' memory, one block per worker), creates
the volume and the live group, submits the blocks, summarises their progress (``poll``) and,
at the stop, waits for the blocks and publishes (``finish``).

Only descriptors travel through the scheduler: file paths, row ranges, parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec
from tomopipe.tasks.storage import live_views, publish

from tomopipe.config import DEFAULT_ANGLE_TOLERANCE_DEG
from tomopipe.errors import PlanError, TomopipeError

UM_PER_CM = 1e4
DEFAULT_MAX_BATCH = 64  # frames per accumulation step: what the memory plan sizes
# the early centre reads this many times the fewest frames that cover the half-turn: more
# angles than the bare cover for the centre's search, a fraction of a scan's read
CENTER_COVER_FACTOR = 2
# A centre found this close to the provisional one the blocks started with is kept (no start
# again from the first frame): about the finder's own precision (288 golden frames: within
# 0.04 px of the whole scan's centre), and a blur no one can see.
CENTER_KEEP_PX = 0.05
# A streamed volume whose centre is farther than this from the one all frames give is flagged
# (logged, and in the run's figures): about where the blur of a centre error starts to show.
CENTER_WARN_PX = 0.25


class StreamDiscarded(TomopipeError):
    """The stream is stopped and its partial volume and views removed: the run is
    reconstructed at the stop instead (the message says why)."""


class AnglesDiffer(StreamDiscarded):
    """The angles the run recorded are not the ones it planned: the streamed volume is
    discarded (the run is reconstructed from the recorded angles instead)."""


@dataclass(frozen=True)
class BlockJob:
    """What one worker's long task needs: small, picklable, no arrays."""

    label: str
    projections: FrameSet  # the growing file: frame i of the run is dataset frame i
    flats: tuple[FrameSet, ...]
    darks: tuple[FrameSet, ...]
    angles_deg: tuple[float, ...]  # planned, acquisition order
    rows: tuple[int, int]  # detector rows
    z0: int  # first plane in the volume
    n_cols: int
    center: float
    params: ReconParams
    pixel_size_um: float | None
    partial: str  # the volume being written (publish protocol)
    n_levels: int
    live: str  # the live group
    positions: dict  # {z, y, x} of the live views, volume coordinates
    max_batch: int = DEFAULT_MAX_BATCH
    poll_s: float = 0.05
    batch_every_s: float = 0.2  # gather frames this long (or max_batch) before a batch
    view_every_s: float = 0.1  # a view costs ~8 ms (one chunk a view), a batch 50+ ms
    idle_timeout_s: float = 600.0


def stream_refusal(params: ReconParams, spec: ScanSpec, planned_deg, center) -> str | None:
    """Why this run cannot be streamed (it is then reconstructed at the stop), or None."""
    if params.algorithm != "fbp":
        return f"streaming does FBP only; {params.algorithm} is reconstructed at the stop"
    if params.backend not in ("auto", "fourier"):
        return (f"streaming runs the CPU Fourier back-projection; backend {params.backend} "
                "is reconstructed at the stop")
    if params.rings != "none":
        return "ring removal filters whole sinograms: reconstructed at the stop"
    if params.phase != "none":
        return "phase retrieval needs rows beyond each block: reconstructed at the stop"
    if params.flats or params.darks:
        return "flats or darks from other files: reconstructed at the stop"
    if planned_deg is None:
        return ("the run declares no angles before the scan (tomo.angle_plan or "
                "tomo.planned_angles_deg), so no frame can be weighted before the stop")
    sets = spec.projections
    if len(sets) != 1 or (sets[0].indices is not None
                          and tuple(sets[0].indices) != tuple(range(len(sets[0].indices)))):
        return "the projections are not one file filled from its first frame"
    if center is not None:
        from tomopipe.tasks.preprocess.stitch360 import is_offset_axis

        if is_offset_axis(np.deg2rad(planned_deg), float(center), spec.n_cols):
            return "a 360-degree scan with its axis off-centre is stitched at the stop"
    return None


def cluster_refusal(request_bounds: dict | None) -> str | None:
    """Why the connected cluster cannot take a stream, or None. ``request_bounds``: what an
    adaptive cluster sizes requests against (``infra.scaling.bounds``), None for fixed workers.

    A stream's blocks hold one worker each for the whole scan, sized to the workers present; an
    adaptive (SLURM) cluster may have none while idle and grows only on a run's request, which
    the reconstruction at the stop makes from the scan's size and acquisition rate."""
    if request_bounds is None:
        return None
    return ("the cluster grows on request (adaptive SLURM jobs): the run asks for the workers "
            "its scan needs and is reconstructed at the stop")


@dataclass
class StreamPlan:
    """One block of rows per worker, and the chunk plan of the volume they write."""

    chunk_plan: object  # planning.ChunkPlan
    blocks: list[tuple[int, int]]  # volume rows of each block
    max_batch: int


def plan_stream(n_rows: int, n_cols: int, *, n_workers: int, memory_budget: int,
                raw_itemsize: int = 2, n_flats_darks: int = 0,
                max_batch: int = DEFAULT_MAX_BATCH) -> StreamPlan:
    """Blocks for ``n_workers`` workers whose accumulators (and one batch of frames) fit
    ``memory_budget`` each. Raises PlanError (the reason to reconstruct at the stop) when the
    rows need more blocks than there are workers."""
    from tomopipe.tasks.recon.fourier import FourierBackend
    from tomopipe.tasks.recon.incremental import FBPAccumulator
    from tomopipe.tasks.recon.planning import _fmt, plan

    per_row = (FourierBackend().bytes_per_row(max_batch, n_cols)
               + FBPAccumulator.bytes_needed(1, n_cols))
    try:
        chunk_plan = plan(n_rows, max_batch, n_cols, raw_itemsize=raw_itemsize,
                          bytes_per_row=per_row, memory_budget=memory_budget,
                          n_workers=n_workers, n_flats_darks=n_flats_darks,
                          max_slab_rows=math.ceil(n_rows / max(1, n_workers)))
    except PlanError as exc:
        raise PlanError(f"streaming does not fit: {exc}") from None
    if chunk_plan.n_slabs > n_workers:
        need = chunk_plan.n_slabs * chunk_plan.est_bytes_per_slab
        raise PlanError(
            f"streaming does not fit: the {n_rows} running slices of {n_cols} x {n_cols} need "
            f"{chunk_plan.n_slabs} blocks of {chunk_plan.slab_rows} rows ({_fmt(need)} in all) "
            f"but there are {n_workers} workers of {_fmt(memory_budget)}")
    return StreamPlan(chunk_plan, chunk_plan.slabs(), max_batch)


# ------------------------------------------------------------------------ the worker's side


def _landed(f, job: BlockJob) -> int:
    from tomopipe.tasks.sources.hdf5io import get_dataset

    return int(get_dataset(f, job.projections.dataset, source=job.label).shape[0])


def _fields(job: BlockJob) -> tuple[np.ndarray, np.ndarray]:
    from tomopipe.tasks.sources.hdf5io import read_frames

    flats = read_frames(job.flats, job.rows, label=job.label)
    if job.darks:
        darks = read_frames(job.darks, job.rows, label=job.label)
    else:
        darks = np.zeros((1, job.rows[1] - job.rows[0], job.n_cols), flats.dtype)
    return flats, darks


def run_block(job: BlockJob) -> dict:
    """Follow the scan for the rows of ``job`` until the flow's stop, then write them.

    Runs on a worker for the whole scan. Returns its figures (frames, batches, seconds).
    """
    from tomopipe.tasks.recon.incremental import FBPAccumulator, frame_weights
    from tomopipe.tasks.recon.slab import preprocess_slab
    from tomopipe.tasks.sources.hdf5io import get_dataset, open_h5

    rows = job.rows
    z_rows = (job.z0, job.z0 + rows[1] - rows[0])
    n_expected = len(job.angles_deg)
    angles = np.deg2rad(np.asarray(job.angles_deg, dtype=np.float64))

    def accumulator(center: float) -> FBPAccumulator:
        return FBPAccumulator(rows[1] - rows[0], job.n_cols, center,
                              frame_weights(n_expected, angles),
                              filter_name=job.params.filter_name)

    acc = accumulator(job.center)
    scale = np.float32(UM_PER_CM / job.pixel_size_um) if job.pixel_size_um else np.float32(1)
    flats = darks = None
    history: list[list[float]] = []
    stats = {"batches": 0, "largest_batch": 0, "read_s": 0.0, "recon_s": 0.0, "views_s": 0.0,
             "recentred": 0}
    landed, last_view, last_new, last_batch = 0, 0.0, time.monotonic(), 0.0
    t_start = time.monotonic()

    def write_views(state: str) -> None:
        t = time.perf_counter()
        block = acc.partial_view() * scale
        live_views.write_block_views(job.live, z_rows, job.positions, block)
        now = time.time()
        history.append([now, acc.frames_in, acc.center])  # [time, frames in, centre]
        live_views.write_block_status(job.live, z_rows, {
            "frames_in": acc.frames_in, "frames_landed": landed, "fraction": acc.fraction,
            "updated": now, "state": state, "history": history, "pid": os.getpid(),
            "center": acc.center, **stats})
        stats["views_s"] += time.perf_counter() - t

    while True:
        control = live_views.read_control(job.live)
        if not Path(job.live).exists():
            control = {"abort": "the live views were removed"}
        if control.get("abort"):
            with contextlib.suppress(OSError):
                live_views.write_block_status(job.live, z_rows, {"state": "aborted",
                                                                 "frames_in": acc.frames_in})
            return {"rows": list(rows), "aborted": control["abort"]}
        wanted = control.get("center")
        if wanted is not None and float(wanted) != acc.center:
            acc = accumulator(float(wanted))  # the centre is found: again from the first frame
            stats["recentred"] += 1
        stop_frames = control.get("stop_frames")
        limit = n_expected if stop_frames is None else min(int(stop_frames), n_expected)
        t0 = time.perf_counter()
        todo = None
        with open_h5(job.projections.path) as f:
            landed = _landed(f, job)
            a = acc.frames_in
            b = min(landed, limit, a + job.max_batch)
            # each batch costs a fixed NUFFT grid transform: gather a few frames first, unless
            # the batch is full or the scan has stopped
            early = (b - a < job.max_batch and stop_frames is None
                     and time.monotonic() - last_batch < job.batch_every_s)
            if b > a and not early:
                if flats is None:
                    flats, darks = _fields(job)  # taken before the first projection
                ds = get_dataset(f, job.projections.dataset, source=job.label)
                todo = (a, b, np.asarray(ds[a:b, rows[0]:rows[1], :]))
        if todo is not None:
            a, b, frames = todo
            t1 = time.perf_counter()
            sinos = preprocess_slab(frames, flats, darks, job.params)
            acc.add(sinos, angles[a:b], np.arange(a, b))
            stats["read_s"] += t1 - t0
            stats["recon_s"] += time.perf_counter() - t1
            stats["batches"] += 1
            stats["largest_batch"] = max(stats["largest_batch"], b - a)
            last_new = last_batch = time.monotonic()
            done = stop_frames is not None and acc.frames_in >= limit
            if done or time.monotonic() - last_view >= job.view_every_s:
                write_views("streaming")
                last_view = time.monotonic()
            continue  # more may be waiting: no sleep while behind
        if stop_frames is not None and acc.frames_in >= limit:
            break
        if time.monotonic() - last_new > job.idle_timeout_s:
            raise TomopipeError(f"{job.label}: no new frame for {job.idle_timeout_s:.0f} s "
                                f"(rows {rows[0]}:{rows[1]}, {acc.frames_in} in)")
        time.sleep(job.poll_s)

    write_views("writing")
    t = time.perf_counter()
    if acc.frames_in < n_expected:  # the scan ended early: the reconstruction of what came
        volume = acc.partial_view() * scale
    else:
        volume = acc.sum * scale
    from tomopipe.tasks.storage.omezarr import write_levels
    from tomopipe.tasks.storage.pyramid import build_levels

    write_levels(Path(job.partial), job.z0, build_levels(volume, job.n_levels))
    stats["write_s"] = time.perf_counter() - t
    publish.mark_slab_done(job.partial, z_rows, {"frames": acc.frames_in, **stats})
    live_views.write_block_status(job.live, z_rows, {
        "frames_in": acc.frames_in, "frames_landed": landed, "fraction": acc.fraction,
        "updated": time.time(), "state": "written", "history": history, "center": acc.center,
        **stats})
    return {"rows": list(rows), "frames": acc.frames_in, "pid": os.getpid(),
            "center": acc.center, "seconds": time.monotonic() - t_start, **stats}


# -------------------------------------------------------------------------- the flow's side


def summarize(statuses: list[dict], n_blocks: int, positions: dict,
              z_rows: list[tuple[int, int]]) -> tuple[dict, dict]:
    """(summary, fraction per view) from the blocks' progress files."""
    by_rows = {tuple(s["rows"]): s for s in statuses if "rows" in s}
    present = [by_rows.get(tuple(r), {}) for r in z_rows]
    frames_in = min((s.get("frames_in", 0) for s in present), default=0)
    landed = max((s.get("frames_landed", 0) for s in present), default=0)
    fractions = [float(s.get("fraction", 0.0)) for s in present]
    fraction = min(fractions) if len(present) == n_blocks else 0.0
    xy = next((f for r, f in zip(z_rows, fractions, strict=True)
               if r[0] <= positions["z"] < r[1]), 0.0)
    summary = {"fraction": fraction, "frames_in": frames_in, "frames_landed": landed,
               "lag": max(0, landed - frames_in), "updated": time.time()}
    return summary, {"xy": xy, "xz": fraction, "yz": fraction}


@dataclass
class StreamRun:
    """A streaming reconstruction in progress, seen from the flow."""

    spec: ScanSpec
    params: ReconParams
    out: Path
    key: str
    live: Path
    positions: dict
    stream_plan: StreamPlan
    center: dict
    pub: object  # publish.Publication
    planned: tuple = ()  # the planned angles, degrees
    futures: list = field(default_factory=list)
    blocks: list[tuple[int, int]] = field(default_factory=list)
    last_xy: np.ndarray | None = None
    started: float = field(default_factory=time.time)
    history: list = field(default_factory=list)
    stopped_at: float | None = None  # perf_counter of the stop request
    found: dict | None = None  # the centre found, as found (``recenter``), when there is one

    @classmethod
    def begin(cls, client, spec: ScanSpec, params: ReconParams, out: str | Path, *,
              planned_deg, center: dict, stream_plan: StreamPlan,
              positions: dict | None = None, extra_provenance: dict | None = None,
              block_options: dict | None = None) -> StreamRun:
        """Create the volume and the live group, and start one block task per worker."""
        from tomopipe.tasks.recon import engine
        from tomopipe.tasks.storage.location import volume_key
        from tomopipe.tasks.storage.omezarr import create_volume

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        key = volume_key(spec, params)
        pub = publish.begin(out, key)
        if pub.state != "fresh":
            if pub.state == "skip":
                raise TomopipeError(f"{out}: already published with this key")
            import shutil

            shutil.rmtree(pub.partial)  # a streamed partial cannot be resumed: start over
            pub = publish.begin(out, key)
        chunk_plan = stream_plan.chunk_plan
        shape = (chunk_plan.n_rows, spec.n_cols, spec.n_cols)
        px = engine.pixel_size(spec, params)
        rows = engine.resolve_rows(spec, params)
        planned = tuple(float(a) for a in planned_deg)
        final_spec = dataclasses.replace(spec, angles_deg=planned)
        provenance = engine._provenance(final_spec, params, key, rows, center, "fourier", "cpu",
                                        px, chunk_plan, shape,
                                        {**(extra_provenance or {}), "streamed": True})
        pub.partial.mkdir(parents=True, exist_ok=True)
        create_volume(pub.partial, chunk_plan.levels, pixel_size_um=px, provenance=provenance,
                      name=Path(spec.label).name)
        publish.record_job(pub, {"plan": chunk_plan.to_dict(), "center": center,
                                 "backend": {"name": "fourier", "device": "cpu"},
                                 "streamed": True})
        live = live_views.live_path(out)
        positions = live_views.view_positions(shape, positions)
        live_views.create_live_group(live, shape, positions, pixel_size_um=px, run=spec.label,
                                     block_rows=chunk_plan.slab_rows)
        run = cls(spec, params, out, key, live, positions, stream_plan, center, pub, planned)
        workers = sorted(client.scheduler_info().get("workers", {}))
        for i, (a, b) in enumerate(stream_plan.blocks):
            job = BlockJob(label=spec.label, projections=spec.projections[0],
                           flats=spec.flats, darks=spec.darks, angles_deg=planned,
                           rows=(rows[0] + a, rows[0] + b), z0=a, n_cols=spec.n_cols,
                           center=float(center["value"]), params=params, pixel_size_um=px,
                           partial=str(pub.partial.absolute()), n_levels=chunk_plan.n_levels,
                           live=str(live.absolute()), positions=positions,
                           max_batch=stream_plan.max_batch, **(block_options or {}))
            # a block per worker; should its worker die, the block runs again from the first
            # frame elsewhere (a strict placement would leave it waiting for a worker that is gone)
            where = {"workers": [workers[i % len(workers)]], "allow_other_workers": True} \
                if workers else {}
            run.futures.append(client.submit(run_block, job, pure=False,
                                             key=f"tomopipe-stream-{a}-{key[:8]}", **where))
            run.blocks.append((a, b))
        return run

    def poll(self) -> dict:
        """The live figures now; writes them into the live group's attributes."""
        from tomopipe.tasks.recon.incremental import correlation

        for fut in self.futures:  # a block that died is a fault now, not at the stop
            if fut.status == "error":
                fut.result()
        summary, per_view = summarize(live_views.read_block_status(self.live), len(self.blocks),
                                      self.positions, self.blocks)
        xy = live_views.read_views(self.live)["xy"] if summary["frames_in"] else None
        if xy is not None and self.last_xy is not None:
            summary["correlation"] = correlation(xy, self.last_xy)
        if xy is not None:
            self.last_xy = xy
        summary["state"] = "streaming"
        summary["center"] = self.center["value"]
        summary["center_provisional"] = bool(self.center.get("provisional"))
        self.history.append([summary["updated"], summary["frames_in"], summary["lag"]])
        return live_views.update_live_attrs(self.live, summary, per_view)

    def recenter(self, center: dict) -> None:
        """Reconstruct with ``center`` (the one found) from now on: the blocks start their
        accumulators again from the first frame, and the volume is this centre's. One within
        ``CENTER_KEEP_PX`` of the provisional centre confirms it instead: the blocks go on,
        and the volume (and its provenance) is the provisional centre's. A centre that makes
        the run unfit to stream (a 360-degree scan with its axis off-centre, which is stitched)
        stops the blocks, removes the partial, and raises StreamDiscarded."""
        was, self.found = self.center, center
        reason = stream_refusal(self.params, self.spec, self.planned, center["value"])
        if reason:  # a 360-degree scan whose axis turns out off-centre: stitched at the stop
            self.abort(reason)
            raise StreamDiscarded(f"{self.spec.label}: {reason} (centre {center['value']:.2f} "
                                  f"of {self.spec.n_cols} columns)")
        if was.get("provisional") and abs(center["value"] - was["value"]) <= CENTER_KEEP_PX:
            self.center = {**center, "value": was["value"], "method": (
                f"{was['method']}, confirmed: {center['method']} found {center['value']:.3f} "
                f"(within {CENTER_KEEP_PX} px)"), "provisional": False}
            return
        self.center = center
        live_views.request_center(self.live, center["value"])

    def stop(self, n_frames: int) -> None:
        """The scan stopped with ``n_frames`` projections: the blocks add the last ones and
        write (``finish`` waits for them)."""
        if self.stopped_at is None:
            self.stopped_at = time.perf_counter()
            live_views.request_stop(self.live, int(n_frames))

    def finish(self, n_frames: int, recorded_deg=None, timeout_s: float = 600.0,
               angle_tolerance_deg: float = DEFAULT_ANGLE_TOLERANCE_DEG) -> dict:
        """Wait for the blocks to add the last frames and write (``stop`` tells them, if not
        yet told), then publish. ``recorded_deg``: the angles the run's events recorded,
        checked against the planned ones (more than ``angle_tolerance_deg`` apart discards the
        streamed volume: AnglesDiffer; the largest difference goes in the provenance)."""
        self.stop(n_frames)
        t0 = self.stopped_at
        planned = np.asarray(self.planned, dtype=np.float64)
        worst = None
        if recorded_deg is not None:
            rec = np.asarray(recorded_deg, dtype=np.float64)
            n = min(rec.size, planned.size)
            worst = float(np.max(np.abs(rec[:n] - planned[:n]), initial=0))
            if rec.size > planned.size or worst > angle_tolerance_deg:
                self.abort("recorded angles differ from the planned ones")
                raise AnglesDiffer(
                    f"{self.spec.label}: the recorded angles differ from the planned ones "
                    f"({rec.size} recorded, {planned.size} planned, up to {worst:.3g} degrees "
                    f"apart; tolerance {angle_tolerance_deg}, config.yaml "
                    "stream.angle_tolerance_deg)")
        deadline = time.monotonic() + timeout_s
        results = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in self.futures]
        missing = [s for s in self.blocks if not publish.slab_done(self.pub.partial, s)]
        if missing:
            raise TomopipeError(f"{self.out}: blocks {missing} wrote no done-marker")
        other = [(r["rows"], r.get("center")) for r in results
                 if r.get("center") != self.center["value"]]
        if self.center.get("provisional") or other:
            raise TomopipeError(f"{self.out}: written with centres {other or 'provisional'}, not "
                                f"the one found ({self.center['value']})")
        self.poll()  # the blocks' last figures (all frames in) into the live group
        t1 = time.perf_counter()
        timings = {"last_batch_s": t1 - t0, "streamed": True, "n_frames": int(n_frames),
                   "largest_batch": max(r.get("largest_batch", 0) for r in results),
                   "batches": sum(r.get("batches", 0) for r in results),
                   "slab_pids": sorted({r["pid"] for r in results if "pid" in r}),
                   "n_slabs_computed": len(results), "live_history": self.history[-2000:],
                   "recentred": max(r.get("recentred", 0) for r in results)}
        partial_fraction = int(n_frames) < planned.size
        publish.finish(self.pub, {"timings": timings, "finished": _dt.datetime.now(
            _dt.UTC).isoformat(timespec="seconds"), "frames": int(n_frames),
            "partial_scan": partial_fraction, "center": self.center,
            "recorded_angles": {"max_difference_deg": worst,
                                "tolerance_deg": angle_tolerance_deg}})
        summary = live_views.update_live_attrs(self.live, {"state": "published",
                                                           "updated": time.time(),
                                                           "volume": str(self.out)})
        timings["publish_s"] = time.perf_counter() - t1
        shape = (self.stream_plan.chunk_plan.n_rows, self.spec.n_cols, self.spec.n_cols)
        return {"output": str(self.out), "key": self.key, "center": self.center["value"],
                "center_method": self.center["method"],
                "center_confidence": self.center.get("confidence"), "backend": "fourier",
                "shape": list(shape), "seconds": time.time() - self.started, "skipped": False,
                "timings": timings, "live": summary}

    def abort(self, reason: str) -> None:
        """Stop the blocks without writing (the run failed, or the volume is not wanted)."""
        import shutil

        live_views.request_stop(self.live, None, abort=reason)
        deadline = time.monotonic() + 30  # the blocks see the request within a poll
        for fut in self.futures:
            with contextlib.suppress(Exception):
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
        for fut in self.futures:
            if not fut.done():
                fut.cancel()
        shutil.rmtree(self.pub.partial, ignore_errors=True)
        shutil.rmtree(self.live, ignore_errors=True)  # no volume, no views of one
        with contextlib.suppress(OSError):
            self.out.parent.rmdir()  # the run's folder, when nothing else is in it


def frames_on_disk(frames: FrameSet) -> int:
    """How many frames the (growing) dataset holds now."""
    from tomopipe.tasks.sources.hdf5io import get_dataset, open_h5

    with open_h5(frames.path) as f:
        return int(get_dataset(f, frames.dataset, source=frames.path).shape[0])


def covers_half_turn(angles_deg, max_gap_deg: float = 2.0) -> bool:
    """Do these angles (folded into [0, 180)) leave no gap wider than ``max_gap_deg``?"""
    angles = np.mod(np.asarray(angles_deg, dtype=np.float64), 180.0)
    if angles.size < 16:
        return False
    s = np.sort(angles)
    return float(np.diff(np.concatenate([s, [s[0] + 180.0]])).max()) <= max_gap_deg


def frames_to_cover(angles_deg) -> int | None:
    """The fewest first angles that cover the half-turn (``covers_half_turn``), or None.
    Covering only grows with more angles, so a bisection finds it."""
    n = len(angles_deg)
    if not covers_half_turn(angles_deg[:n]):
        return None
    lo, hi = 1, n  # covers_half_turn(angles[:hi]) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if covers_half_turn(angles_deg[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return hi


def provisional_center(spec: ScanSpec, tomo: dict | None) -> dict:
    """Where the live views start while the centre is not found yet: at the rotation axis the
    run's start document names (``tomo.center``: the beamline's calibration), else at the
    detector's middle (the centre finder's own default). Once it is found, the blocks go on
    when it is within CENTER_KEEP_PX, else start again from the first frame with it
    (``StreamRun.recenter``)."""
    given = (tomo or {}).get("center")
    if isinstance(given, int | float) and not isinstance(given, bool) and \
            math.isfinite(given) and 0 <= given < spec.n_cols:
        value, method = float(given), "the start document's axis"
    else:
        value, method = spec.n_cols / 2, "the detector's middle"
    return {"value": value, "method": method, "confidence": 0.0, "provisional": True}


def early_center(spec: ScanSpec, params: ReconParams, planned_deg, n_landed: int, *,
                 require_cover: bool = True) -> dict | None:
    """The centre from the first frames once they cover the half-turn, else None: from
    ``CENTER_COVER_FACTOR`` times the fewest frames that cover it (``frames_to_cover``), or
    all ``n_landed`` when fewer; None too while no estimator can use them (a sequential scan
    one frame short of its end: no pair of frames 180 degrees apart, centre "default"). Once
    every planned frame has landed it takes what there is (a plan whose angles never cover the
    half-turn this finely: 45 angles over 180 degrees). A given centre is used as is."""
    from tomopipe.tasks.recon import engine

    rows = engine.resolve_rows(spec, params)
    if params.center != "auto":
        return engine.find_center(spec, params, rows)
    n_landed = min(int(n_landed), len(planned_deg))
    if n_landed < 1:
        return None
    if n_landed == len(planned_deg):
        require_cover = False  # every planned frame is in: nothing more will come
    if require_cover:
        n_cover = frames_to_cover(planned_deg[:n_landed])
        if n_cover is None:
            return None
        n_landed = min(n_landed, CENTER_COVER_FACTOR * n_cover)
    fs = spec.projections[0]
    partial = dataclasses.replace(spec, projections=(FrameSet(fs.path, fs.dataset,
                                                              tuple(range(n_landed))),),
                                  angles_deg=tuple(float(a) for a in planned_deg[:n_landed]))
    found = engine.find_center(partial, params, rows)
    if require_cover and not found.get("confidence"):
        return None  # covered with gaps no estimator can use yet (no pair 180 degrees apart)
    found["method"] = f"{found['method']} (first {n_landed} frames)"
    found["frames"] = n_landed
    return found
