"""Run the simulated beamline: a real RunEngine executes ``tomo_scan`` with simulated devices.

The camera writes uint16 HDF5 frames under the first data root (``<root>/<beamline>/<date>/<run
uid>/``); the documents go to the given callbacks and, when ``publish_to`` is set, to the 0MQ
document bus (a ``bluesky.callbacks.zmq.Publisher`` connected to the proxy's input address).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

from tomopipe.config import Settings
from tomopipe.errors import InputError, ServiceError

# 0MQ PUB sockets drop what is sent before the subscription has travelled back from the proxy
# (the "slow joiner"): wait this long after connecting before the plan starts.
CONNECT_GRACE_S = 1.5
TOMO_MD_VERSION = 1


def serializer_for(name: str) -> Callable[[dict], bytes]:
    """How documents are packed for the bus (the codec is the bridge's: deployments/bus.py)."""
    from tomopipe.deployments.bus import SERIALIZERS, serializer

    if name not in SERIALIZERS:
        raise InputError("--serializer", f"unknown serializer {name!r}; choose from {SERIALIZERS}")
    return serializer(name)


def _next_scan_id(home: Path) -> int:
    """Scan ids count up per home, as at a beamline (Tiled's ScanID queries rely on them)."""
    path = Path(home) / "simulator.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = {}
    scan_id = int(state.get("scan_id", 0)) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"scan_id": scan_id}))
    os.replace(tmp, path)
    return scan_id


def _check(name: str, value, minimum) -> None:
    if value is None or value < minimum:
        raise InputError(f"--{name}", f"must be at least {minimum}, got {value}")


SAMPLES = ("phantom", "grain")


def sample_features(size: int, kind: str = "phantom") -> tuple:
    """The simulated sample's features (tasks/phantom.py) for a ``size``-pixel-wide slice.

    ``phantom``: the default phantom, filling most of the field of view and every row.
    ``grain``: the same, half as wide and in the middle half of the rows only: a small sample
    that can sit off the axis and whose rows an alignment can find.
    """
    from dataclasses import replace

    from tomopipe.tasks import phantom

    features = phantom.scale_features(phantom.DEFAULT_FEATURES, 512.0 / size)
    if kind == "phantom":
        return features
    if kind == "grain":
        small = phantom.rescale_geometry(features, size, 2 * size)
        return tuple(replace(f, z0=0.25 + 0.5 * f.z0, z1=0.25 + 0.5 * f.z1) for f in small)
    raise InputError("--sample-shape", f"unknown sample {kind!r}; choose from {SAMPLES}")


def make_renderer(size: int, rows: int, *, kind: str = "phantom",
                  offset: Callable[[], tuple[float, float]] | None = None
                  ) -> tuple[Callable[[float], object], dict]:
    """The line integrals of the simulated sample at an angle (degrees), and how it was made.

    The phantom's attenuation is scaled to the size so that transmission stays realistic (the
    phantom is sized for 512 pixels). ``offset()``: where the sample sits now, (dx, dy) pixels
    from the rotation axis (a stage moves it); read at every frame.
    """
    from dataclasses import replace

    from tomopipe.tasks import phantom

    features = sample_features(size, kind)
    center = size / 2.0
    projectors: dict[tuple[float, float], Callable] = {}

    def projector_at(dx: float, dy: float):
        key = (round(dx, 3), round(dy, 3))
        if key not in projectors:
            if len(projectors) > 8:
                projectors.clear()
            moved = tuple(replace(f, cx=f.cx + key[0] / size, cy=f.cy + key[1] / size)
                          for f in features)
            projectors[key] = phantom.projector(size, rows, center=center, features=moved)
        return projectors[key]

    def render(angle_deg: float):
        dx, dy = offset() if offset is not None else (0.0, 0.0)
        return projector_at(dx, dy)([math.radians(angle_deg)])[0]

    info = {"phantom": "tomopipe.tasks.phantom.DEFAULT_FEATURES", "attenuation_scale": 512.0 / size,
            "center": center, "sample_shape": kind}
    if offset is not None:
        info["sample_offset_px"] = list(offset())
    return render, info


