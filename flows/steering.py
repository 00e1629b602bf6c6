"""Steering: what the reconstruction finds drives the next scan.

- ``steer_align`` (automated align and zoom): reads the analysis run of a quick scan from the
  catalog, decides (tasks/analysis/decisions.align_decision), and when the analysis is good
  queues a stage move that puts the sample on the rotation axis and the full scan limited to
  the sample's rows, its start document naming the quick scan (``steered_by``). Bad analysis (no
  sample, a centre of low confidence) queues nothing and says why.
- ``stop_when_converged`` (stop when good enough): follows a running scan's live
  reconstruction and ends the scan through the queue server once successive live updates agree
  (tasks/analysis/convergence.assess).
- ``suggest_scan`` (semi-automated): the same suggestion, shown to a person in the Prefect UI
  (``pause_flow_run(wait_for_input=...)``); approve, edit or refuse, and the choice goes to the
  queue.

Every decision is recorded with its inputs: as a ``steering_decision`` Bluesky run on the bus
(so in the catalog, naming the raw and the analysis runs) and as a markdown artifact.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.input import RunInput
from tomopipe.flows.pipeline import flow_context
from tomopipe.tasks.analysis.decisions import Decision, align_decision
from tomopipe.tasks.analysis.prefect_tasks import (
    publish_decision,
    queue_plans,
    stop_scan,
    wait_for_analysis,
)

AGENT = "tomopipe align-and-zoom"
AGENT_STOP = "tomopipe stop-when-good-enough"


def full_scan_plans(quick_uid: str, decision: Decision, scan: dict) -> list:
    """The queue items of an align decision: the stage move, then the full scan."""
    kwargs = {**scan, **decision.scan,
              "md": {"steered_by": quick_uid,
                     "steering": {"agent": AGENT, "action": decision.action,
                                  "reason": decision.reason, "moves": decision.moves}}}
    return [("move_stage", [], {"dx_px": decision.moves.get("stage_x", 0.0),
                                "dy_px": decision.moves.get("stage_y", 0.0)}),
            ("tomo_scan_sim", [], kwargs)]


@flow(name="steer-align", log_prints=True)
def steer_align(quick_uid: str, scan: dict, home: str | None = None,
                timeout_s: float = 600.0) -> dict:
    """Align and zoom after the quick scan ``quick_uid``: ``scan`` holds the full scan's
    ``tomo_scan_sim`` parameters (angles, size, rows, ...). Returns the decision, the analysis
    and decision run uids and the queue item uids (empty when refused)."""
    ctx = flow_context(home)
    analysis_uid, found = wait_for_analysis(ctx, quick_uid, timeout_s=timeout_s)
    decision = align_decision(found, detector_rows=int(scan["rows"]))
    queued: list[str] = []
    if decision.acts:
        queued = queue_plans(ctx, full_scan_plans(quick_uid, decision, scan))
    else:
        get_run_logger().warning("nothing queued for %s: %s", quick_uid, decision.reason)
    decision_uid = publish_decision(ctx, quick_uid, decision.to_dict(),
                                    analysis_uid=analysis_uid, queued=queued)
    return {"decision": decision.to_dict(), "analysis_uid": analysis_uid,
            "decision_uid": decision_uid, "queued": queued}


class ScanChoice(RunInput):
    """What a person answers to a suggested scan: approve (as shown or edited) or refuse."""

    approve: bool = True
    move_x_px: float = 0.0
    move_y_px: float = 0.0
    row_start: int = 0
    row_stop: int = 0
    angles: int = 180
    note: str = ""


PAUSE_POLL_S = 2  # how often the paused flow looks for the person's answer


def plans_text(plans: list) -> str:
    """The queue items as a person reads them: ``name(key=value, ...)``, one a line."""
    return "\n".join(f"- `{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})`"
                     for name, _, kwargs in plans)


@flow(name="suggest-scan", log_prints=True)
def suggest_scan(quick_uid: str, scan: dict, home: str | None = None,
                 timeout_s: float = 600.0, wait_s: int = 3600, start_queue: bool = True) -> dict:
    """Suggest the next scan after ``quick_uid`` and wait (``wait_s``) for a person to approve,
    edit or refuse it in the Prefect UI (the paused run's input form: its description shows the
    suggested plans and their parameters, its fields hold them as defaults); the choice goes to
    the queue (started unless ``start_queue`` is false) and is recorded."""
    from prefect import pause_flow_run

    ctx = flow_context(home)
    analysis_uid, found = wait_for_analysis(ctx, quick_uid, timeout_s=timeout_s)
    suggested = align_decision(found, detector_rows=int(scan["rows"]))
    if not suggested.acts:
        decision_uid = publish_decision(ctx, quick_uid, suggested.to_dict(),
                                        analysis_uid=analysis_uid)
        return {"decision": suggested.to_dict(), "queued": [], "analysis_uid": analysis_uid,
                "decision_uid": decision_uid}
    initial = ScanChoice(approve=True, move_x_px=suggested.moves.get("stage_x", 0.0),
                         move_y_px=suggested.moves.get("stage_y", 0.0),
                         row_start=suggested.scan["row_start"],
                         row_stop=suggested.scan["row_stop"], angles=int(scan["angles"]))
    shown = plans_text(full_scan_plans(quick_uid, suggested, scan))
    print(f"suggested for {quick_uid}: {suggested.reason}\n{shown}")
    choice = pause_flow_run(
        wait_for_input=ScanChoice.with_initial_data(
            description=f"**Next scan after {quick_uid}**\n\n{suggested.reason}\n\n"
                        f"Suggested plans:\n\n{shown}\n\n"
                        "Approve as shown, edit the moves, rows or angles, or untick approve "
                        "to refuse.", **initial.model_dump()),
        timeout=wait_s, poll_interval=PAUSE_POLL_S)
    edited = choice.model_dump(exclude={"approve", "note"}) != initial.model_dump(
        exclude={"approve", "note"})
    inputs = {**suggested.inputs, "suggested": initial.model_dump(),
              "person": choice.model_dump()}
    if not choice.approve:
        decision = Decision("refuse", f"refused by a person: {choice.note or 'no note'}", inputs)
        queued: list[str] = []
    else:
        decision = Decision("align", ("approved with edits" if edited else "approved") +
                            f" by a person: {suggested.reason}", inputs,
                            moves={"stage_x": choice.move_x_px, "stage_y": choice.move_y_px},
                            scan={"row_start": choice.row_start, "row_stop": choice.row_stop})
        queued = queue_plans(ctx, full_scan_plans(quick_uid, decision,
                                                  {**scan, "angles": choice.angles}),
                             start=start_queue)
    decision_uid = publish_decision(ctx, quick_uid, decision.to_dict(),
                                    analysis_uid=analysis_uid, queued=queued)
    return {"decision": decision.to_dict(), "analysis_uid": analysis_uid,
            "decision_uid": decision_uid, "queued": queued}


@flow(name="stop-when-converged", log_prints=True)
def stop_when_converged(uid: str, home: str | None = None, timeout_s: float = 900.0,
                        poll_s: float = 0.25, threshold: float | None = None,
                        patience: int | None = None, min_fraction: float | None = None) -> dict:
    """Watch run ``uid``'s live views; stop the scan once converged (or record why not)."""
    import time

    from tomopipe.tasks import results_table, run_progress
    from tomopipe.tasks.analysis import convergence
    from tomopipe.tasks.analysis.decisions import stop_decision
    from tomopipe.tasks.storage.live_views import read_live_attrs

    ctx = flow_context(home)
    rules = {k: v for k, v in (("threshold", threshold), ("patience", patience),
                               ("min_fraction", min_fraction)) if v is not None}
    updates: list[tuple[float, float | None]] = []
    live_path, seen, decision = None, None, None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if live_path is None:
            live_path = (run_progress.read_all(ctx.home).get(uid) or {}).get("live_path")
        row = results_table.read_one(ctx.home, uid) or {}
        if live_path:
            try:
                live = read_live_attrs(live_path)
            except OSError:
                live = {}
            if live.get("updated") and live.get("updated") != seen:
                seen = live["updated"]
                updates.append((float(live.get("fraction") or 0.0), live.get("correlation")))
                state = convergence.assess(updates, **rules)
                if state.converged:
                    decision = stop_decision(state.to_dict(), uid=uid)
                    break
        if row.get("state") in ("completed", "failed"):
            break
        time.sleep(poll_s)
    if decision is None:
        state = convergence.assess(updates, **rules)
        decision = stop_decision({**state.to_dict(), "reason": "the scan ended (or the watch "
                                  f"timed out) before converging: {state.reason}"}, uid=uid)
        queued: list[str] = []
    else:
        stop_scan(ctx, uid, f"{AGENT_STOP}: {decision.reason}")
        queued = ["re_stop"]
    decision = Decision(decision.action, decision.reason,
                        {**decision.inputs, "updates": updates, "rules": rules})
    decision_uid = publish_decision(ctx, uid, decision.to_dict(), queued=queued)
    return {"decision": decision.to_dict(), "decision_uid": decision_uid, "updates": updates}
