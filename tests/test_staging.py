"""Staging: manifests from real documents and real HDF5 files (SWMR writers included)."""

import hashlib
import json
import os

import blake3
import h5py
import numpy as np
import pytest
from tomopipe.tasks.staging.checksum import file_checksum, file_sha256, verify_file
from tomopipe.tasks.staging.manifest import (
    Manifest,
    build_manifest,
    changed_entries,
    files_from_documents,
    manifest_from_documents,
)
from tomopipe.tasks.staging.swmr import hdf5_open_for_writing

from tomopipe.errors import InputError, PathEscapeError


def _write_h5(path, n=4, value=1):
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("entry/data", data=np.full((n, 8, 8), value, dtype=np.uint16))


def _docs(root, uid="run-1", stopped=True):
    docs = [("start", {"uid": uid, "plan_name": "tomo_scan"}),
            ("stream_resource", {"uid": "sr1", "run_start": uid, "data_key": "det",
                                 "mimetype": "application/x-hdf5",
                                 "uri": f"file://localhost{root}/run1/det.h5",
                                 "parameters": {"dataset": "/entry/data"}}),
            ("resource", {"uid": "r1", "run_start": uid, "spec": "AD_HDF5", "root": str(root),
                          "resource_path": "run1/flat.h5", "resource_kwargs": {}}),
            ("stream_resource", {"uid": "sr2", "run_start": uid, "data_key": "det2",
                                 "uri": f"file://localhost{root}/run1/det.h5",
                                 "parameters": {"dataset": "/entry/other"}})]
    if stopped:
        docs.append(("stop", {"run_start": uid, "exit_status": "success"}))
    return docs


@pytest.fixture
def run_root(tmp_path):
    root = tmp_path / "data"
    (root / "run1").mkdir(parents=True)
    _write_h5(root / "run1" / "det.h5", value=3)
    _write_h5(root / "run1" / "flat.h5", value=7)
    return root


def test_manifest_from_documents_exact_set_sizes_checksums(run_root):
    m = manifest_from_documents(_docs(run_root), [run_root])
    assert m.run_uid == "run-1" and m.complete
    assert [e.relpath for e in m.entries] == ["run1/det.h5", "run1/flat.h5"]  # deduplicated
    for e in m.entries:
        data = (run_root / e.relpath).read_bytes()
        assert e.size == len(data)
        assert e.checksum == "blake3:" + blake3.blake3(data).hexdigest()
    again = Manifest.from_dict(json.loads(m.to_json()))
    assert again.entries == m.entries and again.complete
    saved = m.save(run_root.parent / "prov" / "manifest.json")
    assert Manifest.load(saved).entries == m.entries


def test_streamed_checksum_matches_hashlib_across_blocks(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    checksum, n = file_sha256(p, block_size=1024 * 1024)
    assert n == p.stat().st_size
    assert checksum == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    fast, n = file_checksum(p, block_size=1024 * 1024)
    assert n == p.stat().st_size and fast == "blake3:" + blake3.blake3(p.read_bytes()).hexdigest()
    assert verify_file(p, fast)[0] and verify_file(p, checksum)[0]
    with open(p, "r+b") as fh:  # one flipped bit fails either algorithm
        fh.seek(2 * 1024 * 1024 + 5)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x80]))
    assert not verify_file(p, fast)[0] and not verify_file(p, checksum)[0]
    with pytest.raises(ValueError, match="not supported"):
        verify_file(p, "crc7:00")


def test_document_path_escape_refused_before_reading(run_root, tmp_path):
    docs = _docs(run_root)
    docs[2] = ("resource", {"uid": "r9", "root": str(run_root), "resource_path": "../../etc"})
    with pytest.raises(PathEscapeError, match="run-1"):
        manifest_from_documents(docs, [run_root])


def test_missing_file_and_no_resources_are_clear_errors(run_root):
    docs = _docs(run_root)
    (run_root / "run1" / "flat.h5").unlink()
    with pytest.raises(InputError, match="flat.h5"):
        manifest_from_documents(docs, [run_root])
    with pytest.raises(InputError, match="reference no files"):
        manifest_from_documents([("start", {"uid": "u"}), ("stop", {})], [run_root])


def test_run_not_stopped_is_not_complete(run_root):
    m = manifest_from_documents(_docs(run_root, stopped=False), [run_root])
    assert not m.run_stopped and not m.complete


