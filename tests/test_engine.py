"""The engine on a real Dask cluster: volumes, resume, no-op, a killed worker, centre search."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import tifffile
import zarr
from distributed import Client, LocalCluster
from ome_zarr_models.v05 import Image
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.tasks.recon.backends import get_backend
from tomopipe.tasks.recon.engine import center_search, reconstruct
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.slab import preprocess_slab, reconstruct_slab
from tomopipe.tasks.sources import open_scan
from tomopipe.tasks.sources.hdf5io import read_slab
from tomopipe.tasks.storage import publish
from tomopipe.tasks.storage.omezarr import is_complete, read_provenance
from tomopipe.tasks.storage.pyramid import build_levels

from tomopipe.errors import InputError, PlanError

N, ROWS, ANGLES, CENTER = 48, 24, 90, 24.0


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = make_phantom_scan(N, ROWS, ANGLES, center=CENTER, n_flats=4, n_darks=4, seed=3)
    path = tmp_path_factory.mktemp("scan") / "phantom.h5"
    write_dxchange(path, d["projections"], d["flats"], d["darks"], d["angles_deg"],
                   pixel_size_um=2.0)
    return open_scan(path), d


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", memory_limit="1GiB") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def reference(scan, tmp_path_factory):
    """The uninterrupted in-process run every other run is compared with, value by value."""
    spec, _ = scan
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    result = reconstruct(spec, ReconParams(center=CENTER), out, workers=0, max_slab_rows=8,
                         levels=3)
    return result, out, _levels(out)


def _levels(path):
    group = zarr.open_group(str(path), mode="r")
    return [group[str(k)][:] for k in range(len(group))]


def test_dask_run_matches_reference_truth_and_metadata(scan, client, reference, tmp_path):
    spec, d = scan
    _, _, ref = reference
    out = tmp_path / "v.zarr"
    seen = []
    result = reconstruct(spec, ReconParams(center=CENTER), out, client=client,
                         progress=lambda a, b: seen.append((a, b)), max_slab_rows=8, levels=3,
                         extra_provenance={"run_uid": "abc"})
    assert not result.skipped and result.shape == (ROWS, N, N) and is_complete(out)
    assert seen[-1] == (3, 3) and len(seen) == 4
    got = _levels(out)
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    # the pyramid levels are the block means of level 0
    for a, b in zip(build_levels(got[0], len(got)), got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # physics: per-cm values (pixel 2 um) against the analytic phantom
    per_pixel = got[0] * (2.0 / 1e4)
    assert np.corrcoef(per_pixel.ravel(), d["truth"].ravel())[0, 1] > 0.95
    assert abs(per_pixel.mean() - d["truth"].mean()) < 0.1 * d["truth"].mean()
    Image.from_zarr(zarr.open_group(str(out), mode="r"))
    prov = read_provenance(out)
    assert prov["complete"] is True and prov["key"] == result.key
    assert prov["params"] == ReconParams(center=CENTER).to_dict()
    assert prov["center"]["value"] == CENTER and prov["center"]["method"] == "given"
    assert prov["source"]["identity"] == spec.identity
    assert {"tomopipe", "numpy", "zarr", "dask", "finufft", "astra"} <= set(prov["versions"])
    assert prov["timings"]["total_s"] > 0 and prov["units"] == "1/cm"
    assert prov["extra"] == {"run_uid": "abc"}
    assert not (out / publish.MARKER_DIR).exists()


def test_same_key_is_a_no_op_and_other_key_needs_overwrite(scan, reference, tmp_path):
    spec, _ = scan
    _, out, _ = reference
    before = (out / "zarr.json").stat().st_mtime_ns
    again = reconstruct(spec, ReconParams(center=CENTER), out, workers=0)
    assert again.skipped and again.center == CENTER and again.key == reference[0].key
    assert (out / "zarr.json").stat().st_mtime_ns == before
    with pytest.raises(InputError, match="--overwrite"):
        reconstruct(spec, ReconParams(center=CENTER + 1), out, workers=0)
    copy = tmp_path / "c.zarr"
    reconstruct(spec, ReconParams(center=CENTER), copy, workers=0, max_slab_rows=8)
    replaced = reconstruct(spec, ReconParams(center=CENTER, filter_name="hann", rows=(0, 8)),
                           copy, workers=0, overwrite=True)
    assert not replaced.skipped and read_provenance(copy)["key"] == replaced.key
    assert _levels(copy)[0].shape == (8, N, N)


def test_interrupted_run_resumes_only_missing_slabs(scan, reference, tmp_path):
    spec, _ = scan
    out = tmp_path / "v.zarr"

    def crash(done, total):
        if done == 1:
            raise KeyboardInterrupt  # as if the process stopped after one slab

    with pytest.raises(KeyboardInterrupt):
        reconstruct(spec, ReconParams(center=CENTER), out, workers=0, progress=crash,
                    max_slab_rows=8, levels=3)
    assert not out.exists() and not is_complete(publish.partial_path(out))
    assert len(list((publish.partial_path(out) / publish.MARKER_DIR).glob("*.done"))) == 1
    result = reconstruct(spec, ReconParams(center=CENTER), out, workers=0)
    assert result.timings["resumed"] and result.timings["n_slabs_computed"] == 2
    for a, b in zip(_levels(out), reference[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_killed_dask_worker_is_retried(scan, client, reference, tmp_path):
    spec, _ = scan
    out = tmp_path / "v.zarr"
    pids = client.run(os.getpid)
    killed = []

    def kill_a_worker(done, total):
        if done == 1 and not killed:
            # a worker that holds slab tasks right now (running or queued on it)
            busy = [w for w, keys in client.processing().items() if keys]
            assert busy, "no slab left in flight to lose"
            victim = pids[busy[0]]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    result = reconstruct(spec, ReconParams(center=CENTER), out, client=client,
                         progress=kill_a_worker, max_slab_rows=4, levels=3)
    assert killed and is_complete(out) and not result.skipped
    for a, b in zip(_levels(out), reference[2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert killed[0] not in client.run(os.getpid).values()


def test_impossible_memory_budget_writes_nothing(scan, tmp_path):
    spec, _ = scan
    out = tmp_path / "v.zarr"
    with pytest.raises(PlanError, match="--memory-limit"):
        reconstruct(spec, ReconParams(center=CENTER), out, workers=0, memory_limit="10MB")
    assert not out.exists() and not publish.partial_path(out).exists()


@pytest.mark.parametrize("bad, field", [
    ({"filter_name": "bogus"}, "filter_name"), ({"center": "middle"}, "center"),
    ({"center": float("nan")}, "center"), ({"rows": (8, 4)}, "rows"),
    ({"zingers": -1.0}, "zingers"), ({"iterations": 0}, "iterations"),
    ({"flat_method": "max"}, "flat_method"), ({"rings": "wavelet"}, "rings")])
def test_bad_parameters_are_refused_where_given(bad, field, tmp_path):
    """Before any output exists: the flows build ReconParams from config.yaml and parameters."""
    from tomopipe.tasks.recon.params import recon_params

    from tomopipe.config import load_settings
    from tomopipe.errors import ConfigError

    with pytest.raises(ConfigError, match=f"reconstruction parameter {field}: expected"):
        recon_params(load_settings(tmp_path), bad)
    assert list(tmp_path.iterdir()) == []


def test_auto_center_and_rows(scan, tmp_path):
    spec, d = scan
    result = reconstruct(spec, ReconParams(rows=(4, 20)), tmp_path / "v.zarr", workers=0)
    assert result.shape == (16, N, N)
    assert abs(result.center - CENTER) <= 1.0
    assert result.center_method != "given" and 0 <= result.center_confidence <= 1
    prov = read_provenance(tmp_path / "v.zarr")
    assert prov["center"]["estimates"] and prov["rows"] == [4, 20]
    with pytest.raises(InputError, match="row range"):
        reconstruct(spec, ReconParams(rows=(10, 99)), tmp_path / "w.zarr", workers=0)
    with pytest.raises(InputError, match="outside the detector"):
        reconstruct(spec, ReconParams(center=500.0), tmp_path / "w.zarr", workers=0)


@pytest.fixture
def slab(scan):
    """Two rows of the scan as read by a worker, their angles, and the Fourier backend."""
    spec, _ = scan
    proj, flats, darks = read_slab(spec, (8, 10))
    return proj, flats, darks, np.deg2rad(spec.angles_deg), get_backend("fourier")


def test_slab_pipeline_units(slab):
    proj, flats, darks, angles, backend = slab
    per_pixel = reconstruct_slab(proj, flats, darks, angles, CENTER, ReconParams(), backend=backend)
    per_cm = reconstruct_slab(proj, flats, darks, angles, CENTER, ReconParams(), backend=backend,
                              pixel_size_um=2.0)
    np.testing.assert_allclose(per_cm, per_pixel * 1e4 / 2.0, rtol=1e-5)
    sinos = preprocess_slab(proj, flats, darks, ReconParams())
    assert sinos.shape == (2, ANGLES, N) and sinos.dtype == np.float32


def test_center_search_files_say_the_centre_they_used(scan, tmp_path):
    spec, d = scan
    candidates = [CENTER - 2, CENTER - 0.5, CENTER, CENTER + 1.5]
    files = center_search(spec, ReconParams(), tmp_path, candidates, row=12)
    assert [f.name for f in files] == ["center_22.00.tif", "center_23.50.tif",
                                       "center_24.00.tif", "center_25.50.tif"]
    sinos = preprocess_slab(*read_slab(spec, (12, 13)), ReconParams())
    backend = get_backend()
    scores = {}
    for f in files:
        with tifffile.TiffFile(f) as tif:
            meta = tif.shaped_metadata[0]
            img = tif.asarray()
        expected = backend.reconstruct(sinos, np.deg2rad(spec.angles_deg), meta["center"])[0]
        np.testing.assert_allclose(img, expected / (2.0 / 1e4), rtol=1e-5, atol=1e-3)
        assert f.name == f"center_{meta['center']:.2f}.tif" and meta["row"] == 12
        scores[meta["center"]] = np.corrcoef(img.ravel(), d["truth"][12].ravel())[0, 1]
    assert max(scores, key=scores.get) == CENTER
    json.dumps(scores)


def test_running_scheduler_by_address(scan, client, reference, tmp_path):
    """--scheduler ADDRESS: the engine connects to a running cluster instead of starting one."""
    spec, _ = scan
    out = tmp_path / "v.zarr"
    result = reconstruct(spec, ReconParams(center=CENTER), out,
                         scheduler=client.scheduler.address, max_slab_rows=8, levels=3)
    assert is_complete(out) and result.key == reference[0].key
    np.testing.assert_array_equal(_levels(out)[0], reference[2][0])


def test_local_cluster_from_infra(monkeypatch):
    """Without GPUs (none here; NVML absent or disabled) dask_client starts a LocalCluster of
    single-threaded worker processes with the given memory limit."""
    from tomopipe.infra.cluster import dask_client, gpu_count, worker_resources

    monkeypatch.setenv("TOMOPIPE_NO_GPU", "1")
    assert gpu_count() == 0
    with dask_client(workers=1, memory_limit="700MB") as c:
        n, limit = worker_resources(c)
        assert n == 1 and limit == 700 * 10**6
        info = next(iter(c.scheduler_info()["workers"].values()))
        assert info["nthreads"] == 1


def test_slab_pipeline_removes_zingers_when_asked(slab):
    proj, flats, darks, angles, backend = slab
    clean = reconstruct_slab(proj, flats, darks, angles, CENTER, ReconParams(), backend=backend)
    hit = proj.copy()
    hit[5, 1, 20] = 60000  # a zinger: one saturated pixel in one projection
    raw = reconstruct_slab(hit, flats, darks, angles, CENTER, ReconParams(), backend=backend)
    fixed = reconstruct_slab(hit, flats, darks, angles, CENTER, ReconParams(zingers=0.5),
                             backend=backend)
    assert np.abs(fixed - clean).max() < 0.5 * np.abs(raw - clean).max()
