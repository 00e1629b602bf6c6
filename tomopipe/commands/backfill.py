"""``tomopipe backfill``: reconstruct a catalog again, through the backfill deployment."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tomopipe.errors import ServiceError

DEPLOYMENT = "backfill/backfill"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "backfill", help="reconstruct every matching tomography run of the catalog",
        description="Triggers the backfill deployment on the running services of "
                    "$TOMOPIPE_HOME (or, with --local, runs the flow here) and waits for it. "
                    "Runs already reconstructed with the same key are skipped.")
    p.add_argument("--plan", help="only runs of this plan name")
    p.add_argument("--since", help="only runs started at or after T (ISO 8601 or epoch s)")
    p.add_argument("--until", help="only runs started before T")
    p.add_argument("--sample", help="only runs of this sample")
    p.add_argument("--force", action="store_true", help="reconstruct even runs already done")
    p.add_argument("--concurrency", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--no-wait", action="store_true", help="trigger and return at once")
    p.add_argument("--local", action="store_true",
                   help="run the flow in this process instead of on the work pool")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 1 h)")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.set_defaults(func=run)


def parameters(args: argparse.Namespace, home: Path) -> dict:
    from tomopipe.tasks.catalog import parse_time

    for t in (args.since, args.until):
        parse_time(t)  # bad times fail here, with a clear message, not in the flow
    return {"plan": args.plan, "since": args.since, "until": args.until, "sample": args.sample,
            "force": args.force, "concurrency": args.concurrency, "home": str(home)}


def run(args: argparse.Namespace) -> int:
    from tomopipe.context import prefect_api_scope, run_context

    ctx = run_context()
    params = parameters(args, ctx.home)
    with prefect_api_scope(ctx.address("prefect_api")):
        if args.local:
            from tomopipe.flows.backfill import backfill

            summary = backfill(**params)
        else:
            summary = _via_deployment(ctx.home, params, args)
    if summary is None:
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print(", ".join(f"{k} {v}" for k, v in summary.items()))
    return 1 if summary.get("failed") else 0


def _via_deployment(home: Path, params: dict, args) -> dict | None:
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    try:
        flow_run = run_deployment(DEPLOYMENT, parameters=params, timeout=0)
    except ObjectNotFound as exc:
        raise ServiceError(f"no {DEPLOYMENT} deployment on {PREFECT_API_URL.value()}: "
                           "register it with `tomopipe up` (or use --local)") from exc
    if args.no_wait:
        print(json.dumps({"flow_run_id": str(flow_run.id)}) if args.json
              else f"backfill flow run {flow_run.id} triggered")
        return None
    final = _wait(flow_run.id, args.timeout)
    if not final.is_completed():
        raise ServiceError(f"backfill flow run {flow_run.id} ended {final.type.value}: "
                           f"{final.message}")
    path = home / "backfill" / f"{flow_run.id}.json"
    return json.loads(path.read_text())


def _wait(flow_run_id, timeout: float):
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            if time.monotonic() > deadline:
                raise ServiceError(f"backfill flow run {flow_run_id} still {state.type.value} "
                                   f"after {timeout:.0f} s (is a worker running?)")
            time.sleep(0.5)
