"""Streaming: acquisition orders through the normal path, the streaming runner on a real Dask
cluster following a real simulated scan (RunEngine, SWMR HDF5 files), live views in OME-Zarr.

Nothing is mocked: the simulator's camera writes frames while the runner's workers read them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from tomopipe.infra.simulator.run import simulate
from tomopipe.tasks.phantom import DEFAULT_FEATURES, phantom_volume, scale_features
from tomopipe.tasks.recon.engine import reconstruct
from tomopipe.tasks.recon.incremental import correlation
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.streaming import (
    AnglesDiffer,
    StreamRun,
    cluster_refusal,
    early_center,
    frames_to_cover,
    plan_stream,
    provisional_center,
    stream_refusal,
)
from tomopipe.tasks.sources.angle_plan import planned_angles_deg
from tomopipe.tasks.sources.bluesky_run import scan_from_documents
from tomopipe.tasks.storage.live_views import read_block_status, read_live_attrs, read_views
from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

from tomopipe.config import load_settings
from tomopipe.errors import TomopipeError


class Docs:
    """A RunEngine callback that keeps the documents (name, doc)."""

    def __init__(self):
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.items.append((getattr(name, "value", name), doc))


def truth(size, rows):
    features = scale_features(DEFAULT_FEATURES, 512.0 / size)
    return phantom_volume(size, rows, features=features)


@pytest.mark.parametrize("order", ["interlaced", "golden"])
def test_every_angle_order_reconstructs_through_the_normal_path(tmp_path, order):
    """Centre finding and the one-shot reconstruction on a scan taken out of angle order."""
    settings = load_settings(tmp_path / "home")
    size, rows = 64, 4
    docs = Docs()
    simulate(settings, size=size, rows=rows, angles=180, fps=None, sample="s", callbacks=[docs],
             n_flats=4, n_darks=2, seed=5, angle_order=order)
    start = docs.items[0][1]
    assert start["tomo"]["angle_plan"]["order"] == order
    spec = scan_from_documents(docs.items, settings.data_roots)
    assert not np.all(np.diff(spec.angles_deg) > 0)  # really out of order
    result = reconstruct(spec, ReconParams(), tmp_path / f"{order}.zarr", workers=0)
    assert abs(result.center - size / 2) < 0.5, result.center_method
    volume = zarr.open_group(str(tmp_path / f"{order}.zarr"), mode="r")["0"][:]
    expected = truth(size, rows)
    assert correlation(volume[rows // 2], expected[rows // 2]) > 0.9


# ------------------------------------------------------------------ the runner on real Dask


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def start_scan(settings, docs, **kwargs):
    """The simulated scan in a thread, as the beamline runs it beside the pipeline."""
    errors = []

    def scan():
        try:
            simulate(settings, fps=kwargs.pop("fps"), sample="s", callbacks=[docs],
                     n_flats=4, n_darks=2, seed=7, **kwargs)
        except Exception as exc:  # pragma: no cover - shown by the test's assertion
            errors.append(exc)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    return thread, errors


def wait_for_spec(docs, settings, timeout=60):
    """The scan's spec as soon as its first projection has a StreamDatum."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = list(docs.items)
        if any(n == "stream_datum" for n, _ in items) and any(
                n == "event" for n, _ in items):
            try:
                return scan_from_documents(items, settings.data_roots), items[0][1]
            except Exception:
                pass
        time.sleep(0.05)
    raise AssertionError("the scan never started")


def scan_in_progress(tmp_path, *, size, rows, n_angles, fps):
    """A golden-order simulated scan running in a thread, once its first projection is
    recorded: (settings, docs, thread, errors, spec so far, start document, planned angles)."""
    settings = load_settings(tmp_path / "home")
    docs = Docs()
    thread, errors = start_scan(settings, docs, size=size, rows=rows, angles=n_angles, fps=fps,
                                angle_order="golden")
    spec, start = wait_for_spec(docs, settings)
    return settings, docs, thread, errors, spec, start, planned_angles_deg(start["tomo"])


