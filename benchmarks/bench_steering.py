"""Steering figures on a running home with the queue (`tomopipe up --with-queue`).

Align and zoom: runs `tomopipe simulate --sample-offset DX,DY --steer align` and reports the
time from the quick scan's stop document to the full scan's start document (analysis, agent,
stage move, queue), the sample's offset in the quick scan and after steering (px, from the
analysis runs in the catalog).

Stop when good enough: runs `tomopipe simulate --steer stop` (a golden-ratio scan the agent
ends once its live reconstruction has converged) and reports the fraction of the planned
angles acquired and the correlation of the early-stopped volume with a full scan of the same
sample (`tomopipe simulate --angle-order golden`, reconstructed by the same live flow).

    TOMOPIPE_HOME=/tmp/bench-steer .venv/bin/tomopipe up --with-queue
    TOMOPIPE_HOME=/tmp/bench-steer .venv/bin/python benchmarks/bench_steering.py [--skip-stop]

The live flow must stream the golden scan for the agent to see it converge: the home's live
deployment keeps its default (the standing Dask cluster), and the scan must last longer than
the live flow's start-up on a loaded machine (--angles 720 --fps 8: 90 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _cli(*args: str, timeout: float = 1500) -> str:
    proc = subprocess.run([sys.executable, "-m", "tomopipe.cli", *args], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"tomopipe {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _analysis(uid: str, timeout: float = 600) -> dict:
    from tomopipe.tasks.analysis.queue_client import find_analysis
    from tomopipe.tasks.catalog import catalog_for_home

    from tomopipe.config import home

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_analysis(catalog_for_home(home()), uid)
        if found:
            return found[1]
        time.sleep(1)
    raise SystemExit(f"no analysis of {uid} after {timeout} s")


def _run(uid: str) -> dict:
    from tomopipe.tasks.catalog import catalog_for_home

    from tomopipe.config import home

    md = catalog_for_home(home())[uid].metadata
    return {"start": dict(md["start"]), "stop": dict(md.get("stop") or {})}


def bench_align(offset: str) -> dict:
    full_uid = _cli("simulate", "--sample-offset", offset, "--steer", "align", "--size", "128",
                    "--rows", "16", "--angles", "180", "--seed", "4")
    full = _run(full_uid)
    quick_uid = full["start"]["steered_by"]
    quick = _run(quick_uid)
    before, after = _analysis(quick_uid), _analysis(full_uid)
    return {"quick_uid": quick_uid, "full_uid": full_uid,
            "quick_stop_to_full_start_s": round(full["start"]["time"] - quick["stop"]["time"], 2),
            "offset_before_px": [before["offset_x_px"], before["offset_y_px"]],
            "offset_after_px": [after["offset_x_px"], after["offset_y_px"]],
            "rows_after": after["volume_rows"]}


def _volume_corr(a_uid: str, b_uid: str) -> float:
    from tomopipe.tasks.analysis.convergence import correlation
    from tomopipe.tasks.analysis.volume_io import read_level

    a, _ = read_level(_analysis(a_uid)["volume"], max_px=4096)
    b, _ = read_level(_analysis(b_uid)["volume"], max_px=4096)
    return correlation(a, b)


def bench_stop(angles: int, fps: float) -> dict:
    common = ("--size", "128", "--rows", "16", "--angles", str(angles), "--fps", str(fps),
              "--seed", "5")
    early_uid = _cli("simulate", "--steer", "stop", *common)
    full_uid = _cli("simulate", "--angle-order", "golden", "--sample-shape", "grain", *common)
    early = _run(early_uid)
    taken = early["stop"].get("num_events", {}).get("primary", 0)
    return {"early_uid": early_uid, "full_uid": full_uid, "angles_planned": angles,
            "angles_taken": taken, "fraction_acquired": round(taken / angles, 3),
            "stop_reason": early["stop"].get("reason"),
            "correlation_with_full": round(_volume_corr(early_uid, full_uid), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--offset", default="15,-8")
    p.add_argument("--angles", type=int, default=720)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--skip-stop", action="store_true")
    args = p.parse_args()
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
           "load_before": os.getloadavg()}
    out["align"] = bench_align(args.offset)
    out["load_after_align"] = os.getloadavg()
    if not args.skip_stop:
        out["stop"] = bench_stop(args.angles, args.fps)
        out["load_after_stop"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
