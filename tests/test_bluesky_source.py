"""Bluesky run documents -> ScanSpec, through the run conventions alone.

Runs come from a real RunEngine: the simulator, and plans written here with their own detectors
(other data keys, dataset paths, file layouts, rotation keys, legacy AD_HDF5 Resource/Datum).
"""

from __future__ import annotations

import copy
import math
import time
import uuid
from pathlib import Path

import bluesky.plan_stubs as bps
import event_model
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.status import Status
from tomopipe.infra.simulator.run import simulate
from tomopipe.tasks.sources.bluesky_run import is_tomo_run, scan_from_documents
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.config import load_settings
from tomopipe.errors import InputError, PathEscapeError


def read_frames(framesets) -> np.ndarray:
    out = []
    for fs in framesets:
        with h5py.File(fs.path, "r") as f:
            data = f[fs.dataset]
            out.extend(data[i] for i in (fs.indices or range(data.shape[0])))
    return np.stack(out)


class Recorder:
    def __init__(self):
        self.docs: list[tuple[str, dict]] = []
        self.frames: dict[str, list[np.ndarray]] = {"dark": [], "flat": [], "projection": []}

    def __call__(self, name, doc):
        self.docs.append((name, doc))

    def on_frame(self, kind, index, frame):
        self.frames[kind].append(frame.copy())


# -- the simulator's runs -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    rec = Recorder()
    settings = load_settings(home)
    uid = simulate(settings, size=32, rows=8, angles=45, fps=None, sample="s", callbacks=[rec],
                   n_flats=3, n_darks=2, seed=1, on_frame=rec.on_frame)
    return uid, rec, settings


def test_simulated_run_gives_a_scanspec_whose_frames_read_back(sim):
    uid, rec, settings = sim
    spec = scan_from_documents(rec.docs, settings.data_roots)
    assert spec.label == spec.identity == uid
    assert spec.shape == (45, 8, 32) and spec.dtype == "uint16"
    assert spec.angles_deg == pytest.approx(np.linspace(0, 180, 45, endpoint=False))
    assert len(spec.projections) == len(spec.flats) == len(spec.darks) == 1
    np.testing.assert_array_equal(read_frames(spec.projections), np.stack(rec.frames["projection"]))
    np.testing.assert_array_equal(read_frames(spec.flats), np.stack(rec.frames["flat"]))
    np.testing.assert_array_equal(read_frames(spec.darks), np.stack(rec.frames["dark"]))
    assert spec.extra["exit_status"] == "success" and spec.extra["rotation_key"] == "rot_stage"
    # small and picklable: it travels to Dask workers
    assert ScanSpec.from_dict(spec.to_dict()) == spec


def test_documents_as_tiled_replays_them(sim):
    """Tiled's BlueskyRun.documents() replays one StreamDatum per StreamResource, spanning every
    frame and event (seen with tiled 0.2.20 + bluesky-tiled-plugins 2); events come after."""
    uid, rec, settings = sim
    merged: dict[str, dict] = {}
    for d in (d for n, d in rec.docs if n == "stream_datum"):
        m = merged.setdefault(d["stream_resource"], copy.deepcopy(d))
        m["indices"]["stop"], m["seq_nums"]["stop"] = d["indices"]["stop"], d["seq_nums"]["stop"]
    docs = [(n, d) for n, d in rec.docs if n not in ("stream_datum", "stop")]
    docs += [("stream_datum", d) for d in merged.values()] + [rec.docs[-1]]
    assert len(merged) == 3
    direct = scan_from_documents(rec.docs, settings.data_roots)
    assert scan_from_documents(docs, settings.data_roots) == direct


def test_is_tomo_run():
    assert is_tomo_run({"plan_name": "tomo_scan"}, ("tomo_scan",))
    assert is_tomo_run({"plan_name": "anything", "tomo": {}}, ("tomo_scan",))
    assert is_tomo_run({"plan_name": "fly_tomo"}, ("fly_tomo",))
    assert not is_tomo_run({"plan_name": "count"}, ("tomo_scan",))
    assert not is_tomo_run({"plan_name": "count", "tomo": "yes"}, ("tomo_scan",))


def test_aborted_run_keeps_what_was_taken(tmp_path):
    rec = Recorder()
    settings = load_settings(tmp_path)
    simulate(settings, size=16, rows=2, angles=12, fps=None, sample="a", callbacks=[rec],
             n_flats=1, n_darks=1, abort_after=4, on_frame=rec.on_frame)
    spec = scan_from_documents(rec.docs, settings.data_roots)
    assert spec.extra["exit_status"] == "abort"
    assert spec.n_angles == 4
    np.testing.assert_array_equal(read_frames(spec.projections), np.stack(rec.frames["projection"]))


