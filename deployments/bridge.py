"""The Bluesky-to-Prefect bridge: documents off the bus -> catalog -> Prefect events.

Every document is written to the catalog first; only then does the bridge emit
``bluesky.run.start`` / ``bluesky.run.stop``, so a flow woken by the event finds the run. A
malformed document is logged and skipped; a message that does not decode (deployments/bus.py,
msgpack by default, which runs no code) is logged with its topic and dropped. A durable ledger
keeps events to one per run, and at start-up the bridge reconciles: open runs are rebuilt from
the journal, and recent runs in the catalog that lack an event (they came while the bridge was
down) get it. When the catalog cannot take a run's document (Tiled down), the run is stalled:
its documents go on into the journal only, its events wait, and every retry period the bridge
tries to write the run again from the journal; once that works the run goes on as if nothing had
happened.

Run it as ``python -m tomopipe.deployments.bridge --home H`` (``tomopipe up`` does).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

from tomopipe.deployments.events import START, STOP, run_resource, start_payload, stop_payload
from tomopipe.deployments.ledger import Journal, Ledger, Spool

from tomopipe.config import DEFAULT_TOMO_PLANS
from tomopipe.errors import InputError

log = logging.getLogger("tomopipe.bridge")

FLUSH_EVERY_S = 1.0  # the --flush-every default
# fields each document must carry before the bridge will route it
REQUIRED = {
    "start": ("uid", "time"),
    "stop": ("uid", "run_start", "exit_status"),
    "descriptor": ("uid", "run_start", "data_keys"),
    "event": ("uid", "descriptor", "data"),
    "event_page": ("descriptor", "data"),
    "stream_resource": ("uid",),
    "stream_datum": ("uid", "stream_resource", "descriptor", "indices"),
    "resource": ("uid",),
    "datum": ("datum_id", "resource"),
    "datum_page": ("resource",),
}


class Bridge:
    def __init__(self, writer, emit, ledger: Ledger, journal: Journal, *, beamline: str = "sim",
                 tomo_plans=DEFAULT_TOMO_PLANS):
        self.writer, self.emit, self.ledger, self.journal = writer, emit, ledger, journal
        self.beamline, self.tomo_plans = beamline, tuple(tomo_plans)
        self._starts: dict[str, dict] = {}  # open run uid -> start document
        self._owner: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._seen: dict[str, set[str]] = {}  # open run uid -> document uids already handled
        self._ignored: set[str] = set()  # runs sent again after they were handled
        self._unsent: dict[tuple[str, str], tuple[dict, dict]] = {}  # emissions that failed
        self._stalled: set[str] = set()  # open runs the catalog could not take; see retry_stalled
        self._lock = threading.RLock()
        self.handled = self.skipped = 0
        # a stream's first frame is waiting to reach the catalog: a live flow waits for it
        # to locate the files, so it goes at the next turn instead of with the second's batch
        self.first_frame_waiting = False

    # -- routing -----------------------------------------------------------------------------
    def _run_of(self, name: str, doc) -> str:
        if name not in REQUIRED:
            raise InputError(f"document {name!r}", "unknown document name")
        if not isinstance(doc, dict):
            raise InputError(f"{name} document", f"expected a mapping, got {type(doc).__name__}")
        missing = [k for k in REQUIRED[name] if k not in doc]
        if missing:
            raise InputError(f"{name} document {doc.get('uid', '?')}", f"missing {missing}")
        if name == "start":
            return str(doc["uid"])
        if name in ("stop", "descriptor"):
            return str(doc["run_start"])
        if name in ("event", "event_page"):
            key = doc["descriptor"]
        elif name == "stream_datum":
            key = doc["stream_resource"] if doc["stream_resource"] in self._owner \
                else doc["descriptor"]
        elif name in ("datum", "datum_page"):
            key = doc["resource"]
        else:  # stream_resource, resource
            if doc.get("run_start"):
                return str(doc["run_start"])
            if len(self._starts) == 1:  # unambiguous: the one open run
                return next(iter(self._starts))
            raise InputError(f"{name} document {doc['uid']}", "no run_start and several runs open")
        if key not in self._owner:
            raise InputError(f"{name} document {doc.get('uid', '?')}",
                             f"refers to {key}, which belongs to no open run")
        return self._owner[key]

    # -- one document ------------------------------------------------------------------------
    def handle(self, name, doc) -> None:
        """Persist one document and emit the events it implies. Never raises."""
        name = getattr(name, "name", name)  # bluesky-kafka hands DocumentNames members
        with self._lock:
            try:
                self._handle(name, doc)
                self.handled += 1
            except InputError as exc:
                self.skipped += 1
                log.warning("skipped a malformed document: %s", exc)
            except Exception:
                self.skipped += 1
                log.exception("could not handle a %s document; the bridge goes on", name)

    def _handle(self, name: str, doc) -> None:
        uid = self._run_of(name, doc)
        if uid in self._ignored:
            return
        if name == "start":
            if uid in self._starts:
                return  # the same start again while its run is open: a duplicate document
            # a run seen before is ignored; without a writer of our own, a start already
            # reconciled from the facility's catalog is taken up (its events stay single)
            writes = getattr(self.writer, "catalog", None) is not None
            if self.ledger.has(uid, STOP) or (writes and self.ledger.has(uid, START)):
                log.info("run %s was sent again: ignored", uid)
                self._ignored.add(uid)
                return
            self._open(uid, doc)
        elif uid not in self._starts:
            raise InputError(f"{name} document", f"belongs to run {uid}, which is not open")
        doc_id = doc.get("uid") or doc.get("datum_id")
        if doc_id is not None:
            if doc_id in self._seen[uid]:
                return  # the same document twice
            self._seen[uid].add(doc_id)
        if name in ("descriptor", "stream_resource", "resource"):
            self._owner[doc["uid"]] = uid
        self.journal.append(uid, name, doc)
        if uid in self._stalled:
            return  # written with the rest of the run by retry_stalled
        try:
            self.writer.write(name, doc, uid)  # catalog first, events after
        except Exception as exc:
            self._stalled.add(uid)
            log.warning("the catalog cannot take %s document of run %s (%s: %s): the run is "
                        "kept in the journal and written again when the catalog answers",
                        name, uid, type(exc).__name__, exc)
            return
        if name == "stream_datum" and (doc.get("indices") or {}).get("start") == 0:
            self.first_frame_waiting = True
        self._after_write(uid, name, doc)

    def flush(self) -> None:
        """Send what the catalog writer collected for the open runs: called when no document
        waits, so a slow scan is in the catalog frame by frame and a fast one in batches."""
        flush = getattr(self.writer, "flush", None)
        if flush is None:
            return
        with self._lock:
            self.first_frame_waiting = False
            for uid in [u for u in self._starts if u not in self._stalled]:
                try:
                    flush(uid)
                except Exception as exc:
                    self._stalled.add(uid)
                    log.warning("the catalog cannot take the frames of run %s (%s: %s): the "
                                "run is kept in the journal and written again when the "
                                "catalog answers", uid, type(exc).__name__, exc)

    def _after_write(self, uid: str, name: str, doc: dict) -> None:
        """The events a document implies, once it is in the catalog."""
        if name == "start":
            self._emit(uid, START, start_payload(doc))
        elif name == "stop":
            try:
                self._emit(uid, STOP, stop_payload(doc))
            finally:
                self._close(uid)  # the run is complete in the catalog even if the event waits

    def _open(self, uid: str, start: dict) -> None:
        self._starts[uid] = start
        self._seen[uid] = set()

    def _close(self, uid: str) -> None:
        self._starts.pop(uid, None)
        self._seen.pop(uid, None)
        for key in [k for k, v in self._owner.items() if v == uid]:
            del self._owner[key]
        self.journal.close_run(uid)

    def _emit(self, uid: str, event: str, payload: dict, start: dict | None = None) -> bool:
        if self.ledger.has(uid, event):
            return False
        start = start or self._starts[uid]
        resource = run_resource(start, beamline=self.beamline, tomo_plans=self.tomo_plans)
        try:
            self.emit(event, resource, payload)
        except Exception:
            self._unsent[(uid, event)] = (payload, start)  # sent again by retry_unsent
            raise
        self._unsent.pop((uid, event), None)
        self.ledger.record(uid, event)
        log.info("emitted %s for %s", event, uid)
        return True

    def retry_unsent(self) -> int:
        """Emit again what the Prefect server could not take; returns how many went out."""
        sent = 0
        for (uid, event), (payload, start) in list(self._unsent.items()):
            with self._lock:
                try:
                    sent += self._emit(uid, event, payload, start)
                except Exception as exc:
                    log.warning("event %s for %s still not sent: %s", event, uid, exc)
        return sent

    def retry_stalled(self) -> list[str]:
        """Write each stalled run again from its journal (replacing what part of it reached
        the catalog), then emit the events it is owed; returns the runs that went through."""
        recovered = []
        for uid in sorted(self._stalled):
            with self._lock:
                docs = self.journal.documents(uid)
                try:
                    self.writer.rebuild(uid, docs)
                except Exception as exc:
                    log.warning("run %s still cannot be written to the catalog: %s: %s",
                                uid, type(exc).__name__, exc)
                    continue
                self._stalled.discard(uid)
                log.info("run %s written to the catalog from %d journalled documents",
                         uid, len(docs))
                for name, doc in docs:
                    if name in ("start", "stop"):
                        try:
                            self._after_write(uid, name, doc)
                        except Exception as exc:  # left in _unsent for retry_unsent
                            log.warning("event for %s not sent: %s", uid, exc)
                recovered.append(uid)
        return recovered

    # -- after a restart ---------------------------------------------------------------------
    def resume_open_runs(self, max_age_s: float = 86400.0) -> list[str]:
        """Rebuild runs the journal holds open, so their remaining documents land."""
        resumed = []
        for uid in self.journal.open_runs():
            docs = self.journal.documents(uid)
            if not docs or docs[0][0] != "start":
                self.journal.close_run(uid)
                continue
            start = docs[0][1]
            if time.time() - float(start.get("time", 0)) > max_age_s:
                log.warning("dropped the journal of run %s: older than %.0f s", uid, max_age_s)
                self.journal.close_run(uid)
                continue
            with self._lock:
                self._open(uid, start)
                for name, doc in docs:
                    if doc.get("uid"):
                        self._seen[uid].add(doc["uid"])
                    if name in ("descriptor", "stream_resource", "resource"):
                        self._owner[doc["uid"]] = uid
                try:
                    self.writer.rebuild(uid, docs)
                except Exception as exc:  # the catalog is down too: retry_stalled goes on
                    self._stalled.add(uid)
                    log.warning("run %s cannot be written to the catalog yet: %s", uid, exc)
                else:
                    self._emit(uid, START, start_payload(start))
            resumed.append(uid)
            log.info("resumed run %s from %d journalled documents", uid, len(docs))
        return resumed

    def reconcile(self, catalog, lookback_s: float = 86400.0) -> list[tuple[str, str]]:
        """Emit the events missing for recent runs of the catalog; returns what it emitted."""
        from tomopipe.tasks.catalog import recent_runs, run_metadata

        emitted = []
        for uid in recent_runs(catalog, lookback_s):
            if {START, STOP} <= self.ledger.events_of(uid):
                continue
            try:
                start, stop = run_metadata(catalog[uid])
            except Exception as exc:
                log.warning("reconcile: cannot read run %s: %s", uid, exc)
                continue
            if not start.get("uid"):
                continue
            with self._lock:
                if self._emit(uid, START, start_payload(start), start):
                    emitted.append((uid, START))
                if stop and uid not in self._starts and \
                        self._emit(uid, STOP, stop_payload(stop), start):
                    emitted.append((uid, STOP))
        return emitted


# -- the process -------------------------------------------------------------------------------
def build(home: Path, *, writer_on: bool = True, kafka: dict | None = None):
    """(bridge, subscriber, catalog) for the services of ``home``."""
    from tomopipe.deployments.bus import KafkaSubscriber
    from tomopipe.deployments.catalog_writer import CatalogWriter, NullWriter
    from tomopipe.deployments.events import PrefectEmitter
    from tomopipe.tasks.catalog import catalog_for

    from tomopipe.context import run_context

    ctx = run_context(home)
    settings = ctx.settings
    catalog = catalog_for(ctx)
    writer = CatalogWriter(catalog) if writer_on else NullWriter()
    state_dir = Path(home) / "bridge"
    bridge = Bridge(writer, PrefectEmitter(), Ledger(state_dir / "ledger.sqlite"),
                    Journal(state_dir / "journal"), beamline=settings.beamline,
                    tomo_plans=settings.tomo_plans)
    subscriber = KafkaSubscriber(**kafka) if kafka else zmq_subscriber(ctx)
    return bridge, subscriber, catalog


def zmq_subscriber(ctx):
    """A subscriber to the services' 0MQ bus, with its serializer."""
    from tomopipe.deployments.bus import PICKLE_WARNING, ZmqSubscriber
    from tomopipe.infra.state import read_services

    # config.yaml's bus.serializer; a state file from the production bootstrap may name one
    kind = (read_services(ctx.home) or {}).get("zmq_serializer") or ctx.settings.bus.serializer
    if kind == "pickle":
        log.warning(PICKLE_WARNING)
    return ZmqSubscriber(ctx.address("zmq_out"), kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tomopipe.deployments.bridge",
                                     description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="TOMOPIPE_HOME of the services")
    parser.add_argument("--no-writer", action="store_true",
                        help="do not write documents to the catalog (a facility writer does)")
    parser.add_argument("--kafka-bootstrap", default=None, help="use Kafka instead of 0MQ")
    parser.add_argument("--kafka-topic", action="append", default=None)
    parser.add_argument("--lookback", type=float, default=86400.0,
                        help="seconds of catalog history to reconcile at start-up")
    parser.add_argument("--retry-every", type=float, default=10.0,
                        help="seconds between attempts to write runs the catalog could not "
                             "take and to send events that failed")
    parser.add_argument("--flush-every", type=float, default=FLUSH_EVERY_S,
                        help="seconds between writes of a run's frames to the catalog while "
                             f"frames keep coming (default {FLUSH_EVERY_S}); a stream's first "
                             "frame, and a frame after a quiet spell, are written at once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from tomopipe.config import home as default_home
    from tomopipe.context import run_context

    home = (args.home or default_home()).resolve()
    # The process's own environment, before Prefect reads its settings (the emitter's threads
    # do not see a scope set in this one): without it events go to a throw-away server.
    os.environ["PREFECT_API_URL"] = run_context(home).address("prefect_api")
    kafka = None
    if args.kafka_bootstrap:
        kafka = {"topics": args.kafka_topic or ["bluesky.documents"],
                 "bootstrap_servers": args.kafka_bootstrap}
    bridge, subscriber, catalog = build(home, writer_on=not args.no_writer, kafka=kafka)

    signal.signal(signal.SIGTERM, lambda *_: subscriber.stop())
    signal.signal(signal.SIGINT, lambda *_: subscriber.stop())
    ready = threading.Event()
    # the bus is drained into an unbounded queue at once: 0MQ drops messages past its high-water
    # mark while the catalog writes lag behind a fast detector
    inbox: queue.Queue = queue.Queue()
    spool = Spool(home / "bridge")

    def receive(name, doc):
        spool.append(getattr(name, "name", name), doc)  # durable before anything else
        inbox.put((name, doc))

    thread = threading.Thread(target=subscriber.run, args=(receive, ready.set), daemon=True)
    ready_file = home / "bridge" / "ready"
    ready_file.unlink(missing_ok=True)
    thread.start()  # subscribe first, so nothing sent during the reconciliation is missed
    ready.wait(10)
    resumed = bridge.resume_open_runs()
    backlog, leftover = spool.backlog, spool.pending()
    for name, doc in leftover:  # taken off the bus before a crash, maybe never handled
        bridge.handle(name, doc)
    bridge.flush()
    spool.handled(backlog)
    emitted = bridge.reconcile(catalog, args.lookback)
    log.info("bridge ready on %s (resumed %d open runs, %d spooled documents, reconciled %d "
             "events)", getattr(subscriber, "address", "kafka"), len(resumed), len(leftover),
             len(emitted))
    ready_file.write_text(f"{os.getpid()} {time.time()}\n")
    next_check = time.monotonic() + args.retry_every
    flushed = time.monotonic()
    unflushed = False  # documents handled since the last flush
    while thread.is_alive() or not inbox.empty():
        wait = flushed + args.flush_every - time.monotonic() if unflushed else 0.5
        try:
            bridge.handle(*inbox.get(timeout=min(0.5, max(0.01, wait))))
            spool.handled()
            unflushed = True
        except queue.Empty:
            pass
        # frames go to the catalog at most every flush_every s, each write a batch (a write
        # costs the catalog about the same for 1 frame as for 500: tens of ms of its CPU),
        # and a stream's first frame at once
        if unflushed and (bridge.first_frame_waiting
                          or time.monotonic() - flushed >= args.flush_every):
            bridge.flush()
            flushed, unflushed = time.monotonic(), False
        if time.monotonic() > next_check:
            bridge.retry_stalled()  # runs a catalog that was down could not take
            bridge.retry_unsent()  # events a Prefect server that was down could not take
            next_check = time.monotonic() + args.retry_every
    from tomopipe.deployments.events import PrefectEmitter

    PrefectEmitter.flush()
    log.info("bridge stopped: %d documents handled, %d skipped", bridge.handled, bridge.skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
