"""Paganin phase retrieval: against TomoPy's own output on its test data, against a phantom of
known phase shift propagated exactly (Fresnel), across slab seams, and its bad-input messages."""

import math

import numpy as np
import pytest
from conftest import peer_array, tomopipe_cli
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.tasks.phantom import fresnel_intensity
from tomopipe.tasks.preprocess._validate import ArrayInputError
from tomopipe.tasks.preprocess.phase import (
    paganin_filter,
    paganin_margin,
    paganin_strength,
    wavelength_m,
)
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.slab import preprocess_slab, read_window

from tomopipe.errors import ConfigError


def test_paganin_matches_tomopy_on_its_test_data():
    """TomoPy's retrieve_phase of proj.npy with its defaults (pixel 1e-4 cm, distance 50 cm,
    20 keV, alpha 1e-3). The TomoPy that wrote the file sampled |f|^2 in cycles (not radians)
    per length in 1 / (lambda z |f|^2 / (4 pi) + alpha): that is Paganin's filter with
    delta/beta = 1 / (4 pi^2 alpha). Its reciprocal grid sits half a bin off zero and its
    padding is a power of two, so the match is close, not exact."""
    proj, ref = peer_array("proj"), peer_array("retrieve_phase")
    out = paganin_filter(proj, pixel_size_um=1.0, distance_mm=500.0, energy_kev=20.0,
                         delta_beta=1 / (4 * math.pi**2 * 1e-3))
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99999
    np.testing.assert_allclose(out, ref, rtol=0.03)
    assert abs(out.mean() / ref.mean() - 1) < 0.01
    # and it is a real filter: the unfiltered projections are far from TomoPy's output
    assert np.abs(proj - ref).max() > 5


def _sphere(n=256, radius=30.0, mu=0.004):
    y, x = np.mgrid[:n, :n] - n / 2 + 0.5
    return mu * 2 * np.sqrt(np.clip(radius**2 - x**2 - y**2, 0, None))


def test_paganin_recovers_a_known_phase_object():
    """A sphere of one material (delta/beta 50) imaged 50 mm behind at 20 keV, 1 um pixels:
    exact Fresnel propagation gives edge fringes; Paganin's retrieval returns its projected
    attenuation mu*t, whose total and peak are known."""
    px, z, energy, db = 1.0, 50.0, 20.0, 50.0
    mu_t = _sphere()
    fresnel = wavelength_m(energy) * z * 1e-3 / (px * 1e-6) ** 2
    intensity = fresnel_intensity(mu_t, db, fresnel)
    assert intensity.max() > 1.3  # strong phase contrast: fringes brighter than the open beam
    out = paganin_filter(intensity[None].astype(np.float32), pixel_size_um=px, distance_mm=z,
                         energy_kev=energy, delta_beta=db)
    retrieved = -np.log(out[0])
    assert abs(retrieved.sum() / mu_t.sum() - 1) < 0.01
    assert abs(retrieved.max() / mu_t.max() - 1) < 0.02
    err = np.sqrt(np.mean((retrieved - mu_t) ** 2))
    naive = np.sqrt(np.mean((-np.log(intensity) - mu_t) ** 2))
    assert err < 0.1 * naive


def test_slabs_filtered_apart_join_without_seams():
    """Rows read beyond a slab (the halo) make slab-wise phase retrieval equal the whole-frame
    one: the engine's slabs show no seams."""
    scan = make_phantom_scan(96, 48, 24, n_flats=2, n_darks=2, with_truth=False)
    params = ReconParams(phase="paganin", energy_kev=20.0, distance_mm=20.0, delta_beta=50.0)
    px = 1.0
    whole = preprocess_slab(scan["projections"], scan["flats"], scan["darks"], params,
                            pixel_size_um=px)
    margin = paganin_margin(paganin_strength(px, 20.0, 20.0, 50.0))
    assert 0 < margin < 48
    parts = []
    for rows in ((0, 16), (16, 32), (32, 48)):
        (a, b), halo = read_window(rows, 48, margin)
        parts.append(preprocess_slab(scan["projections"][:, a:b], scan["flats"][:, a:b],
                                     scan["darks"][:, a:b], params, pixel_size_um=px,
                                     halo=halo))
    joined = np.concatenate(parts, axis=0)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, atol=2e-4 * np.abs(whole).max())
    without_halo = preprocess_slab(scan["projections"][:, 16:32], scan["flats"][:, 16:32],
                                   scan["darks"][:, 16:32], params, pixel_size_um=px)
    assert np.abs(without_halo - whole[16:32]).max() > 10 * np.abs(joined - whole).max()


@pytest.mark.parametrize("kwargs, named", [
    ({"phase": "paganin", "distance_mm": 100.0, "delta_beta": 100.0}, "energy_kev"),
    ({"phase": "paganin", "energy_kev": 20.0, "delta_beta": 100.0}, "distance_mm"),
    ({"phase": "paganin", "energy_kev": 20.0, "distance_mm": 100.0}, "delta_beta"),
    ({"phase": "paganin", "energy_kev": 20.0, "distance_mm": 100.0, "delta_beta": -1.0},
     "delta_beta"),
    ({"energy_kev": 20.0}, "energy_kev"),
    ({"phase": "tie"}, "phase"),
])
def test_bad_phase_parameters_are_named(kwargs, named):
    with pytest.raises(ConfigError) as err:
        ReconParams(**kwargs)
    assert f"parameter {named}:" in str(err.value) and "\n" not in str(err.value)