def test_swmr_writer_detected_then_complete_after_close(run_root):
    path = run_root / "run1" / "det.h5"
    f = h5py.File(path, "w", libver="latest")
    try:
        ds = f.create_dataset("entry/data", shape=(0, 8, 8), maxshape=(None, 8, 8),
                              dtype=np.uint16, chunks=(1, 8, 8))
        f.swmr_mode = True
        ds.resize((2, 8, 8))
        ds[:] = 5
        ds.flush()
        assert hdf5_open_for_writing(path)
        m = manifest_from_documents(_docs(run_root), [run_root])
        assert not m.complete
        bad = m.unstable()
        assert [e.relpath for e in bad] == ["run1/det.h5"] and "SWMR" in bad[0].why_unstable
    finally:
        f.close()
    assert not hdf5_open_for_writing(path)
    m2 = manifest_from_documents(_docs(run_root), [run_root])
    assert m2.complete
    assert [e.relpath for e in changed_entries(m, m2)] == ["run1/det.h5"]
    assert changed_entries(m2, m2) == []


def test_file_changing_between_two_looks_is_unstable(run_root, monkeypatch):
    import tomopipe.tasks.staging.manifest as manifest_mod

    path = run_root / "run1" / "flat.h5"
    real_hash = manifest_mod.file_checksum

    def hash_then_append(p, **kw):  # a writer appends while the file is read
        out = real_hash(p, **kw)
        if os.fspath(p) == str(path):
            with open(path, "ab") as fh:
                fh.write(b"more frames")
        return out

    monkeypatch.setattr(manifest_mod, "file_checksum", hash_then_append)
    m = build_manifest([path], run_uid="u", roots=[run_root])
    assert not m.complete and "changed while it was read" in m.entries[0].why_unstable


def test_directory_resource_expands_to_files_each_checked(run_root, tmp_path):
    tiffs = run_root / "run2"
    tiffs.mkdir()
    for i in range(3):
        (tiffs / f"img_{i:03d}.tif").write_bytes(bytes([i]) * 10)
    os.symlink(tmp_path, tiffs / "escape")
    docs = [("start", {"uid": "u2"}),
            ("resource", {"root": str(run_root), "resource_path": "run2", "uid": "r"})]
    with pytest.raises(PathEscapeError):  # the symlinked directory inside leaves the root
        files_from_documents(docs, [run_root])
    (tiffs / "escape").unlink()
    uid, files, stopped = files_from_documents(docs, [run_root])
    assert uid == "u2" and not stopped and [f.name for f in files] == [
        "img_000.tif", "img_001.tif", "img_002.tif"]


def test_scan_spec_manifest_and_relocation(run_root, tmp_path):
    from tomopipe.tasks.sources.spec import FrameSet, ScanSpec
    from tomopipe.tasks.staging.scan import manifest_for_spec, relocate_spec, spec_files
    from tomopipe.tasks.transfer.local import LocalMover

    det, flat = str(run_root / "run1" / "det.h5"), str(run_root / "run1" / "flat.h5")
    spec = ScanSpec(label="run-1", projections=(FrameSet(det, "/entry/data", (0, 1)),),
                    flats=(FrameSet(flat, "/entry/data"),), darks=(FrameSet(det, "/entry/data",
                                                                            (2, 3)),),
                    angles_deg=(0.0, 90.0), n_rows=8, n_cols=8, dtype="uint16",
                    identity="run-1")
    assert spec_files(spec) == [det, flat]
    m = manifest_for_spec(spec, [run_root])
    assert m.run_uid == "run-1" and [e.relpath for e in m.entries] == ["run1/det.h5",
                                                                       "run1/flat.h5"]
    dest = tmp_path / "moved"
    assert LocalMover().transfer(m, dest).complete
    moved = relocate_spec(spec, m, dest, transfer={"mover": "local"})
    assert moved.projections[0].path == str(dest / "run1" / "det.h5")
    assert moved.projections[0].indices == (0, 1) and moved.darks[0].indices == (2, 3)
    assert moved.flats[0].path == str(dest / "run1" / "flat.h5")
    assert moved.extra["transfer"] == {"mover": "local"}
    with h5py.File(moved.flats[0].path) as f:
        assert int(f["entry/data"][0, 0, 0]) == 7
    escaped = ScanSpec(**{**spec.__dict__, "flats": (FrameSet("/etc/passwd", "/x"),)})
    with pytest.raises(PathEscapeError, match="run-1"):
        manifest_for_spec(escaped, [run_root])
