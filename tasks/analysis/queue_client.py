"""Talk to the queue server (bluesky-queueserver's RE Manager) through bluesky-queueserver-api,
and find analysis runs in the catalog: what an agent reads and where its plans go."""

from __future__ import annotations

import time

from tomopipe.tasks.analysis.documents import ANALYSIS_PLAN

from tomopipe.errors import ServiceError


def manager(control: str | None, *, timeout: float = 10.0):
    """A REManagerAPI client at ``control``; one line naming the fault when there is none."""
    if not control:
        raise ServiceError("no queue server: its address (services.queue_control) is not set; "
                           "start it with `tomopipe up --with-queue`")
    from bluesky_queueserver_api.zmq import REManagerAPI

    return REManagerAPI(zmq_control_addr=control, timeout_recv=timeout, timeout_send=timeout)


def submit(control: str, plans: list[tuple[str, list, dict]], *, start: bool = True) -> list[str]:
    """Add ``(name, args, kwargs)`` plans to the back of the queue, start it; item uids."""
    from bluesky_queueserver_api import BPlan

    rm = manager(control)
    try:
        uids = []
        for name, args, kwargs in plans:
            try:
                uids.append(rm.item_add(BPlan(name, *args, **kwargs))["item"]["item_uid"])
            except rm.RequestFailedError as exc:
                raise ServiceError(f"queue server {control}: plan {name!r} refused: {exc}") from exc
        if start and rm.status()["manager_state"] == "idle":
            rm.queue_start()
        return uids
    finally:
        rm.close()


def finished_item(control: str, item_uid: str, *, timeout: float, poll_s: float = 0.5) -> dict:
    """Wait until queue item ``item_uid`` is in the history; its history entry."""
    rm = manager(control)
    try:
        deadline = time.monotonic() + timeout
        while True:
            for item in reversed(rm.history_get()["items"]):
                if item.get("item_uid") == item_uid:
                    return item
            if time.monotonic() > deadline:
                raise ServiceError(f"queue server {control}: item {item_uid} did not finish in "
                                   f"{timeout:.0f} s")
            time.sleep(poll_s)
    finally:
        rm.close()


def running_run_uid(control: str, item_uid: str, *, timeout: float, poll_s: float = 0.2
                    ) -> str | None:
    """The run uid of queue item ``item_uid`` once it runs (None if it ended first)."""
    rm = manager(control)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = rm.status()
            if status.get("running_item_uid") == item_uid:
                runs = rm.re_runs(option="open")["run_list"]
                if runs:
                    return runs[-1]["uid"]
            elif any(i.get("item_uid") == item_uid for i in rm.history_get()["items"]):
                return None
            time.sleep(poll_s)
        raise ServiceError(f"queue server {control}: item {item_uid} did not start in "
                           f"{timeout:.0f} s")
    finally:
        rm.close()


def stop_running(control: str, reason: str, *, timeout: float = 60.0) -> None:
    """End the running scan before its next projection, its stop document saying ``reason``:
    the beamline's ``request_stop`` function (infra/simulator/queue_plans.py), run through the
    queue server in the background while the plan runs. Returns once the manager is idle."""
    from bluesky_queueserver_api import BFunc

    rm = manager(control)
    try:
        try:
            rm.function_execute(BFunc("request_stop", reason), run_in_background=True)
        except rm.RequestFailedError as exc:
            raise ServiceError(f"queue server {control}: request_stop refused: {exc}") from exc
        deadline = time.monotonic() + timeout
        while rm.status()["manager_state"] != "idle":
            if time.monotonic() > deadline:
                raise ServiceError(f"queue server {control}: the running plan did not end "
                                   f"{timeout:.0f} s after request_stop")
            time.sleep(0.1)
    finally:
        rm.close()


def find_analysis(catalog, raw_uid: str) -> tuple[str, dict] | None:
    """(uid, measurements) of the newest analysis run of ``raw_uid`` in the catalog, or None."""
    from databroker.queries import Key

    found = None
    for uid, node in catalog.search(Key("analyzes") == raw_uid).items():
        start = dict(node.metadata.get("start") or {})
        if start.get("plan_name") == ANALYSIS_PLAN:
            found = (uid, {**dict(start.get("summary") or {}), "raw_uid": raw_uid})
    return found
