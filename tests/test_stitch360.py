"""360-degree scans: the off-centre axis found from the overlap of the half-turns, the stitched
reconstruction of an object wider than the detector against the phantom's attenuation, a
plain 360-degree scan using all its frames, and the bad-input messages."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from conftest import tomopipe_cli
from scipy import ndimage
from tomopipe.infra.datasets import make_offset_axis_scan, make_phantom_scan, write_dxchange
from tomopipe.tasks.preprocess._validate import ArrayInputError
from tomopipe.tasks.preprocess.center import find_rotation_axis
from tomopipe.tasks.preprocess.normalize import minus_log, normalize
from tomopipe.tasks.preprocess.stitch360 import (
    find_axis_360,
    half_turn_pairs,
    is_full_turn,
    is_offset_axis,
    stitch_half_turns,
    stitched_width,
)
from tomopipe.tasks.recon.backends import get_backend
from tomopipe.tasks.recon.engine import reconstruct
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.slab import to_sinograms
from tomopipe.tasks.sources import open_scan

AXIS = 170.3  # on a 200-column detector: 29 columns from its right edge
DETECTOR = 200
OBJECT = 330  # the phantom's body is 330 px wide: it never fits on the detector


@pytest.fixture(scope="module")
def offset_scan():
    return make_offset_axis_scan(DETECTOR, 8, 720, axis=AXIS, object_width=OBJECT,
                                 photons=40000.0, n_flats=4, n_darks=4)


@pytest.fixture(scope="module")
def offset_file(offset_scan, tmp_path_factory):
    s = offset_scan
    path = tmp_path_factory.mktemp("offset") / "offset360.h5"
    write_dxchange(path, s["projections"], s["flats"], s["darks"], s["angles_deg"])
    return path


def sinograms(scan):
    return to_sinograms(minus_log(normalize(scan["projections"], scan["flats"], scan["darks"])))


def material_ratios(volume, truth, rows):
    """Reconstructed over true attenuation, averaged inside each material region (eroded 3 px
    so edges and the partial-volume rim do not count)."""
    ratios = {}
    for z in rows:
        for value in np.unique(np.round(truth[z], 6)):
            inside = ndimage.binary_erosion(np.abs(truth[z] - value) < 1e-6, iterations=3)
            if value > 0 and inside.sum() > 50:
                ratios[(z, float(value))] = float(volume[z][inside].mean() / value)
    return ratios


def test_axis_and_overlap_found_with_confidence(offset_scan):
    sinos = sinograms(offset_scan)
    angles = np.radians(offset_scan["angles_deg"])
    assert is_full_turn(angles) and is_offset_axis(angles, AXIS, DETECTOR)
    est = find_axis_360(sinos, angles)
    assert abs(est.value - AXIS) <= 0.3
    assert est.confidence > 0.8
    assert abs(est.overlap_px - (2 * (DETECTOR - 1 - AXIS) + 1)) <= 1.5
    centre = find_rotation_axis(sinos, angles)
    assert centre.method == "360-overlap" and centre.value == est.value


def test_axis_found_on_a_wide_noisy_detector():
    """1024 columns: the gradients of single pixels are mostly photon noise; the search smooths
    along the row first (without it the two quarter-turns disagreed by 9 px)."""
    scan = make_offset_axis_scan(1024, 1, 900, axis=900.4, object_width=1640, with_truth=False)
    est = find_axis_360(sinograms(scan), np.radians(scan["angles_deg"]))
    assert abs(est.value - 900.4) <= 0.5 and est.confidence > 0.8


def test_wider_than_detector_reconstructs_within_3_percent(offset_file, offset_scan, tmp_path):
    """The engine end to end (real HDF5 in, OME-Zarr out, --center auto): the stitched slices
    are about twice the detector wide and every material is within 3 % of its attenuation."""
    spec = open_scan(offset_file)
    result = reconstruct(spec, ReconParams(), tmp_path / "v.zarr", workers=0)
    width = stitched_width(AXIS, DETECTOR)
    assert result.center_method == "360-overlap" and abs(result.center - AXIS) <= 0.3
    assert result.shape == (8, width, width) and width > 1.6 * DETECTOR
    group = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    geometry = group.attrs["tomopipe"]["preprocess"]["geometry"]
    assert geometry["width"] == width and abs(geometry["axis"] - AXIS) <= 0.3
    ratios = material_ratios(group["0"][:], offset_scan["truth"], rows=(1, 4, 6))
    assert len(ratios) >= 8
    worst = max(abs(r - 1) for r in ratios.values())
    assert worst < 0.03, ratios


def test_stitching_is_what_reaches_the_far_side(offset_scan):
    """Without stitching the detector's own width misses most of the object."""
    sinos = sinograms(offset_scan)[3:4]
    angles = np.radians(offset_scan["angles_deg"])
    stitched, half, centre = stitch_half_turns(sinos, angles, AXIS)
    assert stitched.shape == (1, 360, stitched_width(AXIS, DETECTOR)) and half.size == 360
    assert centre == (stitched.shape[-1] - 1) / 2
    # the mirrored second half-turn lands where the first saw nothing: the stitched row at
    # theta holds the whole shadow of the object, wider than the detector
    shadow = (stitched[0] > 0.05).sum(axis=1)
    assert shadow.min() > DETECTOR


