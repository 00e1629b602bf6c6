"""The standing adaptive cluster on a real single-node SLURM against the local standing cluster:
time to the first slab running (cold and warm), a burst of runs, idle give-back, the same volume.

    .venv/bin/python benchmarks/bench_slurm.py [--size 128] [--rows 16] [--angles 180]
                                               [--burst 6] [--idle 10] [--max-jobs 2]

Needs root and Debian's slurm-wlm and munge (``make slurm``). It starts SLURM in a temporary
folder (tests/slurm_support.py) and two standing Dask services (what ``tomopipe up`` starts): one
for a home with ``cluster: kind: slurm`` (adaptive, ``max_jobs`` 1-core jobs) and one for a home
with local workers (``--local-workers``, default as many as SLURM's job bound). Every run is a
``tomopipe recon --scheduler`` process of the same scan; each asks the cluster for its workers
(the provenance's ``resources``). Measured:

- cold: the first run after idle (a SLURM job must start), warm: the next run at once; for
  each, run start (the process is started) to the first slab running (its compute start in the
  scheduler's task stream: same machine, same clock) and to the end;
- a burst of ``--burst`` runs at once on each cluster: total time, SLURM jobs submitted (seen in
  ``squeue``), the jobs the runs asked for (sum of their provenance), peak workers;
- the time until every job is given back after the last run, and the jobs left (0);
- whether every SLURM volume equals the local cluster's value for value.

An unmeasured run on local threads comes first (the first process pays for the page cache).

One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

JOB = "tomopipe-bench-dask"
SLAB = "tomopipe-slab-"  # the engine's slab task keys


def _service(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    from tomopipe.infra import dask_service
    from tomopipe.infra.processes import free_port

    sched, dash = free_port(), free_port()
    proc = subprocess.Popen(dask_service.argv(home, sched, dash),
                            env={**os.environ, "TOMOPIPE_HOME": str(home)},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    while not dask_service.ready(home):
        if proc.poll() is not None:
            raise RuntimeError(f"the dask service of {home} stopped: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, f"tcp://127.0.0.1:{sched}"


def _home(root: Path, cluster: dict) -> Path:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"cluster": cluster}))
    return root


class Watch:
    """Polls squeue (our jobs) and the scheduler (its workers) while runs go on."""

    def __init__(self, slurm, client):
        self.slurm, self.client = slurm, client
        self.jobs: set[str] = set()
        self.queued: dict[str, float] = {}   # job -> seconds from the watch's start to squeue
        self.running: dict[str, float] = {}  # ... to its state RUNNING
        self.peak_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def ours(self) -> list:
        return [j for j in self.slurm.jobs() if j[1] == JOB] if self.slurm else []

    def _run(self):
        while not self._stop.is_set():
            now = round(time.monotonic() - self.t0, 2)
            for job, _, state in self.ours():
                self.jobs.add(job)
                self.queued.setdefault(job, now)
                if state == "RUNNING":
                    self.running.setdefault(job, now)
            workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
            self.peak_workers = max(self.peak_workers, workers)
            time.sleep(0.2)

    def first(self) -> dict:
        """When the first job showed in squeue and ran, from the watch's start."""
        return {"first_job_queued_s": min(self.queued.values(), default=None),
                "first_job_running_s": min(self.running.values(), default=None)}

    def __enter__(self):
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _runs(tomopipe: str, scan: Path, outs: list[Path], center: float, address: str,
          client) -> dict:
    """Start one ``tomopipe recon`` per output at once; wall times and first slab starts."""
    t0_wall, t0 = time.time(), time.monotonic()
    procs = [subprocess.Popen([tomopipe, "recon", str(scan), "--out", str(out), "--center",
                               str(center), "--json", f"--scheduler={address}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out in outs]
    ends = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"tomopipe recon failed: {err.strip().splitlines()[-1:]}")
        ends.append(time.monotonic() - t0)
    starts = [s["start"] for rec in client.get_task_stream(start=t0_wall)
              if str(rec.get("key", "")).startswith(SLAB)
              for s in rec.get("startstops", ()) if s["action"] == "compute"]
    starts = [t for t in starts if t >= t0_wall]  # this burst's slabs only
    return {"total_s": round(max(ends), 2),
            "first_slab_running_s": round(min(starts) - t0_wall, 2) if starts else None}


def _asked(outs: list[Path]) -> dict:
    from tomopipe.tasks.storage.omezarr import read_provenance

    res = [read_provenance(o).get("resources") or {} for o in outs]
    return {"asked_jobs": sum(r.get("asked", {}).get("jobs", 0) for r in res),
            "asked_workers": [r.get("asked", {}).get("workers") for r in res],
            "got_workers": [r.get("got", {}).get("workers") for r in res],
            "basis": sorted({str(r.get("basis", r.get("cluster"))) for r in res})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=6)
    ap.add_argument("--max-jobs", type=int, default=2)
    ap.add_argument("--local-workers", type=int, default=None)
    args = ap.parse_args()

    import zarr
    from distributed import Client
    from slurm_support import slurm_unavailable, start_slurm
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange

    reason = slurm_unavailable()
    if reason:
        print(json.dumps({"skipped": reason}))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    slurm = start_slurm(tmp / "slurm")
    slurm.activate()
    slurm_home = _home(tmp / "home-slurm", {
        "kind": "slurm", "cores": 1, "memory": "2GB", "processes": 1,
        "max_jobs": args.max_jobs, "idle_timeout_s": args.idle, "job_name": JOB,
        "log_directory": str(tmp / "logs")})
    local_home = _home(tmp / "home-local", {
        "kind": "local", "workers": args.local_workers or args.max_jobs})
    s = make_phantom_scan(args.size, args.rows, args.angles, center=args.size / 2)
    scan = write_dxchange(tmp / "scan.h5", s["projections"], s["flats"], s["darks"],
                          s["angles_deg"])
    center = args.size / 2
    tomopipe = str(Path(sys.executable).with_name("tomopipe"))
    procs = []
    result: dict = {"size": args.size, "rows": args.rows, "angles": args.angles,
                    "idle_s": args.idle, "max_jobs": args.max_jobs, "burst": args.burst,
                    "load_at_start": [round(v, 2) for v in os.getloadavg()]}
    try:
        sp, slurm_addr = _service(slurm_home, tmp / "dask-slurm.log")
        procs.append(sp)
        lp, local_addr = _service(local_home, tmp / "dask-local.log")
        procs.append(lp)
        with Client(slurm_addr, set_as_default=False) as sc, \
                Client(local_addr, set_as_default=False) as lc:
            for c in (sc, lc):
                c.get_task_stream(start=0)  # the scheduler records its task stream from now

            def gone(watch: Watch, since: float) -> float:
                """Seconds from ``since`` (the last SLURM run's end) until no job is left."""
                while watch.ours():
                    time.sleep(0.2)
                return round(time.monotonic() - since, 1)

            # one unmeasured run on local threads first: the first process of a bench pays for
            # the page cache (imports, the scan), whichever cluster it runs on
            subprocess.run([tomopipe, "recon", str(scan), "--out", str(tmp / "warmup.zarr"),
                            "--center", str(center)], check=True, capture_output=True)
            # the local standing cluster first (its workers are up: nothing to wait for)
            with Watch(None, lc):
                result["local_single"] = _runs(tomopipe, scan, [tmp / "local.zarr"], center,
                                               local_addr, lc)
            local_outs = [tmp / f"burst-local-{i}.zarr" for i in range(args.burst)]
            with Watch(None, lc) as lburst:
                b = _runs(tomopipe, scan, local_outs, center, local_addr, lc)
            result["burst_local"] = {**b, "peak_workers": lburst.peak_workers,
                                     **_asked(local_outs)}

            # SLURM: cold (no job since the service started), warm (at once), give-back
            watch = Watch(slurm, sc)
            with watch:
                cold = _runs(tomopipe, scan, [tmp / "cold.zarr"], center, slurm_addr, sc)
                cold.update(watch.first())
                warm = _runs(tomopipe, scan, [tmp / "warm.zarr"], center, slurm_addr, sc)
            result["cold"] = {**cold, **_asked([tmp / "cold.zarr"])}
            result["warm"] = {**warm, **_asked([tmp / "warm.zarr"])}
            result["cold_warm_jobs_submitted"] = len(watch.jobs)
            result["jobs_given_back_after_s"] = gone(watch, time.monotonic())

            # a burst after idle
            outs = [tmp / f"burst-slurm-{i}.zarr" for i in range(args.burst)]
            with Watch(slurm, sc) as burst:
                b = _runs(tomopipe, scan, outs, center, slurm_addr, sc)
            result["burst_slurm"] = {**b, **burst.first(), "jobs_submitted": len(burst.jobs),
                                     "peak_workers": burst.peak_workers, **_asked(outs)}
            result["burst_jobs_given_back_after_s"] = gone(burst, time.monotonic())
            result["jobs_left"] = len(burst.ours())

        ref = np.asarray(zarr.open_group(str(tmp / "local.zarr"), mode="r")["0"])
        slurm_volumes = [tmp / "cold.zarr", tmp / "warm.zarr", *outs]
        result["same_volume_as_local"] = all(
            np.array_equal(ref, np.asarray(zarr.open_group(str(v), mode="r")["0"]))
            for v in [*slurm_volumes, *local_outs])
        result["volumes_compared"] = len(slurm_volumes) + len(local_outs)
        result["load_at_end"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for job_id, _, _ in [j for j in slurm.jobs() if j[1] == JOB]:
            subprocess.run(["scancel", job_id], env=slurm.env(), check=False)
        slurm.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
