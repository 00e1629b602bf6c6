"""``tomopipe runs``: the tomography runs of the catalog and what became of each."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "runs", help="list runs and their reconstruction state",
        description="One line (or, with --json, one object) per tomography run of the catalog "
                    "and per file reconstructed: uid, plan_name, state (waiting, running, "
                    "completed, failed, crashed), output volume and, when failed, the reason; "
                    "steered_by: the uid of the scan whose analysis chose this one; "
                    "with --json also timeline (start, running, stop, published) and, while a "
                    "run streams, live (fraction, updated, path).")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--limit", type=int, default=None, help="only the newest N runs")
    p.set_defaults(func=run)


def list_runs(home: Path, limit: int | None = None) -> list[dict]:
    """Catalog runs (tomography only) joined with the results table, oldest first."""
    from tomopipe.context import run_context
    from tomopipe.tasks import results_table, run_progress
    from tomopipe.tasks.catalog import catalog_for
    from tomopipe.tasks.sources.bluesky_run import is_tomo_run

    ctx = run_context(home)
    results = results_table.read_all(ctx.home)
    progress = run_progress.read_all(ctx.home)
    catalog = catalog_for(ctx)
    listed: list[dict] = []
    seen = set()
    for uid, node in catalog.items():
        md = dict(node.metadata)
        start, stop = dict(md.get("start") or {}), md.get("stop")
        if not is_tomo_run(start, ctx.tomo_plans):
            continue
        seen.add(uid)
        listed.append(_entry(uid, start, stop, results.get(uid), progress.get(uid)))
    for uid, row in results.items():  # files reconstructed by path
        if uid not in seen:
            listed.append({"uid": uid, "plan_name": row["plan_name"], "state": row["state"],
                           "output": row["output"], "message": row["message"], "time": None,
                           "scan_id": None, "sample": None, "exit_status": None,
                           "updated": row["updated"],
                           "timeline": run_progress.timeline(None, None, progress.get(uid)),
                           "live": run_progress.live(row["state"], progress.get(uid))})
    return listed[-limit:] if limit else listed


def _entry(uid: str, start: dict, stop: dict | None, row: dict | None,
           progress: dict | None = None) -> dict:
    from tomopipe.tasks import run_progress

    entry = {"uid": uid, "plan_name": start.get("plan_name"), "scan_id": start.get("scan_id"),
             "sample": start.get("sample"), "time": start.get("time"),
             "exit_status": (stop or {}).get("exit_status"),
             "steered_by": start.get("steered_by")}  # the scan whose analysis chose this one
    if row:
        state, output, message = row["state"], row["output"], row["message"]
        entry["updated"] = row["updated"]
    elif stop and stop.get("exit_status") != "success":
        state, output = "failed", None  # no flow ran: the run itself did not succeed
        message = f"run ended {stop.get('exit_status')}: {stop.get('reason') or 'no reason'}"
    else:
        state, output, message = "waiting", None, None
    entry.update(state=state, output=output if state == "completed" else None, message=message)
    # timeline: start, running, stop, published (Unix times); live: while a run streams
    entry["timeline"] = run_progress.timeline(start, stop, progress)
    entry["live"] = run_progress.live(state, progress)
    return entry


def run(args: argparse.Namespace) -> int:
    from tomopipe.config import home

    listed = list_runs(home(), args.limit)
    if args.json:
        print(json.dumps(listed, indent=1))
        return 0
    if not listed:
        print("no tomography runs")
        return 0
    for r in listed:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])) if r["time"] else ""
        detail = r["output"] or r["message"] or ""
        print(f"{r['uid'][:36]:36}  {str(r['plan_name'] or ''):12}  {r['state']:9}  {when:19}  "
              f"{detail}")
    return 0
