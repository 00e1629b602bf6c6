"""``tomopipe recon`` end to end on a small Data Exchange phantom file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05 import Image
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.tasks.recon.engine import reconstruct
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.sources import open_scan
from tomopipe.tasks.storage import publish
from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

from tomopipe.cli import COMMANDS, main

N, ROWS, ANGLES = 64, 48, 120
TOMOPIPE = [sys.executable, "-m", "tomopipe.cli"]


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    d = make_phantom_scan(N, ROWS, ANGLES, n_flats=4, n_darks=4, seed=5)
    path = tmp_path_factory.mktemp("cli") / "phantom.h5"
    write_dxchange(path, d["projections"], d["flats"], d["darks"], d["angles_deg"],
                   pixel_size_um=1.5)
    return path


def _levels(path):
    group = zarr.open_group(str(path), mode="r")
    return [group[str(k)][:] for k in range(len(group))]


def test_killed_run_leaves_nothing_complete_and_rerun_resumes(scan_file, tmp_path):
    out = tmp_path / "vol.zarr"
    args = [str(scan_file), "--out", str(out), "--center", "32", "--workers", "0",
            "--slab-rows", "2", "--levels", "2"]
    markers = publish.partial_path(out) / publish.MARKER_DIR
    proc = subprocess.Popen(TOMOPIPE + ["recon", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(markers.glob("*.done"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no slab finished in time"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a crashed node
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(list(markers.glob("*.done")))
    assert 2 <= done < ROWS // 2, "the run finished before it could be killed"
    assert not out.exists() and not is_complete(publish.partial_path(out))

    rerun = subprocess.run(TOMOPIPE + ["recon", *args, "--json"], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"output", "center", "backend", "shape", "seconds", "key", "skipped",
            "center_method", "center_confidence"} <= set(result)
    assert result["output"] == str(out) and result["shape"] == [ROWS, N, N]
    assert result["center"] == 32.0 and result["skipped"] is False
    assert result["timings"]["resumed"] is True
    assert result["timings"]["n_slabs_computed"] == ROWS // 2 - done
    assert "slabs" in rerun.stderr  # the progress bar goes to stderr
    assert is_complete(out) and not publish.partial_path(out).exists()
    Image.from_zarr(zarr.open_group(str(out), mode="r"))

    # equal, value for value, to an uninterrupted run with the same parameters
    ref = tmp_path / "ref.zarr"
    # same slab size: finufft batches a slab's slices together, so only the same batching is
    # bit-for-bit reproducible
    reconstruct(open_scan(scan_file), ReconParams(center=32.0), ref, workers=0, levels=2,
                max_slab_rows=2)
    assert read_provenance(ref)["key"] == result["key"]
    for a, b in zip(_levels(out), _levels(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_same_key_again_is_a_no_op(scan_file, tmp_path, capsys):
    args = ["recon", str(scan_file), "--out", str(tmp_path / "v.zarr"), "--center", "32",
            "--workers", "0", "--rows", "0:8", "--json", "--no-progress"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    mtime = (tmp_path / "v.zarr" / "zarr.json").stat().st_mtime_ns
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["skipped"] is True and again["key"] == first["key"]
    assert again["shape"] == first["shape"] and again["center"] == 32.0
    assert (tmp_path / "v.zarr" / "zarr.json").stat().st_mtime_ns == mtime


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "not-hdf5.h5"
    bad.write_text("hello")
    proc = subprocess.run(TOMOPIPE + ["recon", str(bad), "--out", str(tmp_path / "o.zarr"),
                                      "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tomopipe recon: error:") and str(bad) in err[0]
    assert "Traceback" not in proc.stderr


def test_in_process_json_overwrite_and_errors(scan_file, tmp_path, capsys):
    out = tmp_path / "v.zarr"
    base = ["recon", str(scan_file), "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(base + ["--json", "--center", "31.5", "--rows", "8:24", "--rings", "fw",
                        "--filter", "hann"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == [16, N, N] and result["center_method"] == "given"
    prov = read_provenance(out)
    assert prov["params"]["rings"] == "fw" and prov["params"]["rows"] == [8, 24]
    assert prov["pixel_size_um"] == 1.5
    # another key at the same place: refused, then replaced with --overwrite
    assert main(base + ["--center", "33"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(base + ["--center", "33", "--rows", "0:8", "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [8, N, N]
    assert read_provenance(out)["center"]["value"] == 33.0
    assert main(base + ["--memory-limit", "lots"]) == 1
    assert "--memory-limit" in capsys.readouterr().err
    other = ["recon", str(scan_file), "--out", str(tmp_path / "w.zarr"), "--workers", "0"]
    assert main(other + ["--memory-limit", "20MB"]) == 1
    assert "needs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--rows", "9:3"])
    assert exit_.value.code == 2


def test_center_search_writes_named_tiffs(scan_file, tmp_path, capsys):
    folder = tmp_path / "centres"
    assert main(["recon", str(scan_file), "--out", str(folder), "--center-search", "31:33:0.5",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = sorted(p.name for p in folder.glob("*.tif"))
    assert names == ["center_31.00.tif", "center_31.50.tif", "center_32.00.tif",
                     "center_32.50.tif", "center_33.00.tif"]
    assert result["centers"] == [31.0, 31.5, 32.0, 32.5, 33.0]
    for name in names:
        with tifffile.TiffFile(folder / name) as tif:
            assert name == f"center_{tif.shaped_metadata[0]['center']:.2f}.tif"
            assert tif.asarray().shape == (N, N)


def test_help_has_an_example():
    proc = subprocess.run(TOMOPIPE + ["recon", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "tomopipe recon scan.h5 --out scan.zarr" in proc.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    proc = subprocess.run(TOMOPIPE + [command, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"usage: tomopipe {command}" in proc.stdout