def simulate(settings: Settings, *, size: int, rows: int, angles: int, fps: float | None,
             sample: str, publish_to: str | None = None, serializer: str = "msgpack",
             callbacks: Iterable[Callable[[str, dict], None]] = (), n_flats: int = 10,
             n_darks: int = 5, abort_after: int | None = None, seed: int | None = None,
             on_frame: Callable | None = None, arc_deg: float = 180.0,
             angle_order: str = "sequential", sample_shape: str = "phantom",
             sample_offset: tuple[float, float] | None = None) -> str:
    """Run one simulated tomography scan and return its run uid.

    ``size``: detector columns (and phantom width); ``rows``: detector rows; ``angles``:
    projections evenly spaced over ``arc_deg`` (endpoint excluded); ``fps``: frames per second
    (None or 0: as fast as possible). ``abort_after``: abort the run after that many projections
    (its stop document has exit_status "abort"). ``on_frame(kind, index, frame)``: observes
    every frame written (tests). ``angle_order``: sequential, interlaced or golden
    (``tasks.sources.angle_plan``); the start document declares it as ``tomo.angle_plan``.
    ``sample_shape``: ``phantom`` or ``grain`` (``sample_features``); ``sample_offset``: (dx, dy)
    pixels the sample sits off the rotation axis.
    """
    from tomopipe.infra.simulator.devices import SimStage

    pack = serializer_for(serializer)
    stage = SimStage(sample_offset or (0.0, 0.0))
    plan, md, camera = scan_plan(
        settings, stage=stage, size=size, rows=rows, angles=angles, fps=fps, sample=sample,
        n_flats=n_flats, n_darks=n_darks, abort_after=abort_after, seed=seed,
        on_frame=on_frame, arc_deg=arc_deg, angle_order=angle_order, sample_shape=sample_shape,
        offset_known=sample_offset is not None)
    return _run_plan(plan, md, camera, publish_to=publish_to, pack=pack, callbacks=callbacks,
                     abort_after=abort_after)


def scan_plan(settings: Settings, *, stage, size: int, rows: int, angles: int,
              fps: float | None, sample: str, n_flats: int = 10, n_darks: int = 5,
              abort_after: int | None = None, seed: int | None = None,
              on_frame: Callable | None = None, arc_deg: float = 180.0,
              angle_order: str = "sequential", sample_shape: str = "phantom",
              row_range: tuple[int, int] | None = None, checkpoints: bool = False,
              md: dict | None = None, offset_known: bool = True,
              stop_requested: Callable[[], str | None] | None = None):
    """(plan, start metadata, camera) of one simulated scan of the sample on ``stage``
    (devices.SimStage); ``row_range``: read only those detector rows; ``md``: more start
    metadata; ``stop_requested``: see plans.tomo_scan. The devices are made here; the stage is
    the caller's (it outlives scans)."""
    from tomopipe.infra.simulator.devices import SimAxis, SimCamera, SimShutter
    from tomopipe.infra.simulator.plans import tomo_scan

    _check("size", size, 2)
    _check("rows", rows, 1)
    _check("angles", angles, 1)
    _check("flats", n_flats, 0)
    _check("darks", n_darks, 0)
    if fps is not None and fps < 0:
        raise InputError("--fps", f"must not be negative, got {fps}")
    if abort_after is not None and not 1 <= abort_after:
        raise InputError("--abort-after", f"must be at least 1, got {abort_after}")
    if not settings.data_roots:
        raise InputError(str(settings.config_file), "no data roots configured", "data_roots")
    if row_range is not None and not 0 <= row_range[0] < row_range[1] <= rows:
        raise InputError("rows", f"{row_range[0]}:{row_range[1]} is not within the detector's "
                         f"0:{rows}")

    render, sim_info = make_renderer(size, rows, kind=sample_shape,
                                     offset=stage.offset if offset_known else None)
    shutter = SimShutter("shutter")
    rotation = SimAxis("rot_stage", units="deg")
    sample_axis = SimAxis("sample_x", units="mm")
    camera = SimCamera("cam", rows=rows, cols=size, render=render, shutter=shutter,
                       rotation=rotation, sample_axis=sample_axis, fps=fps, seed=seed,
                       on_frame=on_frame, roi=row_range)
    from tomopipe.tasks.sources.angle_plan import ORDERS, angle_plan_metadata, angle_sequence

    if angle_order not in ORDERS:
        raise InputError("--angle-order", f"unknown order {angle_order!r}; choose one of "
                         f"{', '.join(ORDERS)}")
    angle_list = angle_sequence(angles, angle_order, arc_deg=arc_deg).tolist()
    data_dir = Path(settings.data_roots[0]) / settings.beamline / date.today().isoformat()

    start_md = {
        "sample": sample,
        "beamline": settings.beamline,
        "beamline_id": settings.beamline,
        "scan_id": _next_scan_id(settings.home),
        "tomo": {
            "version": TOMO_MD_VERSION,
            "rotation_key": rotation.name,
            "angle_units": "deg",
            "image_key": camera.image_key,
            "streams": {"projections": "primary", "flats": "flat", "darks": "dark"},
            "n_angles": angles, "n_flats": n_flats, "n_darks": n_darks,
            "angle_plan": angle_plan_metadata(angles, angle_order, arc_deg=arc_deg),
            "center": sim_info["center"],
        },
        "simulated": {**sim_info, "size": size, "rows": rows, "fps": fps or 0.0},
    }
    if row_range is not None:
        start_md["tomo"]["detector_rows"] = [int(row_range[0]), int(row_range[1])]
        start_md["simulated"]["row_range"] = [int(row_range[0]), int(row_range[1])]
    if offset_known:
        start_md["simulated"]["stage_px"] = [stage.x.position, stage.y.position]
    start_md.update(md or {})
    scan_id = start_md.pop("scan_id")
    plan = tomo_scan(camera, rotation, shutter, sample_axis, angle_list, n_darks=n_darks,
                     n_flats=n_flats, data_dir=data_dir, md=start_md, abort_after=abort_after,
                     checkpoints=checkpoints, stop_requested=stop_requested)
    return plan, {"scan_id": scan_id}, camera


