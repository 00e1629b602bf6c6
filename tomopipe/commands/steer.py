"""``tomopipe simulate --steer align|stop``: scans on the queue server, steered by the analysis.

- ``align``: mount a sample ``--sample-offset DX,DY`` pixels off the axis, queue a quick
  low-dose scan (``--quick-angles``), let the align-and-zoom agent (flows/steering.steer_align)
  read its analysis and queue the stage move and the full scan, and wait for that scan. The
  full scan's uid is the last line on stdout.
- ``stop``: queue a golden-ratio scan and let the agent end it through the queue server once
  its live reconstruction has converged (tasks/analysis/convergence); its uid is the last line.

Progress and the agent's decision go to stderr. A refusal (bad analysis) queues nothing and
exits 1 with the agent's reason.
"""

from __future__ import annotations

import argparse
import sys

from tomopipe.errors import InputError, ServiceError

QUICK_ANGLES = 45


def parse_offset(text: str | None) -> tuple[float, float]:
    if not text:
        return 0.0, 0.0
    try:
        dx, dy = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError("--sample-offset", f"expected DX,DY in pixels, got {text!r}") from None
    return dx, dy


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _scan_kwargs(args: argparse.Namespace, angles: int, order: str) -> dict:
    return {"angles": angles, "size": args.size, "rows": args.rows, "angle_order": order,
            "fps": args.fps or 0.0, "sample": args.sample, "sample_shape": args.sample_shape,
            "n_flats": args.flats, "n_darks": args.darks}


def run_steered(args: argparse.Namespace, settings) -> str:
    from tomopipe.context import prefect_api_scope, run_context
    from tomopipe.tasks.analysis.queue_client import finished_item, submit

    ctx = run_context(settings.home)
    if not ctx.running or not ctx.services.queue_control:
        raise ServiceError(f"--steer needs the queue: run `tomopipe up --with-queue` for "
                           f"{settings.home}")
    control = ctx.services.queue_control
    dx, dy = parse_offset(args.sample_offset)
    if args.steer == "stop":
        return _run_stop_early(args, ctx)
    quick = _scan_kwargs(args, args.quick_angles, "sequential")
    quick["md"] = {"steering": {"role": "quick", "agent": "align-and-zoom"}}
    items = submit(control, [("mount_sample", [dx, dy], {}), ("tomo_scan_sim", [], quick)])
    _say(f"queued the sample mount ({dx:+g}, {dy:+g}) px and a quick scan of "
         f"{args.quick_angles} angles")
    done = finished_item(control, items[-1], timeout=args.timeout)
    quick_uid = _run_uid(done, "the quick scan")
    _say(f"quick scan {quick_uid} done; waiting for its analysis")
    from tomopipe.flows.steering import steer_align

    with prefect_api_scope(ctx.services.prefect_api):
        result = steer_align(quick_uid, _scan_kwargs(args, args.angles, args.angle_order),
                             home=str(settings.home), timeout_s=args.timeout)
    decision = result["decision"]
    _say(f"agent: {decision['action']}: {decision['reason']}")
    if not result["queued"]:
        raise ServiceError(f"the agent queued nothing after {quick_uid}: {decision['reason']}")
    full = finished_item(control, result["queued"][-1], timeout=args.timeout)
    return _run_uid(full, "the full scan")


def _run_uid(item: dict, what: str) -> str:
    result = item.get("result") or {}
    uids = result.get("run_uids") or []
    if result.get("exit_status") not in ("completed", "stopped") or not uids:
        raise ServiceError(f"{what} ended {result.get('exit_status')}: "
                           f"{result.get('msg') or 'no run'}")
    return uids[-1]


def _run_stop_early(args: argparse.Namespace, ctx) -> str:
    from tomopipe.context import prefect_api_scope
    from tomopipe.tasks.analysis.queue_client import finished_item, running_run_uid, submit

    control = ctx.services.queue_control
    dx, dy = parse_offset(args.sample_offset)
    scan = _scan_kwargs(args, args.angles, "golden")
    scan["md"] = {"steering": {"role": "stop-when-good-enough"}}
    items = submit(control, [("mount_sample", [dx, dy], {}), ("tomo_scan_sim", [], scan)])
    uid = running_run_uid(control, items[-1], timeout=args.timeout)
    if uid is None:
        return _run_uid(finished_item(control, items[-1], timeout=10), "the scan")
    _say(f"scan {uid} running; watching its live reconstruction")
    from tomopipe.flows.steering import stop_when_converged

    with prefect_api_scope(ctx.services.prefect_api):
        result = stop_when_converged(uid, home=str(ctx.home), timeout_s=args.timeout)
    _say(f"agent: {result['decision']['action']}: {result['decision']['reason']}")
    finished_item(control, items[-1], timeout=args.timeout)
    return uid
