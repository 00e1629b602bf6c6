"""``make demo``: bring up the embedded services, simulate a scan, wait for the live flow's volume.

It drives the public command line only (``tomopipe up``, ``simulate``, ``runs``), so the demo
exercises exactly what a user runs. The services stay up afterwards: ``tomopipe down`` stops them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TOMOPIPE = [sys.executable, "-m", "tomopipe.cli"]


def _run(args: list[str], *, capture: bool = True) -> str:
    proc = subprocess.run(TOMOPIPE + args, text=True, stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        raise SystemExit(f"demo: `tomopipe {' '.join(args)}` failed (exit {proc.returncode})")
    return proc.stdout or ""


def _wait_for_run(uid: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last_state = None
    while time.monotonic() < deadline:
        runs = json.loads(_run(["runs", "--json"]))
        run = next((r for r in runs if r["uid"] == uid), None)
        state = run["state"] if run else "waiting"
        if state != last_state:
            print(f"demo: run {uid[:8]} is {state}", file=sys.stderr)
            last_state = state
        if run and state in ("completed", "failed"):
            return run
        time.sleep(1.0)
    raise SystemExit(f"demo: run {uid} did not finish within {timeout:.0f} s; "
                     "see the Prefect UI and `tomopipe runs`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tomopipe.infra.demo", description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="detector width in pixels")
    parser.add_argument("--rows", type=int, default=32, help="detector rows")
    parser.add_argument("--angles", type=int, default=360, help="projections over 180 degrees")
    parser.add_argument("--fps", type=float, default=200.0, help="simulated frame rate")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    args = parser.parse_args(argv)

    _run(["up"], capture=False)
    status = json.loads(_run(["status", "--json"]))
    print(f"demo: services up; Prefect UI at {status['prefect_ui']}", file=sys.stderr)
    out = _run(["simulate", "--size", str(args.size), "--rows", str(args.rows),
                "--angles", str(args.angles), "--fps", str(args.fps), "--sample", "demo"])
    uid = out.strip().splitlines()[-1]
    print(f"demo: simulated scan {uid}; waiting for the live flow", file=sys.stderr)
    run = _wait_for_run(uid, args.timeout)
    if run["state"] != "completed":
        raise SystemExit(f"demo: the live flow failed: {run.get('message')}")
    volume = run["output"]
    preview = run.get("preview") or f"{volume}.preview.png"  # tasks.preview's naming
    print(f"volume:     {volume}")
    print(f"prefect ui: {status['prefect_ui']}")
    print(f"preview:    {preview}")
    print("The services stay up: `tomopipe down` (or `make down`) stops them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
