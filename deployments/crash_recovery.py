"""Flow runs whose process died: marked Crashed, recorded as crashed, and run once more.

A flow run whose process dies without a word (its worker SIGKILLed, the machine rebooted, the
out-of-memory killer) stays ``Running`` in Prefect for good. Two detectors end that:

- **The worker's own books** (this machine, seconds): the process that starts each flow run,
  ``infra/zygote_client.py``, names it in ``$TOMOPIPE_HOME/flow-runs/<flow run id>.json`` while
  it runs. ``sweep`` (run by the worker every ``SWEEP_S`` seconds and at its start, so
  ``tomopipe up`` after a crash finds what the dead worker left) proposes ``Crashed`` for each
  run whose recorded processes are all gone while Prefect still has it running.
- **Prefect's zombie detection** (any machine, minutes): flow runs send heartbeat events every
  ``HEARTBEAT_S`` seconds (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; 30 s is Prefect's minimum), and
  the automation ``register_zombie_automation`` creates, as Prefect's guide "How to detect and
  respond to zombie flows" describes, marks a run Crashed when they stop for ``ZOMBIE_AFTER_S``.
  It covers runs the books cannot see (a worker on another host, a run started without the
  zygote client), at the price of minutes.

The first is the one the embedded services rely on: a test or a person waits seconds, not the
90 s and more that heartbeats need to miss.

A run a worker claimed (``Pending``) but never started (the worker or the server died in
between) is stuck as well, since no worker takes a Pending run again: the sweep of the next
worker sets it back to Scheduled.

Then ``sweep`` re-submits every Crashed run of the work pool once, whoever marked it: the same
deployment with the same parameters, tagged ``RERUN_TAG``, with an idempotency key made of the
crashed run's id (two sweeps cannot make two re-runs). Its slabs resume from their done-markers
(tasks/storage), so only what was not finished is computed again. A re-run that crashes in turn
is not re-run again. The results table (tasks/results_table.py) shows ``crashed`` with the
reason, then the re-run's own states.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tomopipe.infra.zygote_client import RECORDS, start_ticks

log = logging.getLogger("prefect.tomopipe.crash_recovery")

SWEEP_S = 5.0
HEARTBEAT_S = 30  # Prefect's minimum heartbeat period
ZOMBIE_AFTER_S = 90  # three heartbeats missed
ZOMBIE_AUTOMATION = "tomopipe: crash flow runs whose heartbeats stopped"
RERUN_TAG = "tomopipe-rerun"  # a re-run made here (never re-run again)
HANDLED_TAG = "tomopipe-crash-handled"  # a crashed run already recorded and re-run
LOOKBACK = timedelta(days=1)  # crashed runs older than this are left alone


# -- the worker's books -----------------------------------------------------------------------
def records_dir(home: Path | str) -> Path:
    return Path(home) / RECORDS


def dead_records(home: Path | str) -> list[tuple[Path, str]]:
    """(record file, flow run id) of each launch record whose processes are all gone."""
    dead = []
    folder = records_dir(home)
    if not folder.is_dir():
        return dead
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            procs = [(int(pid), ticks) for pid, ticks in record["processes"]]
            run_id = str(record["flow_run_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignored an unreadable launch record %s: %s", path, exc)
            continue
        if all(ticks is None or start_ticks(pid) != ticks for pid, ticks in procs):
            dead.append((path, run_id))
    return dead


async def crash_dead_runs(client, home: Path | str) -> list[str]:
    """Propose Crashed for each flow run whose recorded processes died while it was not final;
    returns their ids. Records of runs that ended are removed either way."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    crashed = []
    for path, run_id in dead_records(home):
        try:
            flow_run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            path.unlink(missing_ok=True)
            continue
        if not flow_run.state or not flow_run.state.is_final():
            message = ("the flow run's process died (its worker was killed, or it was) while "
                       f"the run was {flow_run.state.name if flow_run.state else 'starting'}")
            await client.set_flow_run_state(run_id, Crashed(message=message), force=True)
            log.warning("flow run %s (%s) marked Crashed: %s", flow_run.name, run_id, message)
            crashed.append(run_id)
        path.unlink(missing_ok=True)
    return crashed


async def reschedule_unstarted(client, home: Path | str, pool: str, since: datetime) -> list[str]:
    """Runs a worker claimed (``Pending``) before ``since`` (this worker's start) and never
    started: no launch record names them. Their worker died between claiming and starting them
    (or the server went down in between), and no worker takes a Pending run again. They are set
    back to Scheduled, so this worker starts them; returns their ids."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled

    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200)
    done = []
    for run in runs:
        claimed = run.state.timestamp if run.state else None
        if claimed is None or claimed >= since or (records_dir(home) / f"{run.id}.json").exists():
            continue
        await client.set_flow_run_state(run.id, Scheduled(
            message="claimed by a worker that never started it: scheduled again"), force=True)
        log.warning("flow run %s (%s) was claimed but never started: scheduled again",
                    run.name, run.id)
        done.append(str(run.id))
    return done


# -- after a crash: record it, run it once more -------------------------------------------------
async def crashed_runs(client, pool: str) -> list:
    """Crashed flow runs of the work pool from the last day not handled yet."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    since = datetime.now(UTC) - LOOKBACK
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200)
    return [r for r in runs if HANDLED_TAG not in (r.tags or [])]


