"""Bluesky runs in the Tiled catalog: connect, search, read a run back as documents.

Plain functions (no Prefect). The catalog is a Tiled server holding ``CatalogOfBlueskyRuns``
written by bluesky's TiledWriter (StreamResource/StreamDatum layout).
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime
from pathlib import Path

from tomopipe.context import RunContext, run_context
from tomopipe.errors import InputError, ServiceError

log = logging.getLogger(__name__)


def connect_catalog(url: str, api_key: str | None = None):
    """A Tiled client on the catalog root (raises ServiceError when unreachable)."""
    from tiled.client import from_uri
    from tomopipe.infra.plain_http import ssl_context_for

    try:
        return from_uri(url, api_key=api_key, include_data_sources=True,
                        verify=ssl_context_for(url) or True)
    except Exception as exc:  # httpx errors, refused connections, bad keys
        raise ServiceError(f"Tiled catalog at {url} cannot be reached: {exc}") from exc


def catalog_for(ctx: RunContext):
    """The catalog of the run context's services."""
    return connect_catalog(ctx.address("tiled"), ctx.tiled_api_key)


def catalog_for_home(home: Path):
    """The catalog of ``home``'s services (for commands and tools outside a flow run)."""
    return catalog_for(run_context(home))


def get_run(catalog, uid: str):
    """The run node, or InputError when the catalog has no run with this uid."""
    try:
        return catalog[uid]
    except KeyError as exc:
        raise InputError(uid, "no such run in the catalog") from exc


def parse_time(value) -> float | None:
    """A time given as epoch seconds, ISO 8601 text or a datetime, as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise InputError(text, "not a time: give epoch seconds or ISO 8601 (2026-01-31T12:00)",
                         "since/until") from exc


def search_runs(catalog, *, plan: str | None = None, since=None, until=None,
                sample: str | None = None) -> list[str]:
    """Uids of runs matching every criterion given, oldest first."""
    from databroker.queries import Key, TimeRange

    results = catalog
    if plan:
        results = results.search(Key("start.plan_name") == plan)
    t0, t1 = parse_time(since), parse_time(until)
    if t0 is not None or t1 is not None:
        results = results.search(TimeRange(since=t0, until=t1))
    if sample:
        results = results.search(Key("start.sample") == sample)
    return list(results.keys())


def recent_runs(catalog, since_s: float) -> list[str]:
    return search_runs(catalog, since=time.time() - since_s)


def run_metadata(run) -> tuple[dict, dict | None]:
    """(start, stop) documents of a run; stop is None while it is still going."""
    md = dict(run.metadata)
    return dict(md.get("start") or {}), (dict(md["stop"]) if md.get("stop") else None)


def _streams(run):
    """(name, stream node) of a run's streams, from one listing of the run (each child comes
    with its metadata: no request per stream)."""
    base = run.base if hasattr(run, "base") else run
    for key, node in base.items():
        if "data_keys" in dict(node.metadata):
            yield key, node


def _children(stream) -> dict:
    """A stream's nodes (its detector arrays and its ``internal`` table) from one listing."""
    sbase = stream.base if hasattr(stream, "base") else stream
    return dict(sbase.items())


def _external_arrays(stream, children: dict | None = None):
    """(data key, array node) of a stream's detector data registered in the catalog."""
    children = _children(stream) if children is None else children
    for key, spec in dict(stream.metadata["data_keys"]).items():
        if spec.get("external") and key in children:
            yield key, children[key]


def _vanished_as_key_error(read):
    """A run deleted while it is read (the bridge rebuilds a run's node after a restart, or
    when the catalog was down) raises KeyError, as a run not yet in the catalog does, rather
    than the client's 404 error: callers wait and look again."""

    @functools.wraps(read)
    def wrapper(run, *args, **kwargs):
        from tiled.client.utils import ClientError

        try:
            return read(run, *args, **kwargs)
        except ClientError as exc:
            if exc.response.status_code == 404:
                raise KeyError(str(getattr(run, "uri", run))) from exc
            raise

    return wrapper


