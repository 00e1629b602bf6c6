"""Latency of the live path: start document -> live flow running, stop document -> volume
published (beyond the reconstruction's own time).

Runs simulated scans through the running services of $TOMOPIPE_HOME (``tomopipe up`` first, or
pass --up to start them here) and prints one JSON object per scan plus a summary:

    .venv/bin/python benchmarks/bench_latency.py --size 256 --rows 64 --angles 360 --repeat 5

Times: the start/stop documents' own ``time`` fields, the flow run's ``start_time`` and the time
it entered each state (``state_*_s``, from the start document) from the Prefect API, the result
record's update time (written when the volume is published) and the engine's own
reconstruction time from the result record. ``standing_cluster`` says whether every slab ran
in a worker of the home's standing Dask cluster (the volume's provenance lists the processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def live_flow_run(api: str, uid: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    body = {"flows": {"name": {"any_": ["live-run"]}}, "limit": 200}
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
        for fr in runs:
            if (fr.get("parameters") or {}).get("uid") == uid and fr["state_type"] in (
                    "COMPLETED", "FAILED", "CRASHED"):
                return fr
        time.sleep(0.5)
    raise TimeoutError(f"no finished live-run flow run for {uid} after {timeout} s")


def measure(home: Path, state: dict, *, size: int, rows: int, angles: int, fps: float | None,
            timeout: float) -> dict:
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks import catalog as runs
    from tomopipe.tasks import results_table

    from tomopipe.config import load_settings

    uid = simulate(load_settings(home), size=size, rows=rows, angles=angles, fps=fps,
                   sample="latency-bench", publish_to=state["zmq_in"])
    fr = live_flow_run(state["prefect_api"], uid, timeout)
    start, stop = runs.run_metadata(runs.catalog_for_home(home)[uid])
    row = results_table.read_one(home, uid)
    if fr["state_type"] != "COMPLETED" or row["state"] != "completed":
        return {"uid": uid, "error": fr["state"].get("message")}
    recon_s = float(row["details"]["recon_s"])
    flow_start = _ts(fr["start_time"])
    published = float(row["updated"])
    emitted = _ledger_times(home, uid)
    tasks = _task_spans(state["prefect_api"], fr["id"])
    states = _state_times(state["prefect_api"], fr["id"])
    t0, t1 = start["time"], stop["time"]
    return {
        "uid": uid, "size": size, "rows": rows, "angles": angles,
        "start_doc_to_flow_running_s": round(flow_start - start["time"], 3),
        "stop_doc_to_published_s": round(published - stop["time"], 3),
        "reconstruction_s": round(recon_s, 3),
        "overhead_beyond_reconstruction_s": round(published - stop["time"] - recon_s, 3),
        "scan_s": round(stop["time"] - start["time"], 3),
        "flow_total_s": round(_ts(fr["end_time"]) - flow_start, 3),
        "standing_cluster": on_standing_cluster(state, row["output"]),
        # where the start latency goes: bridge (write + emit), automation, worker + process
        "start_event_emitted_s": round(emitted.get("bluesky.run.start", t0) - t0, 3),
        "flow_run_created_s": round(_ts(fr["created"]) - t0, 3),
        **{f"state_{name.lower()}_s": round(at - t0, 3) for name, at in states.items()},
        # after the stop document: the bridge's stop write, then each task of the flow
        "stop_event_emitted_s": round(emitted.get("bluesky.run.stop", t1) - t1, 3),
        **{f"task_{name}_ends_after_stop_s": round(end - t1, 3) for name, end in tasks.items()},
    }


def services_state(home: Path, *, up: bool = False) -> dict:
    """The addresses the benchmarks use and the pids of the home's services (starting them
    first when ``up``); points Prefect's client at the home's server."""
    from tomopipe.infra.state import read_services

    from tomopipe.config import load_settings
    from tomopipe.context import run_context

    if up:
        from tomopipe.infra import services

        services.up(load_settings(home))
    ctx = run_context(home)
    state = {name: ctx.address(name) for name in ("prefect_api", "zmq_in", "dask_scheduler")}
    state["zmq_serializer"] = ctx.settings.bus.serializer
    state["pids"] = (read_services(home) or {}).get("pids", {})  # the standing cluster's
    os.environ["PREFECT_API_URL"] = state["prefect_api"]
    return state


def standing_workers(state: dict) -> set[int]:
    """Pids of the worker processes of the home's standing Dask cluster."""
    import psutil

    pid = state.get("pids", {}).get("dask")
    if not pid or not psutil.pid_exists(pid):
        return set()
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def on_standing_cluster(state: dict, volume: str) -> bool:
    """True when every slab of ``volume`` was computed by the standing cluster's workers."""
    from tomopipe.tasks.storage.omezarr import read_provenance

    pids = set(read_provenance(volume).get("timings", {}).get("slab_pids") or [])
    return bool(pids) and pids <= standing_workers(state)


def _ledger_times(home: Path, uid: str) -> dict:
    import sqlite3

    db = sqlite3.connect(Path(home) / "bridge" / "ledger.sqlite")
    try:
        return dict(db.execute("SELECT event, at FROM emitted WHERE uid = ?", (uid,)))
    finally:
        db.close()


def _state_times(api: str, flow_run_id: str) -> dict:
    """When the flow run first entered each state (SCHEDULED, PENDING, RUNNING, ...)."""
    states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": flow_run_id},
                       timeout=10).json()
    first: dict = {}
    for st in sorted(states, key=lambda st: st["timestamp"]):
        first.setdefault(st["type"], _ts(st["timestamp"]))
    return first


def _task_spans(api: str, flow_run_id: str) -> dict:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    runs = httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json()
    return {tr["task_key"].split("-")[0] if tr.get("task_key") else tr["name"]: _ts(tr["end_time"])
            for tr in runs if tr.get("end_time")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="detector columns")
    p.add_argument("--rows", type=int, default=64, help="detector rows")
    p.add_argument("--angles", type=int, default=360)
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: max)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--up", action="store_true", help="start the services of the home first")
    args = p.parse_args(argv)

    from tomopipe.config import home as default_home

    home = default_home()
    state = services_state(home, up=args.up)
    results = []
    for _ in range(args.repeat):
        r = measure(home, state, size=args.size, rows=args.rows, angles=args.angles,
                    fps=args.fps, timeout=args.timeout)
        print(json.dumps(r), flush=True)
        results.append(r)
    good = [r for r in results if "error" not in r]
    if good:
        summary = {k: round(statistics.median(r[k] for r in good), 3) for k in (
            "start_doc_to_flow_running_s", "stop_doc_to_published_s", "reconstruction_s",
            "overhead_beyond_reconstruction_s")}
        ranges = {k: [min(r[k] for r in good), max(r[k] for r in good)] for k in summary}
        print(json.dumps({"median": summary, "range": ranges, "n": len(good),
                          "all_on_standing_cluster": all(r["standing_cluster"] for r in good)}))
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
