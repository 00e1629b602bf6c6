"""Local mover: real copies on disk, real faults (truncation, corruption, source changed during the
copy, a full destination through a tiny tmpfs and through RLIMIT_FSIZE in a subprocess)."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid

import blake3
import pytest
from tomopipe.tasks.staging.manifest import Manifest, build_manifest, changed_entries
from tomopipe.tasks.transfer.base import TransferError, destination_record_path
from tomopipe.tasks.transfer.ledger import copies_by_source
from tomopipe.tasks.transfer.local import LocalMover
from tomopipe.tasks.transfer.movers import move_results, move_run
from tomopipe.tasks.transfer.sites import parse_transfer_config

from tomopipe.errors import InputError

SIZES = (300_000, 1_100_000, 17)


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "raw"
    (root / "run1" / "sub").mkdir(parents=True)
    for i, n in enumerate(SIZES):
        (root / "run1" / ("sub" if i else "") / f"f{i}.bin").write_bytes(os.urandom(n))
    files = sorted(p for p in (root / "run1").rglob("*.bin"))
    return root, build_manifest(files, run_uid="uid-1", roots=[root])


def _sha(path, algorithm="blake3"):
    """The reference checksum, one shot over the whole file (not the mover's streaming code)."""
    data = path.read_bytes()
    if algorithm == "sha256":
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return "blake3:" + blake3.blake3(data).hexdigest()


def _no_temp_files(dest):
    return not [p for p in dest.rglob("*") if ".tomopipe-" in p.name]


def test_copy_verified_atomic_and_recorded(run, tmp_path):
    root, manifest = run
    dest = tmp_path / "dest"
    report = LocalMover().transfer(manifest, dest)
    assert report.complete, report.summary()
    assert [f.status for f in report.files] == ["verified"] * 3
    for e in manifest.entries:
        copy = dest / e.relpath
        assert _sha(copy) == e.checksum and copy.stat().st_mtime_ns == e.mtime_ns
        assert copy.stat().st_ino != os.stat(e.path).st_ino
    assert report.bytes_moved == sum(SIZES) and _no_temp_files(dest)
    record = json.loads(destination_record_path(dest, "uid-1").read_text())
    assert record["report"]["complete"] and record["manifest"]["run_uid"] == "uid-1"
    # the same run again: nothing copied; a changed file is moved again
    again = LocalMover().transfer(manifest, dest)
    assert [f.status for f in again.files] == ["unchanged"] * 3 and again.bytes_moved == 0
    changed = root / manifest.entries[0].relpath
    changed.write_bytes(os.urandom(1000))
    restaged = build_manifest([e.path for e in manifest.entries], run_uid="uid-1", roots=[root])
    assert [e.relpath for e in changed_entries(manifest, restaged)] == [
        manifest.entries[0].relpath]
    third = LocalMover().transfer(restaged, dest)
    assert [f.status for f in third.files] == ["verified", "unchanged", "unchanged"]
    assert _sha(dest / manifest.entries[0].relpath) == _sha(changed)


def test_hard_link_when_allowed_on_one_file_system(run, tmp_path):
    _, manifest = run
    report = LocalMover(allow_hardlink=True).transfer(manifest, tmp_path / "linked")
    assert report.complete and {f.status for f in report.files} == {"linked"}
    for e in manifest.entries:
        assert os.stat(tmp_path / "linked" / e.relpath).st_ino == os.stat(e.path).st_ino


def _assert_failed_nothing_complete(report, dest, relpath, words):
    assert not report.complete
    bad = report.failed()
    assert [f.relpath for f in bad] == [relpath]
    assert words in bad[0].error, bad[0].error
    assert not (dest / relpath).exists()  # never renamed into place
    assert not destination_record_path(dest, report.run_uid).exists()
    assert _no_temp_files(dest)
    with pytest.raises(TransferError, match="NOT complete"):
        report.raise_if_incomplete()


def test_sha256_manifest_still_verified(run, tmp_path):
    root, _ = run
    files = sorted((root / "run1").rglob("*.bin"))
    manifest = build_manifest(files, run_uid="uid-1", roots=[root], algorithm="sha256")
    for e in manifest.entries:
        assert e.checksum == _sha(root / e.relpath, "sha256")
    dest = tmp_path / "dest"
    report = LocalMover(block_size=256 * 1024, readback="mmap").transfer(manifest, dest)
    assert report.complete and [f.status for f in report.files] == ["verified"] * 3
    assert all(_sha(dest / e.relpath, "sha256") == e.checksum for e in manifest.entries)
    odd = Manifest.from_dict({**manifest.to_dict(), "entries": [
        {**manifest.to_dict()["entries"][0], "checksum": "md4:00ff"}]})
    with pytest.raises(InputError, match="md4"):
        LocalMover().transfer(odd, tmp_path / "d2")


@pytest.mark.parametrize("readback", ["read", "mmap"])
@pytest.mark.parametrize("from_device", [False, True])
@pytest.mark.parametrize("block_size", [8 * 1024 * 1024, 64 * 1024])  # one block; many blocks
def test_truncated_copy_detected(run, tmp_path, from_device, block_size, readback):
    _, manifest = run
    target = manifest.entries[1].relpath

    def truncate(stage, tmp):
        if tmp.name.startswith(".f1.bin"):
            os.truncate(tmp, 1000)

    dest = tmp_path / "dest"
    report = LocalMover(fault_hook=truncate, verify_from_device=from_device,
                        block_size=block_size, readback=readback).transfer(manifest, dest)
    _assert_failed_nothing_complete(report, dest, target, "truncated")


@pytest.mark.parametrize("readback", ["read", "mmap"])
def test_block_corrupted_before_its_read_back_detected(run, tmp_path, readback):
    # Many blocks, each read back while the next is copied: a byte flipped in block 2 after
    # the copy wrote it (and before it is read back) must fail the file.
    _, manifest = run
    target = manifest.entries[1].relpath
    dest = tmp_path / "dest"
    block = 64 * 1024

    def flip_in_second_block(relpath, copied):
        if relpath == target and copied == 3 * block:
            (tmp,) = (dest / target).parent.glob(".f1.bin.tomopipe-*")
            with open(tmp, "r+b") as fh:
                fh.seek(block + 100)
                b = fh.read(1)
                fh.seek(block + 100)
                fh.write(bytes([b[0] ^ 0x01]))

    report = LocalMover(block_size=block, on_block=flip_in_second_block,
                        readback=readback).transfer(manifest, dest)
    _assert_failed_nothing_complete(report, dest, target, "checksum of the written copy")


@pytest.mark.parametrize("readback", ["read", "mmap"])
def test_corrupted_copy_detected(run, tmp_path, readback):
    _, manifest = run
    target = manifest.entries[1].relpath

    def flip_a_byte(stage, tmp):
        if tmp.name.startswith(".f1.bin"):
            with open(tmp, "r+b") as fh:
                fh.seek(12345)
                b = fh.read(1)
                fh.seek(12345)
                fh.write(bytes([b[0] ^ 0xFF]))

    dest = tmp_path / "dest"
    report = LocalMover(fault_hook=flip_a_byte, readback=readback).transfer(manifest, dest)
    _assert_failed_nothing_complete(report, dest, target, "checksum of the written copy")


def test_source_changed_during_copy_detected(run, tmp_path):
    root, manifest = run
    target = manifest.entries[1].relpath
    source = root / target

    def writer_appends(relpath, copied):  # a detector still writing while we copy
        if relpath == target and copied == 64 * 1024:
            with open(source, "ab") as fh:
                fh.write(b"late frame")

    dest = tmp_path / "dest"
    report = LocalMover(block_size=64 * 1024, on_block=writer_appends).transfer(manifest, dest)
    _assert_failed_nothing_complete(report, dest, target, "source changed during the copy")


def test_source_rewritten_since_staging_detected(run, tmp_path):
    root, manifest = run
    target = manifest.entries[0].relpath
    st = os.stat(root / target)
    (root / target).write_bytes(os.urandom(st.st_size))  # same size, same mtime: only content
    os.utime(root / target, ns=(st.st_atime_ns, st.st_mtime_ns))
    dest = tmp_path / "dest"
    report = LocalMover().transfer(manifest, dest)
    _assert_failed_nothing_complete(report, dest, target, "differs from the manifest's checksum")


def test_full_destination_tmpfs(run, tmp_path):
    _, manifest = run
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); see the RLIMIT_FSIZE test")
    try:
        report = LocalMover(workers=1).transfer(manifest, mnt / "dest")
        assert not report.complete
        bad = {f.relpath: f.error for f in report.failed()}
        assert "destination full" in bad[manifest.entries[1].relpath]  # 1.1 MB > 512 kB
        assert not (mnt / "dest" / manifest.entries[1].relpath).exists()
        assert not destination_record_path(mnt / "dest", "uid-1").exists()
        assert _no_temp_files(mnt / "dest")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_destination_rlimit_fsize_in_subprocess(run, tmp_path):
    _, manifest = run
    mpath = manifest.save(tmp_path / "manifest.json")
    dest = tmp_path / "dest"
    script = textwrap.dedent(f"""
        import json, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))
        from tomopipe.tasks.staging.manifest import Manifest
        from tomopipe.tasks.transfer.local import LocalMover
        report = LocalMover().transfer(Manifest.load({str(mpath)!r}), {str(dest)!r})
        print(json.dumps(report.to_dict()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["complete"] is False
    by_path = {f["relpath"]: f for f in report["files"]}
    big = by_path[manifest.entries[1].relpath]
    assert big["status"] == "failed" and "destination full" in big["error"]
    assert by_path[manifest.entries[0].relpath]["status"] == "verified"  # 300 kB fits
    assert not (dest / manifest.entries[1].relpath).exists()
    assert not destination_record_path(dest, "uid-1").exists() and _no_temp_files(dest)


def test_unstable_manifest_and_escaping_relpath_refused(run, tmp_path):
    _, manifest = run
    not_stopped = Manifest(run_uid="u", entries=manifest.entries, run_stopped=False)
    with pytest.raises(InputError, match="still being written"):
        LocalMover().transfer(not_stopped, tmp_path / "d")
    evil = Manifest.from_dict({**manifest.to_dict(), "entries": [
        {**manifest.to_dict()["entries"][0], "relpath": "../../escaped.bin"}]})
    with pytest.raises(InputError, match="leave the destination"):
        LocalMover().transfer(evil, tmp_path / "d")
    assert not (tmp_path.parent / "escaped.bin").exists()


def test_move_run_and_results_back_through_config(run, tmp_path):
    root, manifest = run
    cfg = parse_transfer_config(
        {"beamline": {"mover": "local", "root": str(root)},
         "compute": {"mover": "local", "root": str(tmp_path / "scratch")}},
        {"source": "beamline", "destination": "compute",
         "destination_path": str(tmp_path / "scratch" / "staging"), "results_to": "beamline",
         "results_path": str(tmp_path / "results")}, {})
    ledger = tmp_path / "home" / "transfers"
    report = move_run(manifest, cfg, ledger=ledger)
    assert report.complete and report.destination == str(
        (tmp_path / "scratch" / "staging" / "uid-1").resolve())
    copies = copies_by_source(ledger)
    assert set(copies) == {e.path for e in manifest.entries}
    volume = tmp_path / "volumes" / f"vol-{uuid.uuid4().hex[:6]}.ome.zarr"
    (volume / "0").mkdir(parents=True)
    (volume / "zarr.json").write_text("{}")
    (volume / "0" / "c").write_bytes(os.urandom(5000))
    back = move_results(volume, cfg, run_uid="uid-1")
    assert back.complete
    assert _sha(tmp_path / "results" / volume.name / "0" / "c") == _sha(volume / "0" / "c")


@pytest.mark.parametrize("readback", ["read", "mmap"])  # blocks not page-aligned: 100 kB
def test_read_write_fallback_where_copy_file_range_is_missing(run, tmp_path, monkeypatch,
                                                              readback):
    # Simulates a kernel / file system without copy_file_range (ENOSYS): the plain loop copies.
    import errno

    calls = []

    def no_kernel_copy(*args):
        calls.append(args)
        raise OSError(errno.ENOSYS, "not implemented")

    monkeypatch.setattr(os, "copy_file_range", no_kernel_copy)
    _, manifest = run
    report = LocalMover(block_size=100_000, readback=readback).transfer(manifest,
                                                                        tmp_path / "dest")
    assert report.complete and len(calls) == 3
    for e in manifest.entries:
        assert _sha(tmp_path / "dest" / e.relpath) == e.checksum
