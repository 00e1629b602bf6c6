"""Bad scan files through the real ``tomopipe recon`` command, as a separate process.

For every case: exit status 1, exactly one line on stderr that names the input and the fault
(no traceback), no output that looks complete, and nothing stored lost (the input file is
byte-for-byte unchanged and a volume published earlier in the same folder is still complete,
with its key). Paths with spaces and non-ASCII characters, and a scan of one row, must work.

The files are real HDF5 files written by h5py (tests/faults/bad_inputs.py); the one that
declares more data than any memory holds is a few MB on disk (HDF5 allocates chunks lazily).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tomopipe.tasks.sources.identity import file_checksum
from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

from faults.bad_inputs import BAD_FILES, BAD_OUTPUTS, GOOD_FILES, good

REPO = Path(__file__).resolve().parents[2]


def recon(source: Path, out: Path, *extra: str, home: Path, timeout: float = 240,
          preexec=None) -> subprocess.CompletedProcess:
    """The real CLI in its own process, on a home of its own (no standing cluster), in
    this process's slab threads (``--workers 0``): a Dask cluster per tiny case would only add
    start-up time."""
    env = {**os.environ, "TOMOPIPE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "tomopipe.cli", "recon", str(source), "--out", str(out),
         "--workers", "0", "--no-progress", *extra],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, preexec_fn=preexec)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def nothing_complete(out: Path) -> None:
    """No volume at ``out``; at most an unfinished ``.partial`` that never counts as one."""
    assert not out.exists() or not is_complete(out), f"{out} looks complete"
    partial = out.with_name(out.name + ".partial")
    assert not is_complete(partial)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A good scan reconstructed once into the folder every case writes beside."""
    folder = tmp_path_factory.mktemp("bad_files")
    home = folder / "home"
    source, _ = good(folder / "in")
    out_dir = folder / "volumes"
    out_dir.mkdir()
    proc = recon(source, out_dir / "good.zarr", home=home)
    assert proc.returncode == 0, proc.stderr
    assert is_complete(out_dir / "good.zarr")
    return folder, home, out_dir / "good.zarr", read_provenance(out_dir / "good.zarr")["key"]


def still_there(volume: Path, key: str) -> None:
    assert is_complete(volume) and read_provenance(volume)["key"] == key


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gives_one_line_and_loses_nothing(published, case):
    folder, home, volume, key = published
    build, fault = BAD_FILES[case]
    source, extra = build(folder / "in" / re.sub(r"\W+", "_", case))
    before = file_checksum(source)
    out = volume.parent / f"{source.stem}.zarr"

    line = one_line(recon(source, out, *extra, home=home))

    assert line.startswith("tomopipe recon: error: ")
    assert source.name in line, f"the input is not named: {line}"
    assert re.search(fault, line), f"{case}: {line!r} does not say {fault!r}"
    nothing_complete(out)
    assert file_checksum(source) == before  # the input is untouched
    still_there(volume, key)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody may write to: chmod for an ordinary user; root ignores modes, so as
    root a read-only bind mount (a real EROFS); skipped when neither is possible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount read-only: {mounted.stderr!r}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr!r}")
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_output_that_cannot_be_written_is_named(published, case):
    folder, home, volume, key = published
    target, fault = BAD_OUTPUTS[case]
    work = folder / "out_cases" / re.sub(r"\W+", "_", case)
    work.mkdir(parents=True)
    source, _ = good(work)
    (work / "a_file").write_text("a file a user keeps here\n")
    before = {p.name: file_checksum(p) for p in work.iterdir() if p.is_file()}
    out = work / target

    with read_only_folder(work / "read_only") if "read-only" in case else contextlib.nullcontext():
        # --overwrite too: it must not make a file (or the scan itself) replaceable
        line = one_line(recon(source, out, "--overwrite", home=home))

    assert line.startswith(f"tomopipe recon: error: {out}: ")
    assert re.search(fault, line), f"{case}: {line!r} does not say {fault!r}"
    assert {p.name: file_checksum(p) for p in work.iterdir() if p.is_file()} == before
    assert not out.with_name(out.name + ".partial").exists()
    still_there(volume, key)


@pytest.mark.parametrize("case", list(GOOD_FILES))
def test_awkward_but_valid_inputs_work(published, case):
    folder, home, volume, key = published
    source, extra = GOOD_FILES[case](folder / "in" / re.sub(r"\W+", "_", case))
    out = source.parent / "vol ümlaut.zarr"
    proc = recon(source, out, *extra, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)
    assert Path(result["output"]) == out and is_complete(out)
    assert result["shape"][1:] == [48, 48]
    assert result["shape"][0] == (1 if case == "one row" else 4)
    assert read_provenance(out)["source"]["label"] == str(source) or str(source) in str(
        read_provenance(out))
    still_there(volume, key)


def test_a_slab_failing_on_a_dask_worker_is_still_one_line(published):
    """The NaN found by a slab on a real local Dask cluster (a worker process): the worker's
    own error log must not reach the user's stderr, only the one line."""
    from faults.bad_inputs import nan_frames_in_a_slab

    folder, home, volume, key = published
    source, extra = nan_frames_in_a_slab(folder / "in" / "dask_worker")
    out = volume.parent / "nan_on_a_worker.zarr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tomopipe.cli", "recon", str(source), "--out", str(out),
         "--workers", "1", "--no-progress", *extra],
        env={**env, "TOMOPIPE_HOME": str(home)}, capture_output=True, text=True, timeout=240,
        cwd=REPO)
    line = one_line(proc)
    assert source.name in line and "non-finite value (nan) in frame 7" in line
    nothing_complete(out)
    still_there(volume, key)