def test_plain_360_uses_every_frame():
    """Axis in the middle: no stitching; both half-turns enter the reconstruction, so the
    noise in a uniform region falls by about sqrt(2) against the first half-turn alone."""
    scan = make_phantom_scan(128, 2, 720, angle_range=(0.0, 360.0), photons=2000.0, seed=3)
    sinos = sinograms(scan)
    angles = np.radians(scan["angles_deg"])
    assert is_full_turn(angles) and not is_offset_axis(angles, 64.0, 128)
    centre = find_rotation_axis(sinos, angles)
    assert centre.method.startswith("vo") and abs(centre.value - 64.0) < 0.5
    fbp = get_backend("fourier", "fbp", nthreads=1)
    full = fbp.reconstruct(sinos, angles, 64.0)
    half = fbp.reconstruct(sinos[:, :360], angles[:360], 64.0)
    body = ndimage.binary_erosion(np.abs(scan["truth"][0] - scan["truth"][0][64, 40]) < 1e-9,
                                  iterations=4)
    assert body.sum() > 200
    ratio = full[0][body].std() / half[0][body].std()
    assert 0.6 < ratio < 0.8
    assert abs(full[0][body].mean() / scan["truth"][0][body].mean() - 1) < 0.03


def test_center_search_stitches_each_candidate(offset_file, tmp_path):
    proc = tomopipe_cli("recon", str(offset_file), "--out", str(tmp_path / "c"),
                        "--center-search", "169.5:171:0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)["files"]
    assert len(files) == 4
    for path, c in zip(files, (169.5, 170.0, 170.5, 171.0), strict=True):
        img = tifffile.imread(path)
        assert img.shape == (stitched_width(c, DETECTOR),) * 2


def test_bad_angles_are_named():
    angles = np.radians(np.linspace(0, 360, 100, endpoint=False))
    angles[60] += np.radians(2.5)  # a frame of the second half-turn off by 2.5 degrees
    with pytest.raises(ArrayInputError, match="180 degrees after each frame"):
        half_turn_pairs(angles)
    half = np.radians(np.linspace(0, 180, 90, endpoint=False))
    with pytest.raises(ArrayInputError, match="needs a 360-degree scan"):
        find_axis_360(np.zeros((1, 90, 64)), half)
    with pytest.raises(ArrayInputError, match="outside the detector row"):
        stitch_half_turns(np.zeros((1, 100, 64)), np.radians(np.arange(100) * 3.6), 70.0)


def test_given_axis_off_centre_is_stitched_too(offset_file, tmp_path):
    """--center FLOAT on a 360-degree scan: an axis off the middle means stitching, and the
    volume is as wide as the stitched slices (planned before any slab runs)."""
    proc = tomopipe_cli("recon", str(offset_file), "--out", str(tmp_path / "v.zarr"),
                        "--center", str(AXIS), "--rows", "2:4", "--workers", "0", "--json",
                        "--no-progress")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    width = stitched_width(AXIS, DETECTOR)
    assert result["shape"] == [2, width, width] and result["center_method"] == "given"


def test_axis_near_the_left_edge():
    """The mirror case: the axis 30 px from the detector's left edge."""
    scan = make_offset_axis_scan(DETECTOR, 3, 720, axis=29.7, object_width=OBJECT)
    sinos = sinograms(scan)
    angles = np.radians(scan["angles_deg"])
    est = find_axis_360(sinos, angles)
    assert abs(est.value - 29.7) <= 0.3 and est.confidence > 0.8
    stitched, half, centre = stitch_half_turns(sinos, angles, est.value)
    volume = get_backend("fourier", "fbp", nthreads=1).reconstruct(stitched, half, centre)
    assert volume.shape == scan["truth"].shape
    ratios = material_ratios(volume, scan["truth"], rows=(1,))
    assert len(ratios) >= 3 and max(abs(r - 1) for r in ratios.values()) < 0.03, ratios
