"""Flat-field drift and flats/darks from other files.

A beam that brightens by 20 % during the scan, with flats before and after: each projection
divided by the flat interpolated at its index is exact; one mean flat is not. Flats and darks in
separate files (as DLS i12 writes them) through ``--flats``/``--darks``, their shapes checked."""

import json

import h5py
import numpy as np
import pytest
import zarr
from conftest import tomopipe_cli
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange, write_nexus
from tomopipe.tasks.phantom import phantom_projections
from tomopipe.tasks.preprocess._validate import ArrayInputError
from tomopipe.tasks.preprocess.drift import normalize_drift, schedule_from_positions
from tomopipe.tasks.preprocess.normalize import normalize
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.sources import open_scan
from tomopipe.tasks.sources.flatfield_files import flat_schedule, with_field_files

from tomopipe.errors import ConfigError, InputError

N, ROWS, ANGLES = 64, 4, 48
DRIFT = 0.2  # the beam is 20 % brighter at the end of the scan than at its start


def drifting_scan():
    """Noise-free counts: the beam grows linearly with the frame index from the flats before
    (index -1) to the flats after (index ANGLES)."""
    angles = np.linspace(0, np.pi, ANGLES, endpoint=False)
    line = phantom_projections(N, ROWS, angles).astype(np.float64)
    beam = 1000.0 * (1 + 0.3 * np.linspace(-1, 1, N))[None, :] * np.ones((ROWS, 1))
    level = 1 + DRIFT * (np.arange(ANGLES) + 1) / (ANGLES + 1)
    proj = beam[None] * level[:, None, None] * np.exp(-line) + 10.0
    flats_before = np.repeat(beam[None], 3, axis=0) + 10.0
    flats_after = np.repeat(beam[None], 3, axis=0) * (1 + DRIFT) + 10.0
    darks = np.full((2, ROWS, N), 10.0)
    return proj, flats_before, flats_after, darks, np.exp(-line)


def test_interpolated_flats_undo_the_drift():
    proj, before, after, darks, truth = drifting_scan()
    schedule = schedule_from_positions([-1] * 3 + [ANGLES] * 3, range(ANGLES))
    assert schedule is not None and schedule.n_before == 3
    flats = np.concatenate([before, after])
    corrected = normalize_drift(proj, flats, darks, schedule)
    np.testing.assert_allclose(corrected, truth, rtol=1e-5)
    averaged = normalize(proj, flats, darks)
    assert np.abs(averaged / truth - 1).max() > 0.08  # one mean flat is 10 % off at the ends
    assert schedule.to_dict()["weight_first"] < 0.05 < 0.95 < schedule.to_dict()["weight_last"]


def test_no_schedule_without_flats_on_both_sides():
    assert schedule_from_positions([0, 1, 2], range(3, 10)) is None  # all before
    assert schedule_from_positions([12, 13], range(3, 10)) is None  # all after
    with pytest.raises(ArrayInputError, match="listed before"):
        schedule_from_positions([20, 0, 21], range(3, 10))


def test_bad_drift_inputs_are_named():
    proj, before, after, darks, _ = drifting_scan()
    schedule = schedule_from_positions([-1] * 3 + [ANGLES] * 3, range(ANGLES))
    with pytest.raises(ArrayInputError, match="flats before"):
        normalize_drift(proj, np.concatenate([before[:, :, :-1], after[:, :, :-1]]), darks,
                        schedule)
    with pytest.raises(ArrayInputError, match="projection positions"):
        normalize_drift(proj[:-1], np.concatenate([before, after]), darks, schedule)


def write_frames(path, name, frames):
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=np.asarray(frames, dtype=np.uint16))
    return path


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    """Projections in one Data Exchange file, flats before/after and darks in three others."""
    d = tmp_path_factory.mktemp("fields")
    proj, before, after, darks, _ = drifting_scan()
    write_dxchange(d / "scan.h5", proj.astype(np.uint16), before.astype(np.uint16),
                   darks.astype(np.uint16), np.degrees(np.linspace(0, np.pi, ANGLES,
                                                                   endpoint=False)))
    write_frames(d / "pre.h5", "/flats", before)
    write_frames(d / "post.h5", "/flats", after)
    write_frames(d / "dark.h5", "/exchange/data_dark", darks)
    write_frames(d / "narrow.h5", "/flats", before[:, :, :-2])
    with h5py.File(d / "two.h5", "w") as f:
        f["a"] = before.astype(np.uint16)
        f["b"] = after.astype(np.uint16)
    return d


