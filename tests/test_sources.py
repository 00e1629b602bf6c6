"""Scan sources: Data Exchange, NeXus NXtomo and explicit layouts, on real HDF5 files.

Every file is written by the test (infra.datasets or h5py directly); the SWMR test runs a real
writer process; the external-link test reads the slab in a real Dask worker process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil

import blake3
import h5py
import numpy as np
import pytest
from conftest import PEER_DATA
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange, write_nexus
from tomopipe.tasks.sources import open_scan
from tomopipe.tasks.sources.hdf5io import index_runs, read_frames, read_slab
from tomopipe.tasks.sources.identity import file_checksum
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

from tomopipe.errors import InputError

N, ROWS, ANGLES = 32, 16, 24


@pytest.fixture(scope="module")
def scan():
    return make_phantom_scan(N, ROWS, ANGLES, n_flats=5, n_darks=3, seed=3)


def assert_slab_matches(spec, scan, rows, *, darks=True):
    projections, flats, darks_read = read_slab(spec, rows)
    r0, r1 = rows
    np.testing.assert_array_equal(projections, scan["projections"][:, r0:r1])
    np.testing.assert_array_equal(flats, scan["flats"][:, r0:r1])
    if darks:
        np.testing.assert_array_equal(darks_read, scan["darks"][:, r0:r1])


# --- synthetic data -----------------------------------------------------------------------------


def test_phantom_scan_counts_follow_beer_lambert(scan):
    p, flats, darks = scan["projections"], scan["flats"], scan["darks"]
    assert p.dtype == flats.dtype == darks.dtype == np.uint16
    assert p.shape == (ANGLES, ROWS, N)
    assert flats.shape == (5, ROWS, N) and darks.shape == (3, ROWS, N)
    np.testing.assert_allclose(scan["angles_deg"], np.arange(ANGLES) * 180 / ANGLES)
    # The flat field is non-uniform (brighter in the middle) and the same in flats and data.
    field = scan["flat_field"]
    assert field[:, N // 2].mean() > 1.1 * field[:, 0].mean()
    mean_flat = flats.mean(axis=0) - darks.mean()
    np.testing.assert_allclose(mean_flat, field, rtol=0.05)
    # Transmission of the middle column matches exp(-line integral of the truth).
    transmission = (p.astype(float) - scan["dark_level"]) / (field)
    line = scan["truth"][:, :, :].sum(axis=1)  # angle 0: rays along image rows (y)
    np.testing.assert_allclose(-np.log(transmission[0, :, N // 2]), line[:, N // 2], atol=0.08)
    assert transmission.min() < 0.5  # features rescaled to n: realistic absorption


# --- identity -----------------------------------------------------------------------------------


def test_file_checksum_equals_one_shot_blake3(tmp_path):
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(1).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert file_checksum(path) == "blake3:" + blake3.blake3(data).hexdigest()
    with pytest.raises(InputError, match="no such file"):
        file_checksum(tmp_path / "absent.bin")


# --- Data Exchange ------------------------------------------------------------------------------


def test_dxchange_spec_and_row_slab(tmp_path, scan):
    path = write_dxchange(tmp_path / "scan.h5", scan["projections"], scan["flats"], scan["darks"],
                          scan["angles_deg"], pixel_size_um=0.65)
    spec = open_scan(path)
    assert spec.shape == (ANGLES, ROWS, N) and spec.dtype == "uint16"
    assert spec.identity == file_checksum(path)
    assert spec.pixel_size_um == pytest.approx(0.65)
    np.testing.assert_allclose(spec.angles_deg, scan["angles_deg"])
    assert spec.projections == (FrameSet(str(path), "/exchange/data", None),)
    assert ScanSpec.from_dict(spec.to_dict()) == spec
    assert_slab_matches(spec, scan, (5, 11))
    assert open_scan(path, checksum=False).identity is None


def test_dxchange_pixel_size_in_millimetres_and_absent(tmp_path, scan):
    path = write_dxchange(tmp_path / "scan.h5", scan["projections"], scan["flats"], scan["darks"],
                          scan["angles_deg"])
    assert open_scan(path, checksum=False).pixel_size_um is None
    assert open_scan(path, checksum=False, pixel_size_um=2.5).pixel_size_um == 2.5
    with h5py.File(path, "a") as f:
        ds = f.create_dataset("measurement/instrument/detection_system/objective/resolution",
                              data=0.0013)
        ds.attrs["units"] = "mm"
    assert open_scan(path, checksum=False).pixel_size_um == pytest.approx(1.3)


def test_read_frames_reads_runs_of_indices(tmp_path, scan):
    path = write_dxchange(tmp_path / "scan.h5", scan["projections"], scan["flats"], scan["darks"],
                          scan["angles_deg"])
    indices = (0, 1, 2, 7, 9, 10, 23)
    assert index_runs(indices) == [(0, 3), (7, 8), (9, 11), (23, 24)]
    got = read_frames(FrameSet(str(path), "/exchange/data", indices), (3, 4), label="scan")
    np.testing.assert_array_equal(got, scan["projections"][list(indices), 3:4])
    # Several frame sets are stacked in order.
    both = read_frames([FrameSet(str(path), "/exchange/data_white"),
                        FrameSet(str(path), "/exchange/data_dark", (1,))], (0, ROWS), label="x")
    np.testing.assert_array_equal(both, np.concatenate([scan["flats"], scan["darks"][1:2]]))


def test_dxchange_with_explicit_data_path_and_image_key(tmp_path, scan):
    path = write_dxchange(tmp_path / "scan.h5", scan["projections"], scan["flats"], scan["darks"],
                          scan["angles_deg"])
    corrected = scan["projections"] // 2
    with h5py.File(path, "a") as f:
        f.create_dataset("exchange/data_corrected", data=corrected, chunks=(1, ROWS, N))
    spec = open_scan(path, data_path="/exchange/data_corrected", checksum=False)
    np.testing.assert_array_equal(read_slab(spec, (1, 3))[0], corrected[:, 1:3])
    # Every frame in one stack, told apart by an image key; theta still found in its place.
    stack = np.concatenate([scan["flats"], scan["projections"]])
    with h5py.File(path, "a") as f:
        f["exchange/stack"] = stack
        f["exchange/keys"] = np.r_[np.ones(5), np.zeros(ANGLES)].astype(np.uint8)
    spec = open_scan(path, data_path="/exchange/stack", image_key_path="/exchange/keys",
                     checksum=False)
    assert spec.flats[0].indices == tuple(range(5)) and spec.darks == ()
    np.testing.assert_allclose(spec.angles_deg, scan["angles_deg"])
    assert_slab_matches(spec, scan, (0, 5), darks=False)


def test_missing_darks_are_allowed_and_read_as_zeros(tmp_path, scan):
    path = write_dxchange(tmp_path / "scan.h5", scan["projections"], scan["flats"], None,
                          scan["angles_deg"])
    spec = open_scan(path, checksum=False)
    assert spec.darks == () and "zeros" in spec.extra["darks"]
    projections, flats, darks = read_slab(spec, (0, 4))
    assert darks.shape == (1, 4, N) and not darks.any()
    np.testing.assert_array_equal(projections, scan["projections"][:, :4])


# --- NeXus NXtomo -------------------------------------------------------------------------------


def test_nexus_flats_and_darks_before_and_after_with_90_to_270_degrees(tmp_path):
    scan = make_phantom_scan(N, ROWS, ANGLES, angle_range=(90, 270), n_flats=4, n_darks=4, seed=5)
    path = write_nexus(tmp_path / "scan.nxs", scan["projections"], scan["flats"], scan["darks"],
                       scan["angles_deg"], pixel_size_um=1.3)
    spec = open_scan(path)
    assert spec.identity == file_checksum(path)
    assert spec.shape == (ANGLES, ROWS, N) and spec.pixel_size_um == pytest.approx(1.3)
    assert spec.angles_deg[0] == pytest.approx(90) and spec.angles_deg[-1] == pytest.approx(262.5)
    np.testing.assert_allclose(spec.angles_deg, scan["angles_deg"])
    counts = [spec.extra[k] for k in ("flats_before", "flats_after", "darks_before", "darks_after")]
    assert counts == [2, 2, 2, 2]
    # Frame stack: 2 darks, 2 flats, projections, 2 flats, 2 darks.
    assert spec.darks[0].indices == (0, 1, 30, 31)
    assert spec.flats[0].indices == (2, 3, 28, 29)
    assert spec.projections[0].indices == tuple(range(4, 28))
    assert_slab_matches(spec, scan, (0, ROWS))
    assert_slab_matches(spec, scan, (9, 10))


def test_nexus_radians_and_flats_only_before(tmp_path, scan):
    path = write_nexus(tmp_path / "scan.nxs", scan["projections"], scan["flats"], scan["darks"],
                       scan["angles_deg"], flats_after=False, darks_after=False, angle_units="rad")
    with h5py.File(path) as f:
        assert f["/entry/sample/rotation_angle"][-1] == pytest.approx(np.radians(172.5))
    spec = open_scan(path, checksum=False)
    np.testing.assert_allclose(spec.angles_deg, scan["angles_deg"])
    assert spec.extra["flats_after"] == 0 and spec.extra["flats_before"] == 5
    assert_slab_matches(spec, scan, (2, 7))


def test_nexus_external_link_read_from_a_dask_worker(tmp_path, scan, monkeypatch):
    made = write_nexus(tmp_path / "made.nxs", scan["projections"], scan["flats"], scan["darks"],
                       scan["angles_deg"], external=True)
    # Move the pair elsewhere: the relative link must resolve beside the main file, not in cwd.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(made, moved / "made.nxs")
    shutil.move(tmp_path / "made_frames.h5", moved / "made_frames.h5")
    monkeypatch.chdir(tmp_path)
    spec = open_scan(moved / "made.nxs")
    frames_file = str(moved / "made_frames.h5")
    assert spec.projections[0].path == frames_file and spec.projections[0].dataset == "/data"
    assert spec.extra["frame_files"] == [frames_file]
    # The identity covers the frames file too: changing a frame changes it.
    with h5py.File(frames_file, "a") as f:
        f["data"][10, 0, 0] += 1
    assert open_scan(moved / "made.nxs").identity != spec.identity
    with h5py.File(frames_file, "a") as f:
        f["data"][10, 0, 0] -= 1

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      scheduler_port=0, host="127.0.0.1") as cluster, Client(cluster) as client:
        pid, (projections, flats, darks) = client.submit(
            lambda s: (os.getpid(), read_slab(s, (4, 12))), spec).result()
    assert pid != os.getpid()
    np.testing.assert_array_equal(projections, scan["projections"][:, 4:12])
    np.testing.assert_array_equal(flats, scan["flats"][:, 4:12])
    np.testing.assert_array_equal(darks, scan["darks"][:, 4:12])


def test_nexus_found_by_nx_class_with_a_named_detector(tmp_path, scan):
    stack = np.concatenate([scan["flats"], scan["projections"]])
    keys = np.r_[np.ones(5, np.uint8), np.zeros(ANGLES, np.uint8)]
    path = tmp_path / "named.h5"
    with h5py.File(path, "w") as f:
        entry = f.create_group("scan_0007")
        entry.attrs["NX_class"] = np.bytes_(b"NXentry")
        entry["definition"] = np.bytes_(b"NXtomo")
        det = entry.create_group("instrument/pco_edge")
        det.attrs["NX_class"] = "NXdetector"
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        det["data"] = stack
        det["image_key"] = keys
        entry["sample/rotation_angle"] = np.r_[np.zeros(5), scan["angles_deg"]]  # no units: deg
    spec = open_scan(path, checksum=False)
    assert spec.extra["entry"] == "/scan_0007" and "darks" in spec.extra
    np.testing.assert_allclose(spec.angles_deg, scan["angles_deg"])
    assert_slab_matches(spec, scan, (0, 3), darks=False)


def test_explicit_paths_for_a_custom_layout(tmp_path, scan):
    stack = np.concatenate([scan["darks"], scan["flats"], scan["projections"]])
    keys = np.r_[np.full(3, 2), np.full(5, 1), np.zeros(ANGLES)].astype(np.int32)
    path = tmp_path / "custom.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw/camera/frames", data=stack, chunks=(1, ROWS, N))
        f["raw/camera/kind"] = keys
        theta = f.create_dataset("raw/motors/omega", data=np.radians(scan["angles_deg"]))
        theta.attrs["units"] = "radians"
    with pytest.raises(InputError) as err:
        open_scan(path)
    assert str(path) in str(err.value) and "data_path" in str(err.value)
    spec = open_scan(path, data_path="/raw/camera/frames", image_key_path="/raw/camera/kind",
                     angles_path="/raw/motors/omega")
    np.testing.assert_allclose(spec.angles_deg, scan["angles_deg"])
    assert spec.identity == file_checksum(path)
    assert_slab_matches(spec, scan, (6, 16))


def test_tomopy_peer_data_through_nexus_matches_tomopy_normalize(tmp_path):
    """TomoPy's test scan (int32 counts, angles in radians) written as NXtomo and read back:
    normalising the slab gives TomoPy's own normalize() result."""
    peer = PEER_DATA
    if not peer.is_dir():
        pytest.skip(f"TomoPy peer data not found at {peer}")
    names = ("tomo", "flat", "dark", "angle")
    tomo, flat, dark, angle = (np.load(peer / f"{n}.npy") for n in names)
    path = write_nexus(tmp_path / "tomopy.nxs", tomo, flat, dark, np.degrees(angle),
                       angle_units="rad")
    spec = open_scan(path, checksum=False)
    assert spec.dtype == "int32" and spec.shape == tomo.shape
    np.testing.assert_allclose(np.radians(spec.angles_deg), angle, atol=1e-12)
    projections, flats, darks = read_slab(spec, (2, 6))
    dark_mean = darks.mean(axis=0).astype(np.float32)
    normalized = (projections - dark_mean) / (flats.mean(axis=0).astype(np.float32) - dark_mean)
    np.testing.assert_allclose(normalized, np.load(peer / "normalize.npy")[:, 2:6], atol=1e-6)


