"""Wake a Prefect worker the moment a flow run of its pool is scheduled.

A worker finds runs by polling the API. Polling fast enough for a live run to start within a
second (every 0.25 s) costs a database write per poll (the server marks the pool's queues as
polled), and on the embedded SQLite server those writes held up the very API calls that start a
run: stalls of ~2 s, and once a 60 s lock wait. So the worker polls slowly (a fallback for
missed events and runs scheduled ahead) and this subscribes to the server's event stream instead:
on each ``prefect.flow-run.Scheduled`` event related to the pool it asks the worker to poll now.
Prefect's own cancellation observer listens to the same stream for the same reason.
"""

from __future__ import annotations

import logging

import anyio

WAKE_EVENTS = ("prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry")
RETRY_S = 2.0  # after the event stream drops; the worker's own polling covers the gap
# Under "prefect." so the worker's Prefect logging configuration prints it in the worker's log.
log = logging.getLogger("prefect.tomopipe.wakeup")


def pool_filter(pool_id):
    """Flow-run scheduling events related to this work pool."""
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    return EventFilter(event=EventNameFilter(name=list(WAKE_EVENTS)),
                       any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{pool_id}"]))


async def wake_on_scheduled(worker, *, subscriber=None) -> None:
    """Run until cancelled: poll ``worker`` for runs whenever its pool gets a scheduled run.

    ``subscriber`` (a callable taking an EventFilter, returning an async context manager that
    iterates events) defaults to Prefect's websocket subscriber.
    """
    if subscriber is None:
        from prefect.events.clients import get_events_subscriber as subscriber
    while getattr(worker, "_work_pool", None) is None or not worker.is_setup:
        await anyio.sleep(0.1)  # the pool's id comes with the worker's first sync
    while True:
        try:
            async with subscriber(pool_filter(worker._work_pool.id)) as events:
                log.info("waking on scheduled flow runs of pool %s", worker._work_pool.name)
                async for event in events:
                    log.info("woken by %s %s", event.event, event.resource.id)
                    await worker.get_and_submit_flow_runs()
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # the server restarting, say: polling goes on meanwhile
            log.warning("event stream lost (%s: %s); retrying in %.0f s",
                        type(exc).__name__, exc, RETRY_S)
        await anyio.sleep(RETRY_S)


async def run_worker(worker, printer=print, home: str | None = None) -> None:
    """Start ``worker`` (polling, heartbeats) with the wake-up listener beside it and, for a
    tomopipe home, the crash sweep (deployments/crash_recovery.py: runs whose process died are
    marked Crashed and submitted again once)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(wake_on_scheduled, worker)
        if home:
            from tomopipe.deployments.crash_recovery import watch

            tg.start_soon(watch, home, worker._work_pool_name)
        try:
            await worker.start(printer=printer)
        finally:
            tg.cancel_scope.cancel()
