"""Prefect events for Bluesky runs: ``bluesky.run.start`` and ``bluesky.run.stop``.

What triggers filter on goes into the resource labels (trigger ``match`` sees labels only);
everything else goes into the payload.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from tomopipe.errors import ConfigError

log = logging.getLogger(__name__)

START, STOP = "bluesky.run.start", "bluesky.run.stop"
_ID_NAMESPACE = uuid.UUID("5b0e3c1e-7d1a-4c59-9a31-2f1f3e0c7a11")


def run_resource(start: dict, *, beamline: str, tomo_plans) -> dict[str, str]:
    """Resource labels of a run (all strings, as Prefect requires)."""
    from tomopipe.tasks.sources.bluesky_run import is_tomo_run

    plan = str(start.get("plan_name", ""))
    return {
        "prefect.resource.id": f"bluesky.run.{start['uid']}",
        "bluesky.uid": str(start["uid"]),
        "bluesky.plan_name": plan,
        "bluesky.scan_id": str(start.get("scan_id", "")),
        "bluesky.beamline": str(start.get("beamline") or beamline),
        "bluesky.tomo": "true" if is_tomo_run(start, tomo_plans) else "false",
    }


def start_payload(start: dict) -> dict:
    keep = ("sample", "time", "proposal", "operator", "num_points", "scan_id")
    return {k: start[k] for k in keep if k in start}


def stop_payload(stop: dict) -> dict:
    return {
        "exit_status": stop.get("exit_status"),
        "reason": stop.get("reason", ""),
        "time": stop.get("time"),
        "num_events": stop.get("num_events", {}),
    }


def event_id(uid: str, event: str) -> uuid.UUID:
    """Deterministic: a replayed emission carries the same id, which the server can drop."""
    return uuid.uuid5(_ID_NAMESPACE, f"{uid}/{event}")


def post_event(event: str, resource: dict, payload: dict, id: uuid.UUID):
    """Send one event and return it once the server has taken it (HTTP 204), or raise.

    Not ``prefect.events.emit_event``: that queues the event for a background websocket and
    returns at once, so an event queued while the server is down was lost after the bridge had
    recorded it as sent (and then neither retried nor reconciled)."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.events import Event

    sent = Event(event=event, resource=resource, payload=payload, id=id)
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[sent.model_dump(mode="json")]).raise_for_status()
    return sent


class PrefectEmitter:
    """Sends events to the Prefect server named by PREFECT_API_URL."""

    def __init__(self, send: Callable | None = None):
        from prefect.settings import PREFECT_API_URL

        if send is None:
            if not PREFECT_API_URL.value():
                raise ConfigError("PREFECT_API_URL is not set: events would go to a throw-away "
                                  "server and no flow would start")
            send = post_event
        self._send = send

    def __call__(self, event: str, resource: dict, payload: dict) -> None:
        sent = self._send(event=event, resource=resource, payload=payload,
                          id=event_id(resource["bluesky.uid"], event))
        if sent is None:
            raise ConfigError(f"event {event} for {resource['bluesky.uid']} was not emitted")

    @staticmethod
    def flush(timeout: float = 10.0) -> None:
        """Wait until queued events are delivered (the client sends from a background thread)."""
        from prefect.events.worker import EventsWorker

        try:
            EventsWorker.drain_all(timeout=timeout)
        except Exception as exc:  # nothing queued, or the worker already stopped
            log.debug("event flush: %s", exc)
