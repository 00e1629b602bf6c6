"""The stream starter: a run's blocks start at its first frame, before its live flow runs.

A live flow reaches ``Running`` 1.2-1.7 s after the run's start document on two cores and then
needs the catalog to locate the frames, so the frames of a scan's first seconds waited for it.
This standing process reads the same bus as the bridge, keeps each open tomography run's
documents (no events: the layout and the frames' locations), and as soon as they name the
first projection starts the run's stream on the standing Dask cluster as the live flow would
(``tasks.recon.stream_start.start_stream``, the home's reconstruction defaults, the live views
at the middle) and offers it. The live flow adopts it, or aborts it and starts its own when it
asks for other parameters; an offer no flow took within ``--grace`` seconds of the run's stop
(no worker, a paused deployment) is aborted, so its blocks do not hold the workers.

A run that has stopped by the time its documents are read (a replayed run) is left to its flow,
which reconstructs it at once. A malformed document, a run that cannot stream or a cluster that
does not answer is logged in one line; the starter goes on, and the flow does what it did
without it.

Run it as ``python -m tomopipe.deployments.stream_starter --home H`` (``tomopipe up`` does).
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tomopipe.stream_starter")

ADOPT_GRACE_S = 60.0  # the --grace default
# what a run's start imports, imported at the starter's own (scipy.ndimage: the 360-degree
# axis check, 0.2 s)
PRELOAD = ("tomopipe.infra.scaling", "tomopipe.tasks.preprocess.stitch360",
           "tomopipe.tasks.recon.engine", "tomopipe.tasks.recon.fourier",
           "tomopipe.tasks.recon.stream_start", "tomopipe.tasks.sources.bluesky_run",
           "tomopipe.tasks.storage.omezarr", "tomopipe.tasks.transfer.sites", "scipy.ndimage",
           "zarr")
FORGET_AFTER_S = 86400.0  # a run with no stop document and no new document for this long


@dataclass
class OpenRun:
    """What the starter knows of one open tomography run."""

    start: dict
    docs: list[tuple[str, dict]] = field(default_factory=list)  # no events
    framed: bool = False  # a projection frame was announced since the last look
    tried: bool = False  # its stream was started (or refused) once: never again
    offered: bool = False
    stopped: float | None = None  # monotonic time of its stop document
    seen: float = field(default_factory=time.monotonic)


class Starter:
    """Routes bus documents to open runs and starts their streams (``step``)."""

    def __init__(self, home: Path, client: Callable[[], object], *,
                 grace_s: float = ADOPT_GRACE_S):
        self.home, self._client, self.grace_s = Path(home), client, grace_s
        self.runs: dict[str, OpenRun] = {}
        self._descriptors: dict[str, str] = {}  # descriptor uid -> run uid
        self.offered = self.refused = 0

    # -- documents ---------------------------------------------------------------------------
    def handle(self, name, doc) -> None:
        """Take one document. Never raises: a malformed one is logged and skipped."""
        name = getattr(name, "name", name)
        try:
            self._handle(name, doc)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            log.warning("skipped a malformed %s document: %s: %s", name, type(exc).__name__, exc)

    def _handle(self, name: str, doc: dict) -> None:
        from tomopipe.tasks.sources.bluesky_run import is_tomo_run

        if name == "start":
            from tomopipe.context import run_context

            if is_tomo_run(doc, run_context(self.home).tomo_plans):
                self.runs[str(doc["uid"])] = OpenRun(doc, [("start", doc)])
            return
        if name == "descriptor":
            run = self.runs.get(str(doc["run_start"]))
            if run is not None:
                self._descriptors[str(doc["uid"])] = str(doc["run_start"])
                self._add(run, name, doc)
            return
        if name == "stream_resource":
            run = self.runs.get(str(doc.get("run_start")))
            if run is not None:
                self._add(run, name, doc)
            return
        if name == "stream_datum":
            run = self.runs.get(self._descriptors.get(str(doc["descriptor"]), ""))
            if run is not None:
                self._add(run, name, doc)
                run.framed = True
            return
        if name == "stop":
            run = self.runs.get(str(doc["run_start"]))
            if run is not None:
                run.stopped = time.monotonic()

    @staticmethod
    def _add(run: OpenRun, name: str, doc: dict) -> None:
        run.docs.append((name, doc))
        run.seen = time.monotonic()

    # -- streams -----------------------------------------------------------------------------
    def step(self) -> None:
        """Start the streams of runs whose first projection was announced, abandon offers no
        flow took within the grace, forget finished runs."""
        now = time.monotonic()
        for uid, run in list(self.runs.items()):
            if run.framed and not run.tried and run.stopped is None:
                run.framed = False
                try:
                    self._try(uid, run)
                except Exception as exc:  # one run's fault is not the starter's end
                    run.tried = True
                    log.warning("run %s: not started at its first frame (its flow will): %s: "
                                "%s", uid, type(exc).__name__, exc)
            if run.stopped is not None and (not run.offered or now - run.stopped > self.grace_s):
                if run.offered:
                    self._abandon(uid, f"no live flow took it within {self.grace_s:.0f} s of "
                                       "the run's stop")
                self._forget(uid)
            elif now - run.seen > FORGET_AFTER_S:
                if run.offered:
                    self._abandon(uid, f"the run sent nothing for {FORGET_AFTER_S:.0f} s and "
                                       "no stop document")
                self._forget(uid)

    def _forget(self, uid: str) -> None:
        self.runs.pop(uid, None)
        for key in [k for k, v in self._descriptors.items() if v == uid]:
            del self._descriptors[key]

    def _try(self, uid: str, run: OpenRun) -> None:
        from tomopipe.tasks.recon import stream_start
        from tomopipe.tasks.recon.params import recon_params
        from tomopipe.tasks.sources.angle_plan import planned_angles_deg
        from tomopipe.tasks.sources.bluesky_run import scan_from_documents
        from tomopipe.tasks.storage.location import volume_location
        from tomopipe.tasks.transfer.sites import load_transfer_config

        from tomopipe.context import run_context
        from tomopipe.errors import InputError, TomopipeError

        t0 = time.perf_counter()
        ctx = run_context(self.home)  # the configuration as the flow will read it
        planned = planned_angles_deg(run.start.get("tomo"))
        try:
            spec = scan_from_documents(run.docs, ctx.data_roots, tomo_plans=ctx.tomo_plans,
                                       planned_angles_deg=planned)
        except InputError:
            return  # not every stream described yet: at the next frame
        if spec.n_angles < 1:
            return
        run.tried = True
        reason = stream_start.moved_refusal(
            bool(load_transfer_config(ctx.settings).transfer.destination))
        if planned is None or reason:
            return  # the flow says why in its log
        params = recon_params(ctx.settings)
        out = str(volume_location(ctx.output_root, uid, params).path)
        terms = stream_start.Terms(params, out, None)
        refusal: list[str] = []

        def begin():
            started, why = stream_start.start_stream(client, spec, run.start, params, out,
                                                     extra_provenance={"run_uid": uid})
            refusal.append(why or "")
            return started

        t1 = time.perf_counter()
        try:
            client = self._client()
            started = stream_start.offer(client, uid, begin, terms)
        except (TomopipeError, OSError, TimeoutError) as exc:
            log.warning("run %s: not started at its first frame (its flow will): %s", uid, exc)
            return
        if started is not None:
            run.offered = True
            self.offered += 1
            log.info("run %s: streaming from its first frame in %s, %.2f s after its start "
                     "document (its documents read in %.3f s, the blocks started and offered "
                     "in %.3f s)", uid, stream_start.describe(started),
                     started.started - float(run.start.get("time", started.started)), t1 - t0,
                     time.perf_counter() - t1)
        elif refusal and refusal[0]:
            self.refused += 1
            log.info("run %s: not streamed: %s", uid, refusal[0])

    def _abandon(self, uid: str, reason: str) -> None:
        from tomopipe.tasks.recon import stream_start

        try:
            if stream_start.abandon(self._client(), uid, reason):
                log.warning("run %s: its stream was aborted: %s", uid, reason)
        except Exception as exc:  # the cluster is gone: its blocks went with it
            log.warning("run %s: could not abort its stream: %s", uid, exc)


def _client_of(address: str) -> Callable[[], object]:
    """A function that returns one Dask client to ``address``, connected on first use (and
    again after a failed connection)."""
    held: list = []

    def client():
        from distributed import Client

        from tomopipe.errors import ServiceError

        if not held:
            try:
                held.append(Client(address, timeout="10s", set_as_default=False))
            except (OSError, TimeoutError) as exc:
                raise ServiceError(f"Dask scheduler {address}: cannot connect ({exc})") from exc
        return held[0]

    return client


def _preload() -> None:
    """Import what a run's first frame needs now, not then (0.6 s of imports)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def serve_once(starter: Starter, inbox: queue.Queue, wait_s: float = 0.5) -> None:
    """Hand the starter what came off the bus (waiting up to ``wait_s`` for something), then
    let it start or abandon streams. Everything sent so far is taken first: a replayed run's
    stop is then seen before its stream would start."""
    try:
        starter.handle(*inbox.get(timeout=wait_s))
    except queue.Empty:
        pass
    while True:
        try:
            starter.handle(*inbox.get_nowait())
        except queue.Empty:
            break
    starter.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tomopipe.deployments.stream_starter",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="TOMOPIPE_HOME of the services")
    parser.add_argument("--grace", type=float, default=ADOPT_GRACE_S,
                        help="seconds after a run's stop within which its live flow must take "
                             f"the stream, else it is aborted (default {ADOPT_GRACE_S:.0f})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from tomopipe.deployments.bridge import zmq_subscriber

    from tomopipe.config import home as default_home
    from tomopipe.context import run_context
    from tomopipe.errors import TomopipeError

    home = (args.home or default_home()).resolve()
    ctx = run_context(home)
    scheduler = ctx.services.dask_scheduler
    if not scheduler:
        log.error("%s: no standing Dask scheduler in the services' state: nothing to start "
                  "streams on", home)
        return 1
    subscriber = zmq_subscriber(ctx)
    connect = _client_of(scheduler)
    starter = Starter(home, connect, grace_s=args.grace)
    signal.signal(signal.SIGTERM, lambda *_: subscriber.stop())
    signal.signal(signal.SIGINT, lambda *_: subscriber.stop())
    inbox: queue.Queue = queue.Queue()
    ready = threading.Event()
    thread = threading.Thread(target=subscriber.run,
                              args=(lambda n, d: inbox.put((n, d)), ready.set), daemon=True)
    thread.start()
    ready.wait(10)
    _preload()
    try:
        from tomopipe.tasks.recon.stream_start import warm_up

        warm_up(connect())  # now, not at the first run's first frame
    except TomopipeError as exc:
        log.warning("%s; streams start in the live flows until it answers", exc)
    log.info("stream starter ready on %s, starting streams on %s", subscriber.address, scheduler)
    while thread.is_alive():
        serve_once(starter, inbox)
    log.info("stream starter stopped: %d streams offered, %d runs refused", starter.offered,
             starter.refused)
    return 0


if __name__ == "__main__":
    sys.exit(main())