def _run_plan(plan, md: dict, camera, *, publish_to: str | None, pack, callbacks,
              abort_after: int | None) -> str:
    """Run ``plan`` on a RunEngine of its own (``md["scan_id"]``: the run's scan id)."""
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    in_main = threading.current_thread() is threading.main_thread()
    # SIGINT handling (Ctrl-C pauses the run) only works on the main thread.
    RE = RunEngine({}, context_managers=None if in_main else [])
    RE.md["scan_id"] = md["scan_id"] - 1  # the RunEngine adds one
    for cb in callbacks:
        RE.subscribe(cb)
    publisher = None
    if publish_to:
        from bluesky.callbacks.zmq import Publisher

        _check_listening(publish_to)
        try:
            publisher = Publisher(publish_to, serializer=pack)
        except Exception as exc:  # zmq raises for malformed addresses
            raise ServiceError(f"document bus {publish_to!r}: cannot connect: {exc}") from exc
        RE.subscribe(publisher)
        time.sleep(CONNECT_GRACE_S)

    try:
        try:
            uids = RE(plan)
        except RunEngineInterrupted:
            # paused: by --abort-after, or by Ctrl-C on the main thread
            uids = RE.abort(reason=f"aborted after {abort_after} projections"
                            if abort_after else "interrupted")
            if abort_after is None:
                raise KeyboardInterrupt from None
        if not uids:
            raise RuntimeError("the RunEngine produced no run")
        return uids[0]
    finally:
        camera.unstage()  # idempotent: the RunEngine unstages too, except after a crash
        if publisher is not None:
            time.sleep(0.2)  # let the last messages leave the socket
            publisher.close()
        _stop_loop(RE)


def _check_listening(address: str) -> None:
    """0MQ connects lazily and drops messages to nobody: refuse a TCP address nothing serves."""
    import socket

    text = address.split("://", 1)[1] if "://" in address else address
    if address.startswith(("ipc://", "inproc://")) or ":" not in text:
        return
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("*", "0.0.0.0"):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return
    except (OSError, ValueError) as exc:
        raise ServiceError(f"document bus {address!r}: nothing accepts connections there "
                           f"({exc}); is the 0MQ proxy (`tomopipe up`) running?") from exc


def _stop_loop(RE) -> None:
    """Stop the RunEngine's event-loop thread (each RunEngine starts its own)."""
    loop = RE.loop
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
        thread = getattr(RE, "_th", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def progress_printer(stream=None) -> Callable[[str, dict], None]:
    """A callback that prints the scan's progress, one line per stream and every 10 %."""
    stream = stream or sys.stderr
    names: dict[str, str] = {}
    counts: dict[str, int] = {}
    total = {"n": 0}

    def callback(name: str, doc: dict) -> None:
        if name == "start":
            tomo = doc.get("tomo", {})
            total["n"] = tomo.get("n_angles", 0)
            print(f"run {doc['uid']} started: scan {doc.get('scan_id')}, sample "
                  f"{doc.get('sample')!r}", file=stream, flush=True)
        elif name == "descriptor":
            names[doc["uid"]] = doc["name"]
        elif name == "event":
            stream_name = names.get(doc["descriptor"], "?")
            counts[stream_name] = counts.get(stream_name, 0) + 1
            done, n = counts[stream_name], total["n"]
            if stream_name == "primary" and n:
                if done == n or done % max(1, n // 10) == 0:
                    print(f"  projections {done}/{n}", file=stream, flush=True)
        elif name == "stop":
            took = ", ".join(f"{k} {v}" for k, v in counts.items())
            print(f"run {doc['run_start']} {doc['exit_status']}: {took}", file=stream, flush=True)

    return callback