@_vanished_as_key_error
def frames_landed(run) -> int:
    """Frames registered so far across the run's external (detector) arrays."""
    return sum(int(node.structure().shape[0])
               for _, stream in _streams(run) for _, node in _external_arrays(stream))


@_vanished_as_key_error
def run_documents(run) -> list[tuple[str, dict]]:
    """The run as (name, document) pairs: from the server's document export when it has one,
    otherwise rebuilt from the catalog's nodes (start, descriptors, stream resources covering
    every registered frame, events from the internal tables, stop)."""
    server = str(getattr(run, "uri", "")).split("/api/")[0]
    if server not in _NO_EXPORT:
        try:
            docs = [(name, dict(doc)) for name, doc in run.documents()]
            if docs:
                return docs
        except Exception as exc:  # servers without the json-seq exporter answer 406
            if getattr(getattr(exc, "response", None), "status_code", None) == 404:
                raise  # the run vanished, not the exporter
            log.debug("document export unavailable (%s); rebuilding from nodes", exc)
            _NO_EXPORT.add(server)
    return _documents_from_nodes(run)


_NO_EXPORT: set[str] = set()  # servers that answered the document export with an error


@_vanished_as_key_error
def run_layout(run) -> list[tuple[str, dict]]:
    """The run's documents without its events: start, descriptors, the stream resources and
    datums of every frame registered so far, and the stop when there is one. Where the frames
    are, from one listing of the run and one per stream (no table reads): what a stream needs
    to start, taking its angles from the run's plan (``scan_from_documents``'s
    ``planned_angles_deg``)."""
    return _documents_from_nodes(run, events=False)


def _documents_from_nodes(run, *, events: bool = True) -> list[tuple[str, dict]]:
    start, stop = run_metadata(run)
    uid = start["uid"]
    docs: list[tuple[str, dict]] = [("start", start)]
    for name, stream in _streams(run):
        md = dict(stream.metadata)
        desc_uid = md.get("uid") or f"{uid}-{name}"
        descriptor = {**md, "name": name, "uid": desc_uid, "run_start": uid}
        docs.append(("descriptor", descriptor))
        children = _children(stream)
        for key, node in _external_arrays(stream, children):
            sources = node.data_sources()
            if not sources or not sources[0].assets:
                continue  # registered but not yet described: the bridge is rewriting the run
            source = sources[0]
            n = int(node.structure().shape[0])
            params = {k: v for k, v in dict(source.parameters).items() if k != "swmr"}
            sres_uid = f"{desc_uid}-{key}"
            docs.append(("stream_resource", {
                "uid": sres_uid, "data_key": key, "mimetype": source.mimetype,
                "uri": source.assets[0].data_uri, "parameters": params, "run_start": uid,
            }))
            if n:
                docs.append(("stream_datum", {
                    "uid": f"{sres_uid}/0", "stream_resource": sres_uid, "descriptor": desc_uid,
                    "indices": {"start": 0, "stop": n}, "seq_nums": {"start": 1, "stop": n + 1},
                }))
        if events and "internal" in children:
            docs.extend(("event", ev) for ev in _events(children["internal"].read(), desc_uid))
    if stop:
        docs.append(("stop", stop))
    return docs


def _events(table, desc_uid: str):
    columns = [c for c in table.columns if c not in ("seq_num", "time") and not c.startswith("ts_")]
    for i, row in enumerate(table.to_dict("records")):
        seq = int(row.get("seq_num", i + 1))
        yield {
            "uid": f"{desc_uid}/{seq}", "descriptor": desc_uid, "seq_num": seq,
            "time": float(row.get("time", 0.0)),
            "data": {c: _plain(row[c]) for c in columns},
            "timestamps": {c: _plain(row.get(f"ts_{c}", row.get("time", 0.0))) for c in columns},
            "filled": {},
        }


def _plain(value):
    return value.item() if hasattr(value, "item") else value
