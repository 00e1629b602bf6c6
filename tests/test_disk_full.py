"""A full disk, for real: a 2 MiB tmpfs mounted for the test (needs root; skipped otherwise).

- The pre-flight check refuses a volume larger than the free space before anything is written.
- A disk that fills while slabs are written (another file takes the space after the check)
  ends the command with one line naming the output, the space needed and the space free; nothing
  looks complete, and the same command resumes once there is space.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.tasks.storage import publish, space
from tomopipe.tasks.storage.omezarr import is_complete

TOMOPIPE = [sys.executable, "-m", "tomopipe.cli"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _scan(folder: Path, n: int, rows: int) -> Path:
    d = make_phantom_scan(n, rows, 90, n_flats=2, n_darks=2, seed=3)
    path = folder / f"scan{n}x{rows}.h5"
    write_dxchange(path, d["projections"], d["flats"], d["darks"], d["angles_deg"])
    return path


def _fill(folder: Path) -> Path:
    """Write a file until the file system has no space left."""
    filler = folder / "filler.bin"
    block = b"\xff" * 65536
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_volume_larger_than_the_disk_is_refused_before_anything_is_written(small_disk,
                                                                           tmp_path):
    scan = _scan(tmp_path, 128, 48)  # about 3.5 MiB of float32 levels: more than 2 MiB
    out = small_disk / "v.zarr"
    proc = subprocess.run(TOMOPIPE + ["recon", str(scan), "--out", str(out), "--center", "64",
                                      "--workers", "0", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(out) in lines[0] and "needs about" in lines[0] and "free" in lines[0]
    assert "Traceback" not in proc.stderr
    free = space.free_bytes(small_disk)
    assert space.fmt_bytes(free) in lines[0]
    assert list(small_disk.iterdir()) == []  # nothing was created


def test_disk_that_fills_while_writing_is_one_line_and_nothing_looks_complete(small_disk,
                                                                              tmp_path):
    scan = _scan(tmp_path, 64, 96)  # about 1.6 MiB estimated: passes the pre-flight check
    out = small_disk / "v.zarr"
    args = TOMOPIPE + ["recon", str(scan), "--out", str(out), "--center", "32", "--workers", "0",
                       "--slab-rows", "2", "--levels", "2", "--no-progress"]
    markers = publish.partial_path(out) / publish.MARKER_DIR
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(markers.glob("*.done"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no slab finished in time"
        time.sleep(0.01)
    filler = _fill(small_disk)  # someone else takes the rest of the disk
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(out) in lines[0] and "disk filled" in lines[0]
    assert "needs about" in lines[0] and "free now" in lines[0]
    assert not out.exists() and not is_complete(publish.partial_path(out))

    # with the space back, the same command resumes and publishes a complete volume
    filler.unlink()
    again = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert is_complete(out) and not publish.partial_path(out).exists()