def test_field_files_replace_the_scans_fields(split_files):
    d = split_files
    spec = open_scan(d / "scan.h5", checksum=False)
    joined = with_field_files(spec, [f"{d}/pre.h5:/flats", f"{d}/post.h5:/flats"],
                              [str(d / "dark.h5")])
    assert [fs.dataset for fs in joined.flats] == ["/flats", "/flats"]
    assert joined.darks[0].dataset == "/exchange/data_dark"
    schedule = flat_schedule(joined)
    assert schedule is not None and schedule.n_before == 3
    assert joined.extra["field_files"]["darks"] == [f"{d / 'dark.h5'}:/exchange/data_dark"]
    assert flat_schedule(spec) is None  # the file's own flats: averaged


@pytest.mark.parametrize("given, fault", [
    ("narrow.h5:/flats", "flat frames are 4x62 but the projections are 4x64"),
    ("two.h5", "which dataset holds the flats"),
    ("pre.h5:/nothing", "missing"),
    ("absent.h5", "no such file"),
])
def test_bad_field_files_are_one_line(split_files, given, fault):
    spec = open_scan(split_files / "scan.h5", checksum=False)
    with pytest.raises(InputError) as err:
        with_field_files(spec, [f"{split_files}/{given}"])
    assert fault in str(err.value) and "\n" not in str(err.value)


def test_more_than_two_flat_files_is_refused():
    with pytest.raises(ConfigError, match="flats"):
        ReconParams(flats=("a.h5", "b.h5", "c.h5"))
    assert ReconParams(flats="a.h5:/f").flats == ("a.h5:/f",)  # one file as a plain string