def test_bad_physical_values_are_named():
    with pytest.raises(ArrayInputError, match="energy_kev"):
        paganin_strength(1.0, 100.0, 0.0, 100.0)
    with pytest.raises(ArrayInputError, match="pixel_size_um"):
        paganin_strength(float("nan"), 100.0, 20.0, 100.0)


@pytest.fixture(scope="module")
def scan_without_pixel_size(tmp_path_factory):
    scan = make_phantom_scan(64, 4, 32, n_flats=2, n_darks=2, with_truth=False)
    path = tmp_path_factory.mktemp("phase") / "scan.h5"
    write_dxchange(path, scan["projections"], scan["flats"], scan["darks"], scan["angles_deg"])
    return path


def test_cli_phase_without_pixel_size_is_one_line(scan_without_pixel_size, tmp_path):
    proc = tomopipe_cli("recon", str(scan_without_pixel_size), "--out", str(tmp_path / "v.zarr"),
                        "--phase", "paganin", "--energy", "20", "--distance", "100",
                        "--delta-beta", "100", "--workers", "0")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(err) == 1 and "pixel size" in err[0] and "--pixel-size" in err[0]
    assert not (tmp_path / "v.zarr").exists()


def test_cli_bad_energy_is_a_usage_error(scan_without_pixel_size, tmp_path):
    proc = tomopipe_cli("recon", str(scan_without_pixel_size), "--out", str(tmp_path / "v.zarr"),
                        "--phase", "paganin", "--energy", "-20")
    assert proc.returncode == 2 and "--energy" in proc.stderr


def test_cli_phase_retrieval_runs_and_is_recorded(scan_without_pixel_size, tmp_path):
    import json

    import zarr

    out = tmp_path / "v.zarr"
    proc = tomopipe_cli("recon", str(scan_without_pixel_size), "--out", str(out), "--phase",
                        "paganin", "--energy", "20", "--distance", "100", "--delta-beta", "100",
                        "--pixel-size", "1.0", "--center", "32", "--workers", "0", "--json",
                        "--no-progress")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    prov = zarr.open_group(str(out), mode="r").attrs["tomopipe"]
    assert prov["key"] == result["key"]
    assert prov["params"]["phase"] == "paganin" and prov["params"]["delta_beta"] == 100.0
    assert prov["preprocess"]["phase"]["margin_rows"] >= 1
    plain = tomopipe_cli("recon", str(scan_without_pixel_size), "--out",
                         str(tmp_path / "p.zarr"), "--pixel-size", "1.0", "--center", "32",
                         "--workers", "0", "--json", "--no-progress")
    assert json.loads(plain.stdout)["key"] != result["key"]  # the phase options enter the key


def test_center_search_applies_phase_retrieval(scan_without_pixel_size, tmp_path):
    import json

    import tifffile

    common = ("recon", str(scan_without_pixel_size), "--center-search", "31:32:1",
              "--pixel-size", "1.0", "--json")
    plain = tomopipe_cli(*common, "--out", str(tmp_path / "plain"))
    phase = tomopipe_cli(*common, "--out", str(tmp_path / "phase"), "--phase", "paganin",
                         "--energy", "20", "--distance", "100", "--delta-beta", "100")
    assert plain.returncode == 0 and phase.returncode == 0, phase.stderr
    a = tifffile.imread(json.loads(plain.stdout)["files"][0])
    b = tifffile.imread(json.loads(phase.stdout)["files"][0])
    assert a.shape == b.shape and np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_the_planner_counts_the_halo_rows(scan_without_pixel_size, tmp_path):
    """Phase retrieval reads rows beyond each slab: the chunk plan's memory estimate grows by
    exactly those rows (raw frames and two float32 copies)."""
    import zarr
    from tomopipe.tasks.recon.engine import reconstruct
    from tomopipe.tasks.recon.slab_inputs import halo_bytes
    from tomopipe.tasks.sources import open_scan

    spec = open_scan(scan_without_pixel_size, checksum=False)
    phase = ReconParams(phase="paganin", energy_kev=20.0, distance_mm=100.0, delta_beta=100.0,
                        pixel_size_um=1.0, center=32.0)
    plain = ReconParams(pixel_size_um=1.0, center=32.0)
    extra = halo_bytes(spec, phase)
    assert extra > 0 and halo_bytes(spec, plain) == 0
    plans = []
    for name, params in (("phase", phase), ("plain", plain)):
        reconstruct(spec, params, tmp_path / f"{name}.zarr", workers=0)
        prov = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r").attrs["tomopipe"]
        plans.append(prov["plan"])
    assert plans[0]["slab_rows"] == plans[1]["slab_rows"]
    assert plans[0]["est_bytes_per_slab"] - plans[1]["est_bytes_per_slab"] == extra