# -- a beamline's own plan and detector: StreamResource documents ---------------------------

class Motor:
    """A motor with units (or none), read under its own key."""

    def __init__(self, name, units=None):
        self.name, self.units, self.parent, self.value = name, units, None, 0.0

    def set(self, value):
        self.value = float(value)
        st = Status(obj=self)
        st.set_finished()
        return st

    def read(self):
        return {self.name: {"value": self.value, "timestamp": time.time()}}

    def describe(self):
        d = {"source": f"TEST:{self.name}", "dtype": "number", "shape": []}
        if self.units:
            d["units"] = self.units
        return {self.name: d}

    def read_configuration(self):
        return {}

    def describe_configuration(self):
        return {}


class ExchangeDetector:
    """One file, three datasets (Data Exchange layout), one StreamResource per dataset.

    ``style="stream"``: StreamResource/StreamDatum; ``style="legacy"``: AD_HDF5 Resource/Datum
    with ``frame_per_point`` frames per event in the flat stream.
    """

    DATASETS = {"projection": "/exchange/data", "flat": "/exchange/data_white",
                "dark": "/exchange/data_dark"}

    def __init__(self, name, path: Path, *, rows=4, cols=6, style="stream", flat_per_point=1):
        self.name, self.parent, self.path = name, None, path
        self.rows, self.cols, self.style = rows, cols, style
        self.flat_per_point = flat_per_point
        self.mode = "projection"
        self.written = {k: [] for k in self.DATASETS}
        self.key = f"{name}_frame"
        self._rng = np.random.default_rng(5)
        self._pending, self._resources, self._file = [], {}, None
        self._last_datum = None

    def stage(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "w")
        for ds in self.DATASETS.values():
            self._file.create_dataset(ds, shape=(0, self.rows, self.cols),
                                      maxshape=(None, self.rows, self.cols), dtype="uint16")
        return [self]

    def unstage(self):
        if self._file:
            self._file.close()
            self._file = None
        return [self]

    def trigger(self):
        n = self.flat_per_point if self.mode == "flat" else 1
        ds = self._file[self.DATASETS[self.mode]]
        start = ds.shape[0]
        ds.resize(start + n, axis=0)
        for i in range(n):
            frame = self._rng.integers(0, 60000, (self.rows, self.cols), dtype=np.uint16)
            ds[start + i] = frame
            self.written[self.mode].append(frame)
        if self.style == "stream":
            self._stream_docs(start, n)
        else:
            self._legacy_docs(start, n)
        st = Status(obj=self)
        st.set_finished()
        return st

    def _stream_docs(self, start, n):
        if self.mode not in self._resources:
            uid = str(uuid.uuid4())
            self._resources[self.mode] = uid
            self._pending.append(("stream_resource", {
                "uid": uid, "data_key": self.key, "mimetype": "application/x-hdf5",
                "uri": "file://localhost" + str(self.path),
                "parameters": {"dataset": self.DATASETS[self.mode]}, "run_start": ""}))
        uid = self._resources[self.mode]
        self._pending.append(("stream_datum", {
            "uid": f"{uid}/{start}", "stream_resource": uid, "descriptor": "",
            "indices": {"start": start, "stop": start + n}, "seq_nums": {"start": 0, "stop": 0}}))

    def _legacy_docs(self, start, n):
        if self.mode not in self._resources:
            uid = str(uuid.uuid4())
            self._resources[self.mode] = uid
            self._pending.append(("resource", {
                "uid": uid, "spec": "AD_HDF5", "root": str(self.path.parent.parent),
                "resource_path": f"{self.path.parent.name}/{self.path.name}",
                "resource_kwargs": {"frame_per_point": n, "dataset": self.DATASETS[self.mode]},
                "path_semantics": "posix", "run_start": ""}))
        uid = self._resources[self.mode]
        self._last_datum = f"{uid}/{start // n}"
        self._pending.append(("datum", {"datum_id": self._last_datum, "resource": uid,
                                        "datum_kwargs": {"point_number": start // n}}))

    def read(self):
        if self.style == "stream":
            return {}
        return {self.key: {"value": self._last_datum, "timestamp": time.time()}}

    def describe(self):
        external = "STREAM:" if self.style == "stream" else "FILESTORE:"
        return {self.key: {"source": "TEST", "dtype": "array", "dtype_numpy": "<u2",
                           "shape": [self.rows, self.cols], "external": external}}

    def read_configuration(self):
        return {}

    def describe_configuration(self):
        return {}

    def collect_asset_docs(self, index=None):
        pending, self._pending = self._pending, []
        yield from pending


def own_plan(det, rotation, others, angles, md, *, n_flats=2, n_darks=1):
    """Flats before and after the projections, darks last, all in one file."""
    yield from bps.open_run(md)
    yield from bps.stage(det)
    det.mode = "flat"
    for _ in range(n_flats):
        yield from bps.trigger_and_read([det], name="flat")
    det.mode = "projection"
    for a in angles:
        yield from bps.mv(rotation, a)
        yield from bps.trigger_and_read([det, rotation, *others], name="primary")
    det.mode = "flat"
    for _ in range(n_flats):
        yield from bps.trigger_and_read([det], name="flat")
    det.mode = "dark"
    for _ in range(n_darks):
        yield from bps.trigger_and_read([det], name="dark")
    yield from bps.unstage(det)
    yield from bps.close_run()


def run_plan(plan) -> list[tuple[str, dict]]:
    docs = []
    RE = RunEngine({}, context_managers=[])
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(plan)
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    return docs


def test_own_plan_with_rotation_key_in_radians(tmp_path):
    root = tmp_path / "beamline"
    det = ExchangeDetector("andor", root / "2026" / "scan_0042.hdf")
    theta = Motor("theta_rb", units="rad")
    tilt = Motor("stage_tilt", units="deg")  # also degrees: rotation_key must win
    angles = np.linspace(0, math.pi, 7, endpoint=False)
    md = {"plan_name": "my_own_scan",
          "tomo": {"rotation_key": "theta_rb", "angle_units": "rad"}}
    docs = run_plan(own_plan(det, theta, [tilt], angles, md))
    spec = scan_from_documents(docs, [root])  # no tomo_scan: the tomo mapping marks it
    assert spec.shape == (7, 4, 6) and spec.dtype == "uint16"
    assert spec.angles_deg == pytest.approx(np.degrees(angles))
    assert [fs.dataset for fs in spec.projections] == ["/exchange/data"]
    assert [fs.dataset for fs in spec.flats] == ["/exchange/data_white"]
    assert spec.flats[0].indices == (0, 1, 2, 3)  # before and after, one resource
    np.testing.assert_array_equal(read_frames(spec.projections), det.written["projection"])
    np.testing.assert_array_equal(read_frames(spec.flats), det.written["flat"])
    np.testing.assert_array_equal(read_frames(spec.darks), det.written["dark"])


def test_own_plan_found_by_plan_name_and_units_alone(tmp_path):
    root = tmp_path / "beamline"
    det = ExchangeDetector("pco", root / "run7" / "all.h5", rows=3, cols=5)
    rz = Motor("hexapod_rz", units="degrees")
    x = Motor("sample_x", units="mm")
    angles = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
    docs = run_plan(own_plan(det, rz, [x], angles, {"plan_name": "fly_tomo"}, n_darks=0))
    with pytest.raises(InputError, match="not a tomography run"):
        scan_from_documents(docs, [root])
    spec = scan_from_documents(docs, [root], tomo_plans=("fly_tomo",))
    assert spec.angles_deg == pytest.approx(angles)
    assert spec.extra["rotation_key"] == "hexapod_rz"
    assert spec.darks == ()  # no dark stream: nothing invented
    np.testing.assert_array_equal(read_frames(spec.projections), det.written["projection"])


def test_legacy_ad_hdf5_resource_and_datum(tmp_path):
    root = tmp_path / "beamline"
    det = ExchangeDetector("ad", root / "legacy" / "ad_0001.h5", style="legacy",
                           flat_per_point=2)
    theta = Motor("rot", units="deg")
    angles = [0.0, 45.0, 90.0, 135.0]
    docs = run_plan(own_plan(det, theta, [], angles, {"plan_name": "tomo_scan"}))
    assert {n for n, _ in docs} >= {"resource", "datum"}
    spec = scan_from_documents(docs, [root])
    assert spec.angles_deg == pytest.approx(angles)
    assert spec.flats[0].indices == tuple(range(8))  # 4 events x 2 frames per point
    np.testing.assert_array_equal(read_frames(spec.projections), det.written["projection"])
    np.testing.assert_array_equal(read_frames(spec.flats), det.written["flat"])
    np.testing.assert_array_equal(read_frames(spec.darks), det.written["dark"])


# -- malformed documents --------------------------------------------------------------------

def _edit(docs, name, change, which=0):
    """A deep copy of the documents with the which-th document called name changed (or dropped
    when change returns None)."""
    out, seen = [], 0
    for n, d in copy.deepcopy(docs):
        if n == name:
            if seen == which:
                d = change(d)
            seen += 1
        if d is not None:
            out.append((n, d))
    return out


def _primary_uid(docs):
    return next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")


@pytest.mark.parametrize("case, match", [
    ("no_start", "no start document"),
    ("not_tomo", "not a tomography run"),
    ("no_primary", "no tomography streams"),
    ("bad_rotation_key", "rotation_key 'nope' is not a data key"),
    ("no_angle_units", "no angle key"),
    ("missing_event", "angles count != frames"),
    ("unknown_resource", "not among the documents"),
    ("no_dataset", "lack 'dataset'"),
    ("bad_mimetype", "unsupported mimetype"),
    ("bad_indices", "not a valid range"),
    ("bad_units", "angle units 'grad'"),
])
def test_malformed_documents_are_named(sim, case, match):
    uid, rec, settings = sim
    docs = rec.docs
    primary = _primary_uid(docs)

    def drop_primary_key_units(d):
        if d["uid"] == primary:
            d["data_keys"]["rot_stage"].pop("units")
        return d

    edits = {
        "no_start": lambda: _edit(docs, "start", lambda d: None),
        "not_tomo": lambda: _edit(docs, "start", lambda d: {k: v for k, v in d.items()
                                                           if k not in ("tomo", "plan_name")}),
        "no_primary": lambda: [(n, d) for n, d in docs if not (
            n == "descriptor" and d["name"] == "primary")],
        "bad_rotation_key": lambda: _edit(docs, "start", lambda d: {
            **d, "tomo": {**d["tomo"], "rotation_key": "nope"}}),
        "no_angle_units": lambda: [(n, drop_primary_key_units(d)) for n, d in _edit(
            docs, "start", lambda d: {**d, "tomo": {}})],
        "missing_event": lambda: [(n, d) for n, d in docs if not (
            n == "event" and d["descriptor"] == primary and d["seq_num"] == 3)],
        "unknown_resource": lambda: _edit(docs, "stream_resource", lambda d: None, which=2),
        "no_dataset": lambda: _edit(docs, "stream_resource", lambda d: {**d, "parameters": {}}),
        "bad_mimetype": lambda: _edit(docs, "stream_resource",
                                      lambda d: {**d, "mimetype": "image/tiff"}),
        "bad_indices": lambda: _edit(docs, "stream_datum",
                                     lambda d: {**d, "indices": {"start": 3, "stop": 1}}),
        "bad_units": lambda: _edit(docs, "start", lambda d: {
            **d, "tomo": {**d["tomo"], "angle_units": "grad"}}),
    }
    with pytest.raises(InputError, match=match) as err:
        scan_from_documents(edits[case](), settings.data_roots)
    if case != "no_start":
        assert uid in str(err.value)  # names the run


def test_ambiguous_angle_keys_are_refused(tmp_path):
    root = tmp_path / "b"
    det = ExchangeDetector("d", root / "x.h5")
    a, b = Motor("phi", units="deg"), Motor("omega", units="deg")
    docs = run_plan(own_plan(det, a, [b], [0.0, 90.0], {"plan_name": "tomo_scan"}))
    with pytest.raises(InputError, match=r"several data keys in degrees \['omega', 'phi'\]"):
        scan_from_documents(docs, [root])


def test_paths_outside_the_data_roots_are_refused(sim, tmp_path):
    uid, rec, settings = sim
    outside = tmp_path / "elsewhere.h5"
    with h5py.File(outside, "w") as f:
        f["/entry/data/data"] = np.zeros((45, 8, 32), np.uint16)
    escapes = [outside.as_uri(),
               settings.data_roots[0].as_uri() + "/../../../etc/passwd",
               "/etc/passwd"]
    for uri in escapes:
        docs = _edit(rec.docs, "stream_resource", lambda d, u=uri: {**d, "uri": u}, which=2)
        with pytest.raises(PathEscapeError) as err:
            scan_from_documents(docs, settings.data_roots)
        assert uid in str(err.value)
    # the same documents resolve when that folder is a data root
    docs = _edit(rec.docs, "stream_resource", lambda d: {**d, "uri": outside.as_uri()}, which=2)
    spec = scan_from_documents(docs, [*settings.data_roots, tmp_path])
    assert spec.projections[0].path == str(outside)


def test_legacy_resource_outside_the_roots_is_refused(tmp_path):
    root = tmp_path / "beamline"
    det = ExchangeDetector("ad", root / "legacy" / "f.h5", style="legacy")
    docs = run_plan(own_plan(det, Motor("rot", units="deg"), [], [0.0, 90.0],
                             {"plan_name": "tomo_scan"}))
    with pytest.raises(PathEscapeError):
        scan_from_documents(docs, [tmp_path / "another_root"])