def test_stream_follows_a_golden_scan_and_publishes_the_one_shot_volume(tmp_path, dask_client):
    size, rows, n_angles = 64, 8, 240
    settings, docs, thread, errors, spec, start, planned = scan_in_progress(
        tmp_path, size=size, rows=rows, n_angles=n_angles, fps=60)
    params = ReconParams(center=size / 2)
    center = early_center(spec, params, planned, 1)
    assert stream_refusal(params, spec, planned, center["value"]) is None
    splan = plan_stream(rows, size, n_workers=2, memory_budget=2**30)
    assert len(splan.blocks) == 2  # one block per worker
    out = tmp_path / "vol.zarr"
    run = StreamRun.begin(dask_client, spec, params, out, planned_deg=planned, center=center,
                          stream_plan=splan, block_options={"view_every_s": 0.1})
    seen, at_quarter = [], None
    while thread.is_alive():
        live = run.poll()
        seen.append(live)
        if at_quarter is None and live["fraction"] >= 0.25:
            at_quarter = (live["fraction"], read_views(run.live)["xy"])
        time.sleep(0.1)
    thread.join()
    assert not errors
    final_spec = scan_from_documents(docs.items, settings.data_roots)
    result = run.finish(final_spec.n_angles, recorded_deg=final_spec.angles_deg)

    # it streamed: updates while the scan ran, with fractions between none and all
    partial = [s["fraction"] for s in seen if 0 < s["fraction"] < 1]
    assert len(set(partial)) >= 3
    assert all(s["lag"] >= 0 for s in seen)
    assert result["timings"]["batches"] > 4
    # the first live middle slice past a quarter of the angles, still partial, already
    # resembles the final slice (how far past a quarter depends on the machine's load: 0.57 at
    # load 11 on 2 cores; tests/test_incremental.py checks exactly a quarter, deterministically)
    fraction, quarter = at_quarter
    assert fraction < 1.0
    final_xy = read_views(run.live)["xy"]
    assert correlation(quarter, final_xy) >= 0.9
    attrs = read_live_attrs(run.live)
    assert attrs["fraction"] == pytest.approx(1.0) and attrs["state"] == "published"
    # the published volume is the one-shot reconstruction of the same scan
    assert is_complete(out)
    streamed = zarr.open_group(str(out), mode="r")["0"][:]
    assert np.allclose(streamed[rows // 2], final_xy, atol=1e-6)
    one_shot = tmp_path / "one-shot.zarr"
    reconstruct(final_spec, params, one_shot, workers=0)
    reference = zarr.open_group(str(one_shot), mode="r")["0"][:]
    err = np.linalg.norm(streamed - reference) / np.linalg.norm(reference)
    assert err < 1e-2, err
    assert zarr.open_group(str(out), mode="r")["1"].shape == \
        zarr.open_group(str(one_shot), mode="r")["1"].shape


def test_views_start_at_a_provisional_centre_and_the_volume_is_the_found_ones(tmp_path,
                                                                             dask_client):
    """The blocks start before the centre is known (at the start document's axis or the
    detector's middle), show views at it, and start again from the first frame once the flow
    finds it: the published volume is the one-shot reconstruction at the centre found."""
    size, rows, n_angles = 64, 8, 240
    settings, docs, thread, errors, spec, start, planned = scan_in_progress(
        tmp_path, size=size, rows=rows, n_angles=n_angles, fps=60)
    assert start["tomo"]["center"] == size / 2  # the simulator names its axis
    named = provisional_center(spec, start["tomo"])
    assert named["provisional"] and named["value"] == size / 2
    middle = provisional_center(spec, {"center": float("nan")})  # unusable: the middle
    assert middle["value"] == size / 2 and "middle" in middle["method"]
    wrong = {**named, "value": size / 2 + 3.0}  # an axis 3 px off, as a stale calibration
    params = ReconParams(center="auto")
    run = StreamRun.begin(dask_client, spec, params, tmp_path / "vol.zarr", planned_deg=planned,
                          center=wrong, stream_plan=plan_stream(rows, size, n_workers=2,
                                                                memory_budget=2**30),
                          block_options={"view_every_s": 0.1})
    found = None
    while thread.is_alive():
        live = run.poll()
        if found is None and live["frames_in"]:
            assert live["center_provisional"] and live["center"] == wrong["value"]
        if found is None and live["frames_landed"]:
            found = early_center(spec, params, planned, live["frames_landed"])
            if found is not None:
                run.recenter(found)
        time.sleep(0.1)
    thread.join()
    assert not errors and found is not None, "the frames covered the half-turn during the scan"
    final_spec = scan_from_documents(docs.items, settings.data_roots)
    result = run.finish(final_spec.n_angles, recorded_deg=final_spec.angles_deg)
    assert result["center"] == found["value"] and result["timings"]["recentred"] == 1
    histories = [b["history"] for b in read_block_status(run.live)]
    assert all(any(c == wrong["value"] for _, _, c in h) for h in histories), \
        "every block showed views at the provisional centre first"
    assert read_provenance(run.out)["center"]["value"] == found["value"]
    streamed = zarr.open_group(str(run.out), mode="r")["0"][:]
    one_shot = tmp_path / "one-shot.zarr"
    reconstruct(final_spec, ReconParams(center=found["value"]), one_shot, workers=0)
    reference = zarr.open_group(str(one_shot), mode="r")["0"][:]
    assert np.linalg.norm(streamed - reference) / np.linalg.norm(reference) < 1e-2


def bare_run(tmp_path, center: dict, *, arc_deg: float = 180.0, n_cols: int = 256):
    """A StreamRun of a 400-angle plan with no blocks: what the flow holds, for recenter."""
    import types

    from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

    planned = tuple(np.linspace(0, arc_deg, 400, endpoint=False))
    spec = ScanSpec(label="r", projections=(FrameSet(str(tmp_path / "p.h5"), "/d", None),),
                    flats=(), darks=(), angles_deg=planned, n_rows=4, n_cols=n_cols,
                    dtype="uint16")
    live, partial = tmp_path / "v.live.zarr", tmp_path / "v.partial"
    live.mkdir(exist_ok=True)
    partial.mkdir(exist_ok=True)
    return StreamRun(spec=spec, params=ReconParams(), out=tmp_path / "v.zarr", key="k",
                     live=live, positions={}, stream_plan=None, center=center,
                     pub=types.SimpleNamespace(partial=partial), planned=planned)


def test_a_found_centre_close_to_the_provisional_one_confirms_it(tmp_path):
    """Within CENTER_KEEP_PX the blocks go on (no control to start again) and the volume is
    the provisional centre's, said so; farther, the workers are told the new centre."""
    from tomopipe.tasks.recon.streaming import CENTER_KEEP_PX
    from tomopipe.tasks.storage.live_views import read_control

    provisional = {"value": 128.0, "method": "the start document's axis", "confidence": 0.0,
                   "provisional": True}
    found = {"value": 128.0 + CENTER_KEEP_PX / 2, "method": "vo (first 288 frames)",
             "confidence": 1.0}
    run = bare_run(tmp_path, provisional)
    run.recenter(found)
    assert run.center["value"] == 128.0 and not run.center["provisional"]
    assert "confirmed" in run.center["method"] and "128.025" in run.center["method"]
    assert read_control(run.live) == {}
    run = bare_run(tmp_path, provisional)
    run.recenter({**found, "value": 128.0 + 2 * CENTER_KEEP_PX})
    assert run.center["value"] == read_control(run.live)["center"] == 128.0 + 2 * CENTER_KEEP_PX


def test_a_full_turn_whose_centre_is_found_off_centre_is_discarded(tmp_path):
    """A 360-degree scan streams at the detector's middle; when the centre found puts the axis
    off-centre (stitched at the stop), the stream stops and its partial and views go."""
    from tomopipe.tasks.recon.streaming import StreamDiscarded

    run = bare_run(tmp_path, {"value": 50.0, "method": "the detector's middle",
                              "provisional": True}, arc_deg=360.0, n_cols=100)
    assert stream_refusal(run.params, run.spec, run.planned, 50.0) is None
    with pytest.raises(StreamDiscarded, match="axis off-centre .*centre 80.00 of 100"):
        run.recenter({"value": 80.0, "method": "vo", "confidence": 1.0})
    assert not run.live.exists() and not run.pub.partial.exists()


def test_the_centre_of_all_frames_is_put_beside_the_streamed_one(tmp_path):
    """After the publish the flow adds the centre all frames give and how far the streamed
    one was (a streamed centre 1 px off is beyond CENTER_WARN_PX, which the flow logs); a
    centre found from all frames already is taken as it is, without a second search."""
    import types

    from prefect.logging import disable_run_logger
    from tomopipe.tasks.recon.streaming import CENTER_WARN_PX
    from tomopipe.tasks.stream_tasks import _check_center

    size = 64
    settings, docs, thread, errors, _, start, planned = scan_in_progress(
        tmp_path, size=size, rows=8, n_angles=240, fps=400)
    thread.join()
    assert not errors
    spec = scan_from_documents(docs.items, settings.data_roots)
    result = {"center": size / 2 + 1.0}
    early = early_center(spec, ReconParams(), planned, 120)  # found from half the frames
    with disable_run_logger():
        _check_center(result, types.SimpleNamespace(spec=spec, found=early), ReconParams(),
                      planned, spec.n_angles, "r")
    assert abs(result["center_all_frames"] - size / 2) < 0.5
    assert result["center_off_px"] == pytest.approx(abs(result["center_all_frames"] - size / 2
                                                        - 1.0))
    assert result["center_off_px"] > CENTER_WARN_PX
    from_all = {"value": size / 2 + 0.1, "frames": spec.n_angles}  # as a search of all gives
    with disable_run_logger():
        _check_center(result, types.SimpleNamespace(spec=spec, found=from_all), ReconParams(),
                      planned, spec.n_angles, "r")
    assert result["center_all_frames"] == size / 2 + 0.1  # taken, not searched again
    assert result["center_off_px"] == pytest.approx(0.9)


def test_a_stream_still_at_its_provisional_centre_is_not_published(tmp_path, dask_client):
    size, rows, n_angles = 32, 4, 60
    _, _, thread, errors, spec, start, planned = scan_in_progress(
        tmp_path, size=size, rows=rows, n_angles=n_angles, fps=200)
    run = StreamRun.begin(dask_client, spec, ReconParams(), tmp_path / "vol.zarr",
                          planned_deg=planned,
                          center=provisional_center(spec, start["tomo"]),
                          stream_plan=plan_stream(rows, size, n_workers=2, memory_budget=2**30))
    thread.join()
    assert not errors
    with pytest.raises(TomopipeError, match="provisional"):
        run.finish(n_angles)
    assert not is_complete(run.out) and not run.out.exists()


def test_runs_json_contract_timeline_always_live_while_running(tmp_path):
    """The fields `tomopipe runs --json` gives scripts, from the real results database."""
    from tomopipe.tasks import results_table, run_progress

    from tomopipe.commands.runs import _entry

    home = tmp_path / "home"
    start, stop = {"plan_name": "tomo_scan", "time": 100.0}, {"exit_status": "success",
                                                              "time": 160.0}
    entry = _entry("u1", start, None, None, None)
    assert entry["timeline"] == {"start": 100.0, "running": None, "stop": None,
                                 "published": None}
    assert entry["live"] is None
    results_table.record(home, "u1", "waiting")
    results_table.record(home, "u1", "running")
    run_progress.record_live(home, "u1", 0.4, "/out/v.live.zarr", updated=150.0)
    row, progress = results_table.read_one(home, "u1"), run_progress.read_all(home)["u1"]
    entry = _entry("u1", start, None, row, progress)
    assert entry["state"] == "running"
    assert entry["live"] == {"fraction": 0.4, "updated": 150.0, "path": "/out/v.live.zarr"}
    running = entry["timeline"]["running"]
    assert running == pytest.approx(time.time(), abs=60)
    results_table.record(home, "u1", "running")  # the same attempt: its start is kept
    results_table.record(home, "u1", "completed", output="/out/v.zarr")
    row, progress = results_table.read_one(home, "u1"), run_progress.read_all(home)["u1"]
    entry = _entry("u1", start, stop, row, progress)
    assert entry["live"] is None  # only while running
    timeline = entry["timeline"]
    assert timeline["running"] == running and timeline["stop"] == 160.0
    assert timeline["published"] >= running
    # a new attempt forgets the old publication and live record
    results_table.record(home, "u1", "running")
    progress = run_progress.read_all(home)["u1"]
    assert progress["published"] is None and progress["live_path"] is None


def test_runs_that_cannot_stream_say_why(tmp_path):
    """Reconstruct-at-stop reasons, and the memory plan before the scan."""
    from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

    from tomopipe.errors import PlanError

    fs = FrameSet(str(tmp_path / "p.h5"), "/d")
    spec = ScanSpec("run", (fs,), (fs,), (), (0.0,), 8, 64, "uint16")
    planned = np.arange(180.0)
    assert stream_refusal(ReconParams(), spec, planned, None) is None
    cases = {
        "FBP only": ReconParams(algorithm="sirt"),
        "Fourier": ReconParams(backend="astra"),
        "ring removal": ReconParams(rings="fw"),
    }
    for words, params in cases.items():
        assert words in stream_refusal(params, spec, planned, None)
    assert "declares no angles" in stream_refusal(ReconParams(), spec, None, None)
    two_files = ScanSpec("run", (fs, fs), (fs,), (), (0.0, 1.0), 8, 64, "uint16")
    assert "one file" in stream_refusal(ReconParams(), two_files, planned, None)
    offset = stream_refusal(ReconParams(), spec, np.arange(0.0, 360.0, 0.5), 12.0)
    assert "360-degree" in offset
    # an adaptive SLURM cluster (infra.scaling answers its bounds) takes requests, not streams
    assert cluster_refusal(None) is None
    assert "adaptive SLURM" in cluster_refusal({"max_jobs": 2, "workers_per_job": 1})
    # memory: 2048 running slices of 2048^2 do not fit 2 workers of 4 GiB
    with pytest.raises(PlanError, match="streaming does not fit"):
        plan_stream(2048, 2048, n_workers=2, memory_budget=4 * 2**30)
    fits = plan_stream(128, 512, n_workers=2, memory_budget=4 * 2**30)
    assert len(fits.blocks) <= 2 and fits.blocks[0][0] == 0 and fits.blocks[-1][1] == 128


def test_early_center_waits_for_the_half_turn(tmp_path):
    from tomopipe.tasks.recon.streaming import covers_half_turn
    from tomopipe.tasks.sources.angle_plan import angle_sequence

    golden = angle_sequence(720, "golden")
    sequential = angle_sequence(720, "sequential")
    first = next(k for k in range(16, 721) if covers_half_turn(golden[:k]))
    assert first < 200  # a golden-ratio scan covers 180 degrees early
    assert not covers_half_turn(sequential[:700]) and covers_half_turn(sequential)
    assert frames_to_cover(golden) == first  # the bisection finds the fewest
    assert frames_to_cover(golden[:first - 1]) is None
    assert frames_to_cover(sequential) == next(k for k in range(700, 721)
                                               if covers_half_turn(sequential[:k]))


def test_early_center_waits_until_an_estimator_can_use_the_frames(tmp_path):
    """A sequential scan one frame short of its end covers 180 degrees with 1-degree gaps,
    but holds no pair of frames 180 degrees apart: no estimator can use it yet, so the early
    centre waits (it used to stream with the default centre, confidence 0)."""
    from tomopipe.tasks.recon.streaming import covers_half_turn

    settings = load_settings(tmp_path / "home")
    docs = Docs()
    simulate(settings, size=64, rows=8, angles=360, fps=None, sample="centre",
             callbacks=[docs], seed=3)
    spec = scan_from_documents(docs.items, settings.data_roots)
    planned = planned_angles_deg(docs.items[0][1]["tomo"])
    params = ReconParams(center="auto")
    assert covers_half_turn(planned[:359])
    assert early_center(spec, params, planned, 359) is None
    late = early_center(spec, params, planned, 359, require_cover=False)  # the run stopped
    assert late["confidence"] == 0 and late["method"].startswith("default")
    found = early_center(spec, params, planned, 360)
    assert found["confidence"] > 0.5 and abs(found["value"] - 32) < 1.5, found
    # a plan that never covers the half-turn finely (4-degree steps) is not waited on for
    # ever: once every planned frame is in, the centre comes from all of them
    docs = Docs()
    simulate(settings, size=32, rows=8, angles=45, fps=None, sample="coarse",
             callbacks=[docs], seed=3)
    coarse = scan_from_documents(docs.items, settings.data_roots)
    planned = planned_angles_deg(docs.items[0][1]["tomo"])
    assert not covers_half_turn(planned)
    assert early_center(coarse, params, planned, 44) is None
    assert early_center(coarse, params, planned, 45)["method"].endswith("(first 45 frames)")


def small_stream(tmp_path, dask_client, *, angles, fps, angle_order, size=32, rows=4):
    """A simulated scan of ``size`` x ``rows`` running, and its stream begun on the cluster:
    (settings, documents, scan thread, scan errors, StreamRun)."""
    settings = load_settings(tmp_path / "home")
    docs = Docs()
    thread, errors = start_scan(settings, docs, size=size, rows=rows, angles=angles, fps=fps,
                                angle_order=angle_order)
    spec, start = wait_for_spec(docs, settings)
    planned = planned_angles_deg(start["tomo"])
    params = ReconParams(center=size / 2)
    run = StreamRun.begin(dask_client, spec, params, tmp_path / "run" / "vol.zarr",
                          planned_deg=planned, center=early_center(spec, params, planned, 1),
                          stream_plan=plan_stream(rows, size, n_workers=2,
                                                  memory_budget=2**30))
    return settings, docs, thread, errors, run


def test_a_stream_whose_recorded_angles_differ_is_discarded(tmp_path, dask_client):
    """The stream weights frames by the run's planned angles; the angles its events recorded
    are checked at the stop, and a stream that used other angles publishes nothing (the live
    flow then reconstructs the run from the recorded angles)."""
    settings, docs, thread, errors, run = small_stream(tmp_path, dask_client, angles=120,
                                                       fps=60, angle_order="golden")
    out = run.out
    thread.join()
    assert not errors
    recorded = scan_from_documents(docs.items, settings.data_roots).angles_deg
    assert recorded == pytest.approx(run.planned)
    off = np.asarray(recorded) + np.where(np.arange(len(recorded)) == 7, 0.5, 0.0)
    with pytest.raises(AnglesDiffer, match="up to 0.5 degrees apart"):
        run.finish(len(recorded), recorded_deg=off)
    assert not out.exists() and not run.pub.partial.exists() and not run.live.exists()
    assert dask_client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


def test_the_angle_tolerance_is_configured_and_recorded(tmp_path, dask_client):
    """config.yaml ``stream.angle_tolerance_deg`` (checked: one line naming the key) lets a
    stage whose readback is 0.02 degrees off publish its streamed volume, and the provenance
    records how far the recorded angles were."""
    from tomopipe.errors import ConfigError

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("stream:\n  angle_tolerance_deg: -1\n")
    with pytest.raises(ConfigError, match="angle_tolerance_deg") as bad:
        load_settings(home)
    assert "\n" not in str(bad.value)
    (home / "config.yaml").write_text("stream:\n  angle_tolerance_deg: 0.05\n")
    tolerance = load_settings(home).stream.angle_tolerance_deg
    assert tolerance == 0.05
    settings, docs, thread, errors, run = small_stream(tmp_path, dask_client, angles=120,
                                                       fps=60, angle_order="golden")
    thread.join()
    assert not errors
    recorded = np.asarray(scan_from_documents(docs.items, settings.data_roots).angles_deg)
    readback = recorded + np.where(np.arange(recorded.size) % 2, 0.02, -0.02)
    run.finish(recorded.size, recorded_deg=readback, angle_tolerance_deg=tolerance)
    angles = read_provenance(run.out)["recorded_angles"]
    assert angles["tolerance_deg"] == 0.05
    assert angles["max_difference_deg"] == pytest.approx(0.02, abs=1e-6)


def test_an_abandoned_stream_leaves_no_volume_and_frees_its_workers(tmp_path, dask_client):
    _, _, thread, errors, run = small_stream(tmp_path, dask_client, angles=200, fps=40,
                                             angle_order="interlaced")
    out = run.out
    deadline = time.monotonic() + 120
    while run.poll()["frames_in"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    run.abort("the run was aborted")
    results = [f.result() for f in run.futures if f.status == "finished"]
    assert results and all(r.get("aborted") == "the run was aborted" for r in results)
    assert not out.exists() and not run.pub.partial.exists() and not run.live.exists()
    assert not out.parent.exists()
    thread.join()
    assert not errors
    # the workers are free again at once
    assert dask_client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


# --------------------------------------------------- the live flow through the real services


def test_live_flow_streams_a_golden_scan_and_runs_json_shows_it(services, services_home):
    """`tomopipe up` services: bus, bridge, Tiled, the Prefect deployment and the standing Dask
    cluster. The live flow streams the run; scripts see `live` while it runs, then the
    timeline."""
    from test_flows_support import LIVE, artifacts_of, deployment_parameters, final_run
    from tomopipe.tasks import results_table
    from tomopipe.tasks.storage.live_views import live_path
    from tomopipe.tasks.storage.omezarr import read_provenance

    from tomopipe.commands.runs import list_runs

    home, state = services_home, services
    settings = load_settings(home)
    docs = Docs()
    errors = []

    def scan():
        try:
            simulate(settings, size=64, rows=8, angles=720, fps=25, sample="stream-e2e",
                     publish_to=state["zmq_in"], callbacks=[docs], angle_order="golden",
                     seed=2)
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    # the deployment as registered (the home's standing cluster): other tests of the session
    # make the flows reconstruct in-process
    with deployment_parameters(state, "live-run/live", {}):
        thread = threading.Thread(target=scan, daemon=True)
        thread.start()
        while not docs.items and thread.is_alive():
            time.sleep(0.05)
        uid = docs.items[0][1]["uid"]
        live_seen = []
        while thread.is_alive():
            entry = next((r for r in list_runs(home) if r["uid"] == uid), None)
            if entry and entry["live"]:
                live_seen.append(entry["live"])
            time.sleep(0.5)
        thread.join()
        assert not errors
        fr = final_run(state, LIVE, uid, 300)
    assert fr["state_type"] == "COMPLETED", fr["state"]["message"]
    row = results_table.read_one(home, uid)
    out = Path(row["output"])
    assert row["state"] == "completed" and is_complete(out)
    assert read_provenance(out)["extra"]["streamed"] is True
    # the centre all frames give, beside the streamed one, in the run's figures
    details = row["details"]
    assert abs(details["center_all_frames"] - details["center"]) == \
        pytest.approx(details["center_off_px"], abs=1e-3)
    assert details["center_off_px"] < 0.5, details
    # the stream starter began the blocks at the first frame, before the flow ran; the flow
    # adopted them
    assert details["stream_started_by"] == "starter", details["stream_adoption"]
    assert details["stream_began_after_start_s"] > 0
    # scripts saw the live reconstruction grow while the scan ran
    assert live_seen, "no live record while the run was running"
    assert all(0 <= s["fraction"] <= 1 and s["path"] == str(live_path(out)) for s in live_seen)
    assert any(0 < s["fraction"] < 1 for s in live_seen)
    attrs = read_live_attrs(live_path(out))
    assert attrs["state"] == "published" and attrs["fraction"] == pytest.approx(1.0)
    entry = next(r for r in list_runs(home) if r["uid"] == uid)
    timeline = entry["timeline"]
    assert entry["live"] is None
    assert None not in timeline.values()
    assert timeline["start"] <= timeline["running"] <= timeline["published"]
    assert timeline["start"] < timeline["stop"] <= timeline["published"]
    kinds = {a["type"] for a in artifacts_of(state, fr["id"])}
    assert {"progress", "image", "table", "markdown"} <= kinds