def may_rerun(flow_run) -> bool:
    """Once: not a run that is itself a re-run, and only runs of a deployment."""
    return RERUN_TAG not in (flow_run.tags or []) and flow_run.deployment_id is not None


async def rerun_once(client, flow_run) -> str | None:
    """Submit the crashed run's deployment again with its parameters (see ``may_rerun``);
    returns the new run's id."""
    if not may_rerun(flow_run):
        return None
    new = await client.create_flow_run_from_deployment(
        flow_run.deployment_id, parameters=dict(flow_run.parameters or {}),
        tags=[RERUN_TAG, f"rerun-of:{flow_run.id}"],
        idempotency_key=f"tomopipe-rerun-of-{flow_run.id}")
    log.warning("flow run %s (%s) crashed: submitted again as %s", flow_run.name, flow_run.id,
                new.id)
    return str(new.id)


def record_crash(home: Path | str, flow_run) -> None:
    """``crashed`` in the results table for the run's source, with the reason (before the re-run
    is submitted, so its own states come after)."""
    from tomopipe.tasks import results_table

    uid = (flow_run.parameters or {}).get("uid") or (flow_run.parameters or {}).get("source")
    if not isinstance(uid, str):
        return
    said = (flow_run.state.message if flow_run.state else None) or ""
    reason = said if said.startswith(("the flow run's process", "no heartbeat")) else \
        f"its process ended before the run finished ({said or 'no reason given'})"
    then = "; submitted again" if may_rerun(flow_run) else \
        "; not submitted again (it was a re-run already)"
    results_table.record(home, uid, "crashed", message=f"crashed: {reason}{then}",
                         flow_run_id=str(flow_run.id))


async def sweep(client, home: Path | str, pool: str, since: datetime | None = None) -> dict:
    """One round: crash the runs whose processes died, schedule again the runs claimed before
    ``since`` and never started, then record and re-run every crashed run of the pool once.
    Returns {"crashed": [...], "rescheduled": [...], "rerun": {crashed id: new id}}."""
    crashed = await crash_dead_runs(client, home)
    rescheduled = await reschedule_unstarted(client, home, pool, since) if since else []
    rerun: dict[str, str | None] = {}
    for flow_run in await crashed_runs(client, pool):
        run_home = (flow_run.parameters or {}).get("home") or home
        try:
            record_crash(run_home, flow_run)
        except Exception as exc:  # the table is a record; the re-run matters more
            log.warning("could not record the crash of %s: %s", flow_run.id, exc)
        rerun[str(flow_run.id)] = await rerun_once(client, flow_run)
        await client.update_flow_run(flow_run.id, tags=[*(flow_run.tags or []), HANDLED_TAG])
    return {"crashed": crashed, "rescheduled": rescheduled, "rerun": rerun}


async def watch(home: Path | str, pool: str, every: float = SWEEP_S) -> None:
    """Sweep now and then every ``every`` seconds until cancelled (the worker runs this)."""
    import anyio
    from prefect.client.orchestration import get_client

    since = datetime.now(UTC)  # runs claimed before this worker started were not its own
    while True:
        try:
            async with get_client() as client:
                while True:
                    await sweep(client, home, pool, since)
                    await anyio.sleep(every)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # the server restarting, say: try again next round
            log.warning("crash sweep failed (%s: %s); trying again in %.0f s",
                        type(exc).__name__, exc, every)
        await anyio.sleep(every)


# -- Prefect's zombie detection ----------------------------------------------------------------
def register_crash_detection() -> str:
    """Register Prefect's zombie-flow automation on the Prefect API in scope (idempotent);
    returns its id. Called once by ``deployments.register.register_all``: keep that call when
    registration changes. The flow runs' heartbeats come from the worker's environment
    (PREFECT_FLOWS_HEARTBEAT_FREQUENCY = HEARTBEAT_S in infra/services.py WORKER_ENV)."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def register() -> str:
        async with get_client() as client:
            return await register_zombie_automation(client)

    return asyncio.run(register())


async def register_zombie_automation(client) -> str:
    """Create (or replace) the automation that marks a flow run Crashed when its heartbeats
    stop for ZOMBIE_AFTER_S seconds, as in Prefect's zombie-flow guide; returns its id.

    Called once from ``deployments.register.register_all``; idempotent (it deletes an earlier
    automation of the same name first). The re-run that follows a crash is ``sweep``'s.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    for old in await client.read_automations_by_name(ZOMBIE_AUTOMATION):
        await client.delete_automation(old.id)
    automation = AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="Prefect's zombie-flow detection: a running flow run that sent no heartbeat "
                    f"for {ZOMBIE_AFTER_S} s is marked Crashed (tomopipe's worker then submits "
                    "it again once).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S)),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {ZOMBIE_AFTER_S} s: the flow run's process is gone")],
    )
    return str(await client.create_automation(automation))