def test_cli_flats_before_and_after_from_files(split_files, tmp_path):
    """End to end: the drift-corrected volume matches the truth better than the file's own
    (before-only) flats, and the provenance says how the flats were used."""
    d = split_files
    out = tmp_path / "drift.zarr"
    proc = tomopipe_cli("recon", str(d / "scan.h5"), "--out", str(out), "--center", "32",
                        "--flats", f"{d}/pre.h5:/flats", "--flats", f"{d}/post.h5:/flats",
                        "--darks", str(d / "dark.h5"), "--workers", "0", "--json",
                        "--no-progress")
    assert proc.returncode == 0, proc.stderr
    prov = zarr.open_group(str(out), mode="r").attrs["tomopipe"]
    assert prov["key"] == json.loads(proc.stdout)["key"]
    assert prov["preprocess"]["flat_field"]["method"].startswith("linear")
    assert prov["params"]["flats"] == [f"{d}/pre.h5:/flats", f"{d}/post.h5:/flats"]
    plain = tmp_path / "plain.zarr"
    proc = tomopipe_cli("recon", str(d / "scan.h5"), "--out", str(plain), "--center", "32",
                        "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    from tomopipe.tasks.phantom import phantom_volume

    truth = phantom_volume(N, ROWS)
    body = truth > 0
    drift = zarr.open_group(str(out), mode="r")["0"][:]
    only_before = zarr.open_group(str(plain), mode="r")["0"][:]
    err_drift = np.abs(drift[body] - truth[body]).mean()
    err_plain = np.abs(only_before[body] - truth[body]).mean()
    assert err_drift < 0.5 * err_plain


def test_cli_bad_flats_file_is_one_line(split_files, tmp_path):
    proc = tomopipe_cli("recon", str(split_files / "scan.h5"), "--out", str(tmp_path / "v.zarr"),
                        "--flats", f"{split_files}/narrow.h5:/flats", "--workers", "0")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert "narrow.h5" in err[0] and "4x62" in err[0] and "--flats" in err[0]


def test_nexus_flats_before_and_after_are_interpolated(tmp_path):
    """NeXus with image keys: flats before and after the projections in the same frame stack
    are placed by their frame index; the engine records the schedule."""
    scan = make_phantom_scan(48, 4, 36, n_flats=6, n_darks=2, with_truth=False)
    path = write_nexus(tmp_path / "scan.nxs", scan["projections"], scan["flats"],
                       scan["darks"], scan["angles_deg"])
    spec = open_scan(path, checksum=False)
    schedule = flat_schedule(spec)
    assert schedule is not None and schedule.n_before == 3
    proj_idx = spec.projections[0].indices
    assert schedule.before < proj_idx[0] and schedule.after > proj_idx[-1]


def test_scan_without_flats_takes_them_from_another_file(split_files, tmp_path):
    """DLS i12 style: the projections' file holds no flats at all."""
    proj, before, _, darks, _ = drifting_scan()
    bare = write_dxchange(tmp_path / "bare.h5", proj.astype(np.uint16), None,
                          darks.astype(np.uint16),
                          np.degrees(np.linspace(0, np.pi, ANGLES, endpoint=False)))
    refused = tomopipe_cli("recon", str(bare), "--out", str(tmp_path / "no.zarr"), "--workers",
                           "0")
    assert refused.returncode == 1 and "flat" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    out = tmp_path / "v.zarr"
    proc = tomopipe_cli("recon", str(bare), "--out", str(out), "--flats",
                        f"{split_files}/pre.h5:/flats", "--center", "32", "--workers", "0",
                        "--no-progress")
    assert proc.returncode == 0, proc.stderr
    prov = zarr.open_group(str(out), mode="r").attrs["tomopipe"]
    assert prov["preprocess"]["field_files"]["flats"] == [f"{split_files / 'pre.h5'}:/flats"]


def test_every_sources_fields_are_checked_against_the_projections(split_files):
    """A run's flat stream (or any source's) pointing at frames of another shape is refused
    before anything runs, naming the file, the dataset and both shapes."""
    import dataclasses

    from tomopipe.tasks.recon.slab_inputs import prepare_spec
    from tomopipe.tasks.sources.spec import FrameSet

    spec = open_scan(split_files / "scan.h5", checksum=False)
    bad = dataclasses.replace(spec, flats=(FrameSet(str(split_files / "narrow.h5"), "/flats"),))
    with pytest.raises(InputError) as err:
        prepare_spec(bad, ReconParams())
    text = str(err.value)
    assert "narrow.h5" in text and "/flats" in text and "4x62" in text and "4x64" in text
    beyond = dataclasses.replace(spec, darks=(FrameSet(str(split_files / "dark.h5"),
                                                       "/exchange/data_dark", (0, 5)),))
    with pytest.raises(InputError, match="dark frame 5 is named but the dataset has 2"):
        prepare_spec(beyond, ReconParams())


def test_bluesky_run_flats_before_and_after_are_placed_by_event_time(tmp_path):
    """A run whose flat stream has events before the first projection and after the last
    (a real RunEngine, documents as emitted): the drift schedule comes from the event times,
    and survives the ScanSpec's round trip through a dict (as flows pass it)."""
    import math

    from test_bluesky_source import ExchangeDetector, Motor, own_plan, run_plan
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents
    from tomopipe.tasks.sources.spec import ScanSpec

    root = tmp_path / "beamline"
    det = ExchangeDetector("andor", root / "2026" / "scan.hdf")
    angles = np.linspace(0, math.pi, 7, endpoint=False)
    md = {"plan_name": "own", "tomo": {"rotation_key": "theta", "angle_units": "rad"}}
    docs = run_plan(own_plan(det, Motor("theta", units="rad"), [], angles, md, n_flats=3))
    spec = scan_from_documents(docs, [root])
    assert spec.flat_positions == (-0.5,) * 3 + (6.5,) * 3
    schedule = flat_schedule(ScanSpec.from_dict(spec.to_dict()))
    assert schedule is not None and schedule.n_before == 3
    np.testing.assert_allclose(schedule.weights(), (np.arange(7) + 0.5) / 7)


def test_bluesky_run_with_flats_before_only_averages_them(tmp_path):
    """The simulator's tomo_scan takes its flats before the projections only."""
    from test_bluesky_source import Recorder
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    from tomopipe.config import load_settings

    settings = load_settings(tmp_path)
    rec = Recorder()
    simulate(settings, size=16, rows=2, angles=6, fps=None, sample="s", callbacks=[rec],
             n_flats=2, n_darks=1, seed=1)
    spec = scan_from_documents(rec.docs, settings.data_roots)
    assert spec.flat_positions == (-0.5, -0.5)
    assert flat_schedule(spec) is None
