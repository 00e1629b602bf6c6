"""The standing adaptive cluster on a real single-node SLURM: cold and warm runs, idle give-back,
and the same volume as local workers.

    .venv/bin/python benchmarks/bench_slurm.py [--size 128] [--rows 16] [--angles 180]

Needs root and Debian's slurm-wlm and munge (``make slurm``). It starts SLURM in a temporary
folder (tests/slurm_support.py), the standing Dask service of a home with ``cluster: kind:
slurm`` (what ``tomopipe up`` starts), and runs ``tomopipe recon --scheduler`` twice: the first
after idle (cold: a job must start), the second at once (warm: the same job). It reports each
run's wall time, the jobs submitted, the jobs left after the idle period, and whether the volume
equals the one reconstructed on local threads value for value. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

JOB = "tomopipe-bench-dask"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--angles", type=int, default=180)
    ap.add_argument("--idle", type=float, default=10.0)
    args = ap.parse_args()

    import zarr
    from slurm_support import slurm_unavailable, start_slurm
    from tomopipe.infra import dask_service
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
    from tomopipe.infra.processes import free_port

    reason = slurm_unavailable()
    if reason:
        print(json.dumps({"skipped": reason}))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    slurm = start_slurm(tmp / "slurm")
    slurm.activate()
    home = tmp / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({"cluster": {
        "kind": "slurm", "cores": 1, "memory": "2GB", "processes": 1, "max_jobs": 2,
        "idle_timeout_s": args.idle, "job_name": JOB, "log_directory": str(tmp / "logs")}}))
    s = make_phantom_scan(args.size, args.rows, args.angles, center=args.size / 2)
    scan = write_dxchange(tmp / "scan.h5", s["projections"], s["flats"], s["darks"],
                          s["angles_deg"])
    sched, dash = free_port(), free_port()
    proc = subprocess.Popen(dask_service.argv(home, sched, dash),
                            env={**os.environ, "TOMOPIPE_HOME": str(home)},
                            stdout=open(tmp / "dask.log", "wb"), stderr=subprocess.STDOUT)
    tomopipe = str(Path(sys.executable).with_name("tomopipe"))
    jobs = lambda: [j for j in slurm.jobs() if j[1] == JOB]  # noqa: E731
    seen: set[str] = set()
    result: dict = {}
    try:
        while not dask_service.ready(home):
            time.sleep(0.2)

        def recon(name: str, *extra: str) -> float:
            t0 = time.monotonic()
            run = subprocess.Popen([tomopipe, "recon", str(scan), "--out", str(tmp / name),
                                    "--center", str(args.size / 2), "--json", *extra],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            while run.poll() is None:
                seen.update(j[0] for j in jobs())
                time.sleep(0.2)
            if run.returncode:
                raise RuntimeError(f"recon {name} failed")
            return round(time.monotonic() - t0, 2)

        addr = f"--scheduler=tcp://127.0.0.1:{sched}"
        result["cold_s"] = recon("cold.zarr", addr)
        result["warm_s"] = recon("warm.zarr", addr)
        result["jobs_submitted"] = len(seen)
        result["local_threads_s"] = recon("local.zarr")
        a = np.asarray(zarr.open_group(str(tmp / "cold.zarr"), mode="r")["0"])
        b = np.asarray(zarr.open_group(str(tmp / "local.zarr"), mode="r")["0"])
        result["same_volume_as_local"] = bool(np.array_equal(a, b))
        t0 = time.monotonic()
        while jobs():
            time.sleep(0.5)
        result["jobs_given_back_after_s"] = round(time.monotonic() - t0, 1)
        result["jobs_left"] = len(jobs())
        result.update(size=args.size, rows=args.rows, angles=args.angles, idle_s=args.idle,
                      load=os.getloadavg()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        slurm.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