# --- SWMR: a file still being written -----------------------------------------------------------


def _swmr_writer(path, ready, go, written, batches, batch):
    flats = np.full((2, ROWS, N), 1000, np.uint16)
    with h5py.File(path, "w", libver="latest") as f:
        ex = f.create_group("exchange")
        ex["data_white"] = flats
        data = ex.create_dataset("data", shape=(0, ROWS, N), maxshape=(None, ROWS, N),
                                 dtype=np.uint16, chunks=(1, ROWS, N))
        theta = ex.create_dataset("theta", shape=(0,), maxshape=(None,), dtype=np.float64)
        f.swmr_mode = True
        ready.set()
        for _ in range(batches):
            go.wait(30)
            go.clear()
            n0 = data.shape[0]
            data.resize(n0 + batch, axis=0)
            theta.resize(n0 + batch, axis=0)
            for i in range(n0, n0 + batch):
                data[i] = i
                theta[i] = i * 1.5
            data.flush()
            theta.flush()
            written.set()
        go.wait(30)


def test_swmr_reader_sees_frames_appended_by_a_writer_process(tmp_path):
    path = str(tmp_path / "live.h5")
    ctx = mp.get_context("spawn")
    ready, go, written = ctx.Event(), ctx.Event(), ctx.Event()
    batches, batch = 3, 4
    writer = ctx.Process(target=_swmr_writer, args=(path, ready, go, written, batches, batch))
    writer.start()
    try:
        assert ready.wait(60), "writer did not start"
        seen = []
        for _ in range(batches):
            go.set()
            assert written.wait(30), "writer did not append"
            written.clear()
            spec = open_scan(path, checksum=False)
            seen.append(spec.n_angles)
            projections, flats, _ = read_slab(spec, (ROWS - 2, ROWS))
            assert projections[:, 0, 0].tolist() == list(range(spec.n_angles))
            assert spec.angles_deg[-1] == pytest.approx((spec.n_angles - 1) * 1.5)
        assert seen == [batch * (b + 1) for b in range(batches)]
        go.set()
        writer.join(30)
        assert writer.exitcode == 0
    finally:
        if writer.is_alive():
            writer.kill()


