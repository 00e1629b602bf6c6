"""The simulated beamline: a real RunEngine, real HDF5 files, a real 0MQ proxy on loopback."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import event_model
import h5py
import numpy as np
import pytest
from tomopipe.infra.simulator.run import simulate
from tomopipe.tasks import phantom

from tomopipe.config import load_settings

SIZE, ROWS, ANGLES, FLATS, DARKS = 32, 8, 45, 4, 3
VENV_BIN = Path(sys.executable).parent


class Recorder:
    """Collects documents (a RunEngine callback) and the frames the camera wrote."""

    def __init__(self):
        self.docs: list[tuple[str, dict]] = []
        self.frames: dict[str, list[np.ndarray]] = {"dark": [], "flat": [], "projection": []}

    def __call__(self, name, doc):
        self.docs.append((getattr(name, "value", name), doc))

    def on_frame(self, kind, index, frame):
        assert index == len(self.frames[kind])
        self.frames[kind].append(frame.copy())

    def of(self, name):
        return [d for n, d in self.docs if n == name]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("simhome")


@pytest.fixture(scope="module")
def scan(home):
    """One simulated scan shared by the tests of this module."""
    rec = Recorder()
    settings = load_settings(home)
    uid = simulate(settings, size=SIZE, rows=ROWS, angles=ANGLES, fps=None, sample="phantom-a",
                   callbacks=[rec], n_flats=FLATS, n_darks=DARKS, seed=3, on_frame=rec.on_frame)
    return uid, rec, settings


def test_documents_validate_against_event_model_schemas(scan):
    uid, rec, _ = scan
    names = [n for n, _ in rec.docs]
    assert names[0] == "start" and names[-1] == "stop"
    for name, doc in rec.docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    start = rec.of("start")[0]
    assert start["uid"] == uid
    assert start["plan_name"] == "tomo_scan"
    assert start["sample"] == "phantom-a"
    assert start["beamline"] == "sim"
    assert start["tomo"]["rotation_key"] == "rot_stage"
    assert start["tomo"]["angle_units"] == "deg"
    assert start["tomo"]["version"] == 1
    stop = rec.of("stop")[0]
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"dark": DARKS, "flat": FLATS, "primary": ANGLES}


def test_one_stream_resource_per_stream_and_data_key(scan):
    _, rec, settings = scan
    streams = {d["uid"]: d["name"] for d in rec.of("descriptor")}
    sres = {d["uid"]: d for d in rec.of("stream_resource")}
    used: dict[str, set[str]] = {}
    for datum in rec.of("stream_datum"):
        used.setdefault(datums_stream := streams[datum["descriptor"]], set()).add(
            datum["stream_resource"])
        assert datum["indices"]["stop"] - datum["indices"]["start"] == 1, datums_stream
    assert set(used) == {"dark", "flat", "primary"}
    assert all(len(v) == 1 for v in used.values())
    assert len(sres) == 3
    for doc in sres.values():
        assert doc["mimetype"] == "application/x-hdf5"
        assert doc["uri"].startswith("file://")
        assert doc["parameters"]["dataset"] == "/entry/data/data"
        assert doc["data_key"] == "cam_image"
        assert doc["run_start"] == rec.of("start")[0]["uid"]
        path = Path(doc["uri"].removeprefix("file://"))
        # one directory per run, under the first data root
        assert path.parent.name == doc["run_start"]
        assert settings.data_roots[0] in path.parents


def test_files_hold_uint16_frames_one_per_chunk_as_written(scan):
    _, rec, _ = scan
    kind_of = {"dark": "dark", "flat": "flat", "primary": "projection"}
    streams = {d["uid"]: d["name"] for d in rec.of("descriptor")}
    by_sres = {d["stream_resource"]: streams[d["descriptor"]] for d in rec.of("stream_datum")}
    for doc in rec.of("stream_resource"):
        kind = kind_of[by_sres[doc["uid"]]]
        path = doc["uri"].removeprefix("file://")
        with h5py.File(path, "r", swmr=True) as f:
            data = f[doc["parameters"]["dataset"]]
            assert data.dtype == np.uint16
            assert data.chunks == (1, ROWS, SIZE)
            assert data.shape == (len(rec.frames[kind]), ROWS, SIZE)
            np.testing.assert_array_equal(data[()], np.stack(rec.frames[kind]))


def test_tiled_writer_consolidates_each_stream_into_a_frame_stack(scan):
    """What Tiled's TiledWriter makes of the StreamResource/StreamDatum documents (its
    consolidator, checked against the files; no server needed)."""
    from bluesky.consolidators import consolidator_factory

    _, rec, _ = scan
    descriptors = {d["uid"]: d for d in rec.of("descriptor")}
    resources = {d["uid"]: d for d in rec.of("stream_resource")}
    made = {}
    for datum in rec.of("stream_datum"):
        sres = datum["stream_resource"]
        if sres not in made:
            made[sres] = (descriptors[datum["descriptor"]]["name"],
                          consolidator_factory(resources[sres], descriptors[datum["descriptor"]]))
        made[sres][1].consume_stream_datum(datum)
    shapes = {}
    for stream, consolidator in made.values():
        consolidator.validate()  # opens the file and checks shape and dtype
        source = consolidator.get_data_source()
        assert source.mimetype == "application/x-hdf5"
        assert source.parameters["dataset"] == "/entry/data/data"
        shapes[stream] = tuple(source.structure.shape)
    assert shapes == {"dark": (DARKS, ROWS, SIZE), "flat": (FLATS, ROWS, SIZE),
                      "primary": (ANGLES, ROWS, SIZE)}


def test_frames_are_the_phantom_through_a_nonuniform_beam(scan):
    _, rec, _ = scan
    darks = np.stack(rec.frames["dark"]).astype(float)
    flats = np.stack(rec.frames["flat"]).astype(float)
    projs = np.stack(rec.frames["projection"]).astype(float)
    dark, flat = darks.mean(0), flats.mean(0)
    assert 50 < dark.mean() < 200  # a dark offset, not zero
    assert flat.min() < 0.85 * flat.max()  # the beam is not uniform
    measured = -np.log(np.clip((projs - dark) / (flat - dark), 1e-6, None))
    angles = np.radians(np.linspace(0, 180, ANGLES, endpoint=False))
    features = phantom.scale_features(phantom.DEFAULT_FEATURES, 512 / SIZE)
    expected = phantom.phantom_projections(SIZE, ROWS, angles, center=SIZE / 2, features=features)
    assert expected.max() > 0.5  # the sample absorbs visibly
    err = np.abs(measured - expected)
    assert err.mean() < 0.03, err.mean()  # Poisson noise only
    # and the noise is real: frames are not the noiseless expectation
    assert err.mean() > 1e-4


def test_files_are_readable_while_the_scan_runs_swmr(tmp_path):
    """A separate process opens the projection file (SWMR) mid-scan and sees the frames so far."""
    seen = {}

    def on_frame(kind, index, frame):
        if kind == "projection" and index == 4:
            path = next(tmp_path.glob("data/sim/*/*/cam_projection.h5"))
            code = ("import h5py,sys; f=h5py.File(sys.argv[1],'r',swmr=True); "
                    "print(f['/entry/data/data'].shape[0])")
            out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                                 text=True, timeout=60)
            seen["frames"] = out.stdout.strip() or out.stderr

    settings = load_settings(tmp_path)
    simulate(settings, size=16, rows=2, angles=6, fps=None, sample="swmr", n_flats=0,
             n_darks=0, on_frame=on_frame)
    assert seen["frames"] == "5"


def test_fps_makes_the_scan_take_real_time(tmp_path):
    settings = load_settings(tmp_path)

    def seconds(fps):
        began = time.monotonic()
        simulate(settings, size=16, rows=2, angles=8, fps=fps, sample="slow", n_flats=1,
                 n_darks=1)
        return time.monotonic() - began

    seconds(None)  # warm: the first scan of a process pays for imports
    free, paced = seconds(None), seconds(10.0)
    # 10 frames (8 projections, a flat, a dark) at 10 per second: about a second more
    assert paced - free >= 0.8 * 10 / 10.0, (free, paced)


def test_camera_keeps_its_frame_period_whatever_the_run_engine_spends(monkeypatch):
    """--fps is the camera's clock: the time the RunEngine spends between triggers (events,
    documents, publishing) comes out of the next exposure's wait, not on top of it; after a
    long pause (a motor move) the next exposure starts at once instead of bursting."""
    from tomopipe.infra.simulator import devices

    clock = [100.0]
    monkeypatch.setattr(devices.time, "monotonic", lambda: clock[0])
    cam = devices.SimCamera("cam", rows=2, cols=4, render=lambda a: np.zeros((2, 4)),
                            shutter=devices.SimShutter(),
                            rotation=devices.SimAxis("rot", units="deg"),
                            sample_axis=devices.SimAxis("x", units="mm"), fps=10.0)
    waits = []
    for _ in range(3):
        waits.append(cam._exposure_left(clock[0]))
        clock[0] += waits[-1] + 0.03  # the exposure ends, then 30 ms go by before the trigger
    assert waits == pytest.approx([0.1, 0.07, 0.07])
    clock[0] += 1.0
    assert cam._exposure_left(clock[0]) == pytest.approx(0.0)
    assert cam._exposure_left(clock[0]) == pytest.approx(0.1)


def test_abort_after_k_projections_gives_an_aborted_stop(tmp_path):
    rec = Recorder()
    settings = load_settings(tmp_path)
    uid = simulate(settings, size=16, rows=2, angles=20, fps=None, sample="abort",
                   callbacks=[rec], n_flats=1, n_darks=1, abort_after=5)
    stop = rec.of("stop")[0]
    assert stop["run_start"] == uid
    assert stop["exit_status"] == "abort"
    assert stop["num_events"]["primary"] == 5
    for name, doc in rec.docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)


def test_bad_arguments_are_named(tmp_path):
    from tomopipe.errors import InputError

    settings = load_settings(tmp_path)
    with pytest.raises(InputError, match="--angles"):
        simulate(settings, size=16, rows=2, angles=0, fps=None, sample="x")
    with pytest.raises(InputError, match="--serializer"):
        simulate(settings, size=16, rows=2, angles=2, fps=None, sample="x", serializer="yaml")


# -- the command ----------------------------------------------------------------------------

def test_command_prints_the_uid_last_on_stdout(tmp_path, monkeypatch, capsys):
    from tomopipe.cli import main

    monkeypatch.setenv("TOMOPIPE_HOME", str(tmp_path))
    rc = main(["simulate", "--size", "16", "--rows", "2", "--angles", "6", "--flats", "1",
               "--darks", "1", "--no-publish", "--sample", "cli"])
    out, err = capsys.readouterr()
    assert rc == 0
    uid = out.strip().splitlines()[-1]
    assert len(out.strip().splitlines()) == 1
    assert "projections 6/6" in err
    assert list(tmp_path.glob(f"data/sim/*/{uid}/cam_projection.h5"))


def test_command_without_a_bus_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from tomopipe.cli import main

    monkeypatch.setenv("TOMOPIPE_HOME", str(tmp_path))
    rc = main(["simulate", "--size", "16", "--rows", "2", "--angles", "2"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "--zmq" in err and "tomopipe up" in err


def test_a_bus_address_nobody_serves_is_refused(tmp_path):
    from tomopipe.errors import ServiceError

    with pytest.raises(ServiceError, match="nothing accepts connections"):
        simulate(load_settings(tmp_path), size=16, rows=2, angles=2, fps=None, sample="x",
                 publish_to=f"127.0.0.1:{_free_port()}")


# -- through a real 0MQ proxy ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def proxy():
    port_in, port_out = _free_port(), _free_port()
    proc = subprocess.Popen([str(VENV_BIN / "bluesky-0MQ-proxy"),
                             "--in-address", f"tcp://127.0.0.1:{port_in}",
                             "--out-address", f"tcp://127.0.0.1:{port_out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port_in)
        _wait_listening(port_out)
        yield f"127.0.0.1:{port_in}", f"127.0.0.1:{port_out}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Listener:
    """A RemoteDispatcher in its own thread, collecting what arrives from the proxy."""

    def __init__(self, address: str, deserializer):
        from bluesky.callbacks.zmq import RemoteDispatcher

        self.docs: list[tuple[str, dict]] = []
        self.stopped = threading.Event()
        self.dispatcher = RemoteDispatcher(address, deserializer=deserializer)
        self.dispatcher.subscribe(self._on_doc)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        time.sleep(0.3)  # let the SUB socket connect and subscribe

    def _on_doc(self, name, doc):
        self.docs.append((getattr(name, "value", name), doc))
        if name == "stop":
            self.stopped.set()

    def _run(self):
        import asyncio

        try:
            self.dispatcher.start()
        except (asyncio.CancelledError, RuntimeError):
            pass

    def close(self):
        self.dispatcher.loop.call_soon_threadsafe(self.dispatcher.stop)
        self.thread.join(timeout=10)


def test_documents_arrive_through_the_proxy_with_msgpack_by_default(proxy, tmp_path):
    """The default codec is msgpack: bluesky's own RemoteDispatcher reads it with the bridge's
    deserializer, which runs no code."""
    from tomopipe.deployments.bus import deserializer

    address_in, address_out = proxy
    listener = Listener(address_out, deserializer("msgpack"))
    try:
        local = Recorder()
        uid = simulate(load_settings(tmp_path), size=16, rows=2, angles=5, fps=None,
                       sample="bus", publish_to=address_in, callbacks=[local], n_flats=1,
                       n_darks=1)
        assert listener.stopped.wait(20), "no stop document came through the proxy"
    finally:
        listener.close()
    assert [n for n, _ in listener.docs] == [n for n, _ in local.docs]
    assert listener.docs[0][1]["uid"] == uid
    assert listener.docs[-1][1]["exit_status"] == "success"


def test_command_publishes_to_the_bus_of_tomopipe_up_with_msgpack(proxy, tmp_path, monkeypatch,
                                                                   capsys):
    import msgpack
    from tomopipe.infra.state import write_services
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    from tomopipe.cli import main

    address_in, address_out = proxy
    write_services(tmp_path, {"zmq_in": address_in, "zmq_out": address_out,
                              "zmq_serializer": "msgpack"})
    monkeypatch.setenv("TOMOPIPE_HOME", str(tmp_path))
    listener = Listener(address_out, msgpack.unpackb)
    try:
        rc = main(["simulate", "--size", "16", "--rows", "2", "--angles", "7", "--flats", "1",
                   "--darks", "1"])
        assert listener.stopped.wait(20), "no stop document came through the proxy"
    finally:
        listener.close()
    out, err = capsys.readouterr()
    assert rc == 0
    uid = out.strip().splitlines()[-1]
    assert listener.docs[0][0] == "start" and listener.docs[0][1]["uid"] == uid
    # what came over the wire is enough to find the data
    spec = scan_from_documents(listener.docs, load_settings(tmp_path).data_roots)
    assert spec.n_angles == 7
    assert spec.angles_deg == pytest.approx([i * 180 / 7 for i in range(7)])
    assert math.isclose(spec.extra["center"], 8.0)