# --- bad files: one line naming the file, the dataset and the fault -----------------------------


def expect_error(call, *parts):
    with pytest.raises(InputError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"
    return err.value


def _dx(tmp_path, scan, **changes):
    arrays = dict(projections=scan["projections"], flats=scan["flats"], darks=scan["darks"],
                  theta_deg=scan["angles_deg"])
    arrays.update(changes)
    return write_dxchange(tmp_path / "bad.h5", **arrays)


def test_missing_file_and_not_hdf5(tmp_path):
    expect_error(lambda: open_scan(tmp_path / "absent.h5"), tmp_path / "absent.h5", "no such file")
    text = tmp_path / "notes.h5"
    text.write_text("not a scan\n")
    expect_error(lambda: open_scan(text), text, "not an HDF5 file")


def test_missing_datasets(tmp_path, scan):
    path = _dx(tmp_path, scan)
    with h5py.File(path, "a") as f:
        del f["exchange/theta"]
    expect_error(lambda: open_scan(path), path, "/exchange/theta", "missing angle dataset")
    expect_error(lambda: open_scan(path, angles_path="/exchange/omega"), path,
                 "/exchange/omega", "missing angle dataset")
    nx = write_nexus(tmp_path / "nx.nxs", scan["projections"], scan["flats"], scan["darks"],
                     scan["angles_deg"])
    with h5py.File(nx, "a") as f:
        del f["entry/data/image_key"], f["entry/instrument/detector/image_key"]
    expect_error(lambda: open_scan(nx), nx, "/entry/instrument/detector/image_key",
                 "missing image_key")
    expect_error(lambda: open_scan(nx, image_key_path="/entry/keys"), nx, "/entry/keys",
                 "missing image_key")
    path = _dx(tmp_path, scan)
    expect_error(lambda: open_scan(path, data_path="/exchange/frames"), path, "/exchange/frames",
                 "missing projection data")


def test_broken_external_link(tmp_path, scan):
    nx = write_nexus(tmp_path / "nx.nxs", scan["projections"], scan["flats"], scan["darks"],
                     scan["angles_deg"], external=True)
    os.remove(tmp_path / "nx_frames.h5")
    expect_error(lambda: open_scan(nx), nx, "/entry/", "data")


def test_wrong_rank(tmp_path, scan):
    path = _dx(tmp_path, scan, projections=scan["projections"][:, 0, :])
    expect_error(lambda: open_scan(path), path, "/exchange/data", "must be 3-D", "rank 2")


def test_angles_and_projections_of_different_lengths(tmp_path, scan):
    path = _dx(tmp_path, scan, theta_deg=scan["angles_deg"][:-3])
    expect_error(lambda: open_scan(path), path, "/exchange/theta", "21 angles for 24 projections")
    nx = write_nexus(tmp_path / "nx.nxs", scan["projections"], scan["flats"], scan["darks"],
                     scan["angles_deg"])
    with h5py.File(nx, "a") as f:
        angles = f["entry/sample/rotation_angle"][:-1]
        del f["entry/sample/rotation_angle"]
        f["entry/sample/rotation_angle"] = angles
    expect_error(lambda: open_scan(nx), nx, "/entry/sample/rotation_angle",
                 "31 angles for 32 frames")


def test_no_flats(tmp_path, scan):
    path = _dx(tmp_path, scan, flats=None)
    expect_error(lambda: open_scan(path), path, "/exchange/data_white", "no flats")
    nx = write_nexus(tmp_path / "nx.nxs", scan["projections"], None, scan["darks"],
                     scan["angles_deg"])
    expect_error(lambda: open_scan(nx), nx, "/entry/instrument/detector/image_key",
                 "no flat-field frames")


@pytest.mark.parametrize("which, dataset", [("flats", "/exchange/data_white"),
                                            ("darks", "/exchange/data_dark")])
def test_flat_or_dark_shape_differs_from_projections(tmp_path, scan, which, dataset):
    path = _dx(tmp_path, scan, **{which: scan[which][:, :, :-2]})
    expect_error(lambda: open_scan(path), path, dataset, f"are {ROWS}x{N - 2}",
                 f"projections are {ROWS}x{N}")


def test_truncated_file(tmp_path, scan):
    path = _dx(tmp_path, scan)
    os.truncate(path, os.path.getsize(path) * 2 // 3)
    expect_error(lambda: open_scan(path), path, "truncated")


def _corrupt_chunk(path, dataset, frame):
    """Overwrite a compressed frame's bytes on disk, as a bad disk or a cut transfer would."""
    with h5py.File(path) as f:
        info = f[dataset].id.get_chunk_info_by_coord((frame, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 2)
        fh.write(b"\xff" * 32)


def _compressed_dx(tmp_path, scan):
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=scan["projections"], chunks=(1, ROWS, N),
                         compression="gzip")
        f["exchange/data_white"] = scan["flats"]
        f["exchange/theta"] = scan["angles_deg"]
    return path


def test_unreadable_last_frame_found_at_open(tmp_path, scan):
    path = _compressed_dx(tmp_path, scan)
    _corrupt_chunk(path, "exchange/data", ANGLES - 1)
    expect_error(lambda: open_scan(path), path, "/exchange/data", "truncated or unreadable",
                 f"frame {ANGLES - 1}")


def test_unreadable_frame_found_on_read(tmp_path, scan):
    path = _compressed_dx(tmp_path, scan)
    _corrupt_chunk(path, "exchange/data", 7)
    spec = open_scan(path, checksum=False)  # the last frame is fine
    expect_error(lambda: read_slab(spec, (0, 2)), path, "/exchange/data", "cannot read frames",
                 "rows 0:2")


def test_non_finite_values_named_by_frame_and_row(tmp_path, scan):
    projections = scan["projections"].astype(np.float32)
    projections[13, 9, 4] = np.nan
    path = _dx(tmp_path, scan, projections=projections)
    spec = open_scan(path, checksum=False)
    assert spec.dtype == "float32"
    read_slab(spec, (0, 9))  # rows without the bad value read fine
    expect_error(lambda: read_slab(spec, (8, 12)), path, "/exchange/data", "non-finite",
                 "frame 13, row 9")


def test_row_range_outside_the_frames(tmp_path, scan):
    path = _dx(tmp_path, scan)
    spec = open_scan(path, checksum=False)
    expect_error(lambda: read_slab(spec, (10, ROWS + 1)), path, f"row range 10:{ROWS + 1}")
