"""The local mover: copy (or hard link) every file of a manifest, verified, atomically.

Each file is copied inside the kernel (``copy_file_range``) under a temporary name in its
destination directory, read back and hashed, fsynced, and only then renamed into place. The
copy's checksum (BLAKE3 by default; the manifest entry's prefix says which algorithm) must equal
the manifest's, taken of the source at staging: one hash pass per file checks the whole path end
to end, and the source's size and mtime must not have moved while it was copied.

The work overlaps: while the kernel copies block k+1 of a file, another thread reads block k of
the copy back and hashes it (hashing releases the GIL), so a 1 GB file costs about one copy's
time on two cores instead of a copy plus a hash. The read-back goes through the page cache
(what the file system holds) unless ``verify_from_device``. Several files move at once.
A transfer is recorded complete (a verified manifest under ``dest/.tomopipe/``) only when every
file passed.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tomopipe.tasks.staging.checksum import (
    BLOCK_SIZE,
    DEFAULT_ALGORITHM,
    checksum_algorithm,
    file_checksum,
    format_checksum,
    hash_fd_range,
    new_hasher,
)
from tomopipe.tasks.staging.manifest import Manifest, ManifestEntry
from tomopipe.tasks.transfer.base import (
    FileResult,
    Mover,
    TransferReport,
    destination_record_path,
    safe_relpath,
)

from tomopipe.errors import InputError

_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class CopyFault(Exception):
    """One file's copy failed verification (the message says how)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_cache(fd: int) -> None:
    # After fsync the pages are clean: dropping them makes the read-back come from the device.
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def hash_fd(fd: int, block_size: int = BLOCK_SIZE, *,
            algorithm: str = DEFAULT_ALGORITHM) -> tuple[str, int]:
    """("<algorithm>:<hex>", bytes) of a whole open file, read from its start."""
    digest = new_hasher(algorithm)
    n = hash_fd_range(fd, digest, 0, os.fstat(fd).st_size, bytearray(block_size))
    return format_checksum(digest.hexdigest(), algorithm), n


def copy_blocks(src_fd: int, dst_fd: int, block_size: int = BLOCK_SIZE) -> Iterator[int]:
    """Copy src to dst (from their current offsets to EOF), yielding each block's byte count.

    ``copy_file_range`` moves pages without a trip through Python (and may share extents on
    file systems that can); where it is not supported, a plain read/write loop does the job.
    """
    use_kernel = hasattr(os, "copy_file_range")
    total = 0
    buf = None
    while True:
        if use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, block_size)
            except OSError as exc:
                if total or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                              errno.EOPNOTSUPP):
                    raise
                use_kernel = False
                continue
        else:
            if buf is None:
                buf = bytearray(block_size)
            n = os.readv(src_fd, [buf])
            view = memoryview(buf)[:n]
            written = 0
            while written < n:
                written += os.write(dst_fd, view[written:])
        if not n:
            return
        total += n
        yield n


READBACKS = ("read", "mmap")
HASH_BUFFER = 1024 * 1024  # stays in the L2 cache between the read and the hash


def _hash_mapped(fd: int, hasher, offset: int, length: int) -> int:
    """Hash ``length`` bytes of ``fd`` at ``offset`` through a read-only mapping (no copy into
    Python); the bytes hashed, fewer when the file is shorter. The length is clamped to the
    file's size first: touching a mapped page past EOF would be SIGBUS."""
    length = max(0, min(length, os.fstat(fd).st_size - offset))
    if not length:
        return 0
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(fd, offset - start + length, flags=flags, prot=mmap.PROT_READ,
                   offset=start) as mapped, memoryview(mapped) as view:
        hasher.update(view[offset - start:])
    return length


class ChunkVerifier:
    """Hashes the copy's blocks, in order, on its own thread while the next blocks are copied.

    Each block is read back (through the page cache) after the copy wrote it, so the digest is
    of what the destination file holds, not of what was sent to it. Hashing releases the GIL:
    the copy (in the kernel) and the hash use both cores. At most ``max_pending`` blocks wait,
    so the copy never runs far enough ahead for their pages to leave the cache.

    ``readback``: "read" (pread into a 1 MiB buffer; an I/O error is an error) or "mmap" (hash
    the mapped pages: no copy, about 0.05 CPU-s/GB less here, but a page the file loses while
    it is hashed, or an I/O error on a network file system, is SIGBUS, not an exception).
    """

    def __init__(self, fd: int, algorithm: str, block_size: int = BLOCK_SIZE,
                 max_pending: int = 8, readback: str = "read"):
        if readback not in READBACKS:
            raise ValueError(f"readback {readback!r}: one of {READBACKS}")
        self.fd, self.algorithm, self.readback = fd, algorithm, readback
        self.hasher = new_hasher(algorithm)
        self.hashed = 0  # bytes read back and hashed
        self.short = False  # a block read back shorter than written: the file lost bytes
        self._buf_size = min(block_size, HASH_BUFFER)
        self._error: OSError | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="tomopipe-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(self._buf_size) if self.readback == "read" else None
        while (item := self._queue.get()) is not None:
            try:
                if self._error is not None or self.short:
                    continue  # keep draining so that submit never blocks
                offset, length = item
                try:
                    if buf is None:
                        got = _hash_mapped(self.fd, self.hasher, offset, length)
                    else:
                        got = hash_fd_range(self.fd, self.hasher, offset, length, buf)
                except OSError as exc:
                    self._error = exc
                    continue
                self.hashed += got
                self.short = got < length
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def submit(self, offset: int, length: int) -> None:
        self._queue.put((offset, length))

    def wait(self) -> None:
        """Until every block submitted so far is hashed."""
        self._queue.join()

    def finish(self) -> tuple[str, int]:
        """("<algorithm>:<hex>", bytes hashed) once every submitted block is hashed."""
        self.close()
        if self._error is not None:
            raise self._error
        return format_checksum(self.hasher.hexdigest(), self.algorithm), self.hashed

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class LocalMover(Mover):
    """Copy, or hard link when on one file system and ``allow_hardlink``; verify; rename.

    ``workers`` files are copied at once, each with its own hashing thread (see
    ``ChunkVerifier``). The read-back check reads the copy through the page cache (what the file
    system holds, as Globus's verify_checksum does), block by block just after each is written;
    ``verify_from_device`` instead fsyncs the whole copy and drops its pages first so that it
    reads what the device holds (stronger, and a second full read from the disk: slower, see
    benchmarks/bench_mover.py). ``readback``: "read" (default; I/O errors are reported) or
    "mmap" (see ``ChunkVerifier``). ``fsync=False`` leaves durability to the kernel, as plain
    ``cp`` does. ``fault_hook(stage, path)`` is called at "copied" (whole temp file written,
    every block but the last read back; the last block and the size not yet checked);
    ``on_block(relpath, bytes)`` after each block is written and before it is read back: tests
    inject real faults there.
    """

    name = "local"

    def __init__(self, *, allow_hardlink: bool = False, workers: int = 4,
                 block_size: int = BLOCK_SIZE, verify_from_device: bool = False,
                 fsync: bool = True, on_block: Callable[[str, int], None] | None = None,
                 fault_hook: Callable[[str, Path], None] | None = None,
                 readback: str = "read"):
        if readback not in READBACKS:
            raise ValueError(f"readback {readback!r}: one of {READBACKS}")
        self.readback = readback
        self.allow_hardlink = allow_hardlink
        self.workers = max(1, workers)
        self.block_size = block_size
        self.verify_from_device = verify_from_device
        self.fsync = fsync
        self.on_block = on_block
        self.fault_hook = fault_hook

    # -- one file -----------------------------------------------------------------------------
    def _check_source_unchanged(self, entry: ManifestEntry, st: os.stat_result) -> None:
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            raise CopyFault(f"source changed since it was staged (size {entry.size} -> "
                            f"{st.st_size}, mtime changed: {st.st_mtime_ns != entry.mtime_ns}); "
                            "restage and move again")

    def _link(self, entry: ManifestEntry, tmp: Path, final: Path) -> str:
        os.link(entry.path, tmp)
        st_src, st_tmp = os.stat(entry.path), os.stat(tmp)
        self._check_source_unchanged(entry, st_src)
        if st_src.st_ino != st_tmp.st_ino:
            raise CopyFault("hard link does not share the source's inode")
        os.replace(tmp, final)
        return "linked"

    def _copy(self, entry: ManifestEntry, tmp: Path, final: Path) -> str:
        algorithm = checksum_algorithm(entry.checksum)
        src_fd = os.open(entry.path, os.O_RDONLY)
        try:
            st_before = os.fstat(src_fd)
            self._check_source_unchanged(entry, st_before)
            dst_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            verifier = None if self.verify_from_device else ChunkVerifier(
                dst_fd, algorithm, self.block_size, readback=self.readback)
            try:
                written_sum, written = self._copy_and_hash(entry, src_fd, dst_fd, tmp,
                                                           st_before, verifier)
                size_now = os.fstat(dst_fd).st_size
                if written != entry.size or size_now != entry.size:
                    raise CopyFault(f"copy is truncated: {min(written, size_now)} of "
                                    f"{entry.size} bytes")
                if written_sum != entry.checksum:
                    # only on failure: say which side
                    source_sum, _ = file_checksum(entry.path, algorithm=algorithm)
                    if source_sum != entry.checksum:
                        raise CopyFault("source content differs from the manifest's checksum "
                                        "(changed since staging); restage and move again")
                    raise CopyFault("checksum of the written copy differs from the source's")
                os.utime(dst_fd, ns=(st_before.st_atime_ns, entry.mtime_ns))
                if self.fsync and not self.verify_from_device:
                    # after the check: the kernel writes back while we hash, so this waits less
                    os.fsync(dst_fd)
            finally:
                if verifier is not None:
                    verifier.close()
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        os.replace(tmp, final)
        return "verified"

    def _copy_and_hash(self, entry: ManifestEntry, src_fd: int, dst_fd: int, tmp: Path,
                       st_before: os.stat_result, verifier: ChunkVerifier | None
                       ) -> tuple[str, int]:
        """Copy block by block; the checksum and byte count of the copy as read back.

        From the page cache, each block is read back and hashed (by ``verifier``, on another
        thread) once the copy has written it and the next block is on its way; the last block
        waits until the whole file is copied and checked (``fault_hook`` "copied" runs first).
        From the device, the whole copy is fsynced, its pages dropped, then read back.
        """
        copied, pending = 0, None
        for n in copy_blocks(src_fd, dst_fd, self.block_size):
            if self.on_block is not None:
                self.on_block(entry.relpath, copied + n)
            if verifier is not None and pending is not None:
                verifier.submit(*pending)
            pending = (copied, n)
            copied += n
        st_after = os.stat(entry.path)
        if (st_after.st_size, st_after.st_mtime_ns) != \
                (st_before.st_size, st_before.st_mtime_ns) or copied != entry.size:
            raise CopyFault(f"source changed during the copy (copied {copied} bytes, "
                            f"manifest says {entry.size}, now {st_after.st_size})")
        if self.fsync and self.verify_from_device:
            os.fsync(dst_fd)
        if self.fault_hook is not None:
            if verifier is not None:
                verifier.wait()  # the hook's fault must not race a block being read back
            self.fault_hook("copied", tmp)
        if verifier is None:
            _drop_cache(dst_fd)
            return hash_fd(dst_fd, self.block_size, algorithm=checksum_algorithm(entry.checksum))
        if pending is not None:
            verifier.submit(*pending)
        return verifier.finish()

    def _move_one(self, entry: ManifestEntry, dest: Path, run_uid: str, link_ok: bool,
                  previous: dict[str, dict]) -> FileResult:
        rel = safe_relpath(entry.relpath, source=run_uid)
        final = dest.joinpath(*rel.parts)
        result = FileResult(relpath=entry.relpath, source=entry.path, destination=str(final),
                            size=entry.size, checksum=entry.checksum)
        prev = previous.get(entry.relpath)
        if prev and prev.get("checksum") == entry.checksum and final.exists():
            st = final.stat()
            if st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns:
                result.status = "unchanged"
                return result
        tmp = final.with_name(f".{final.name}.tomopipe-{secrets.token_hex(4)}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            linked = False
            if link_ok and os.stat(entry.path).st_dev == os.stat(final.parent).st_dev:
                try:
                    result.status, linked = self._link(entry, tmp, final), True
                except PermissionError:  # e.g. fs.protected_hardlinks: copy instead
                    tmp.unlink(missing_ok=True)
            if not linked:
                result.status = self._copy(entry, tmp, final)
        except CopyFault as exc:
            result.error = str(exc)
        except FileNotFoundError as exc:
            result.error = f"source file is gone: {exc.filename}"
        except OSError as exc:
            if exc.errno in _FULL:
                result.error = f"destination full: {os.strerror(exc.errno)} writing {final}"
            else:
                result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if result.status == "failed":
                tmp.unlink(missing_ok=True)
        return result

    # -- a whole manifest ---------------------------------------------------------------------
    def transfer(self, manifest: Manifest, dest: str | os.PathLike) -> TransferReport:
        self.check_manifest(manifest)
        for entry in manifest.entries:
            try:
                checksum_algorithm(entry.checksum)
            except ValueError as exc:
                raise InputError(manifest.run_uid, str(exc), where=entry.relpath) from None
        dest = Path(dest).expanduser().resolve()
        report = TransferReport(run_uid=manifest.run_uid, mover=self.name,
                                destination=str(dest))
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            report.error = f"cannot create the destination {dest}: {exc}"
            report.finished = time.time()
            return report
        previous = read_destination_record(dest, manifest.run_uid)
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self._move_one, e, dest, manifest.run_uid,
                                   self.allow_hardlink, previous) for e in manifest.entries]
            report.files = [f.result() for f in futures]
        if self.fsync:  # make the renames durable, once per directory
            for parent in {Path(f.destination).parent for f in report.files if f.ok}:
                _fsync_dir(parent)
        report.finished = time.time()
        if report.complete:
            write_destination_record(dest, manifest, report)
        return report


def read_destination_record(dest: Path, run_uid: str) -> dict[str, dict]:
    """relpath -> file result of an earlier complete transfer of this run to ``dest``."""
    path = destination_record_path(dest, run_uid)
    try:
        data = json.loads(path.read_text())
        return {f["relpath"]: f for f in data["report"]["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_destination_record(dest: Path, manifest: Manifest, report: TransferReport) -> Path:
    """Written last, atomically: its presence means every file at ``dest`` was verified."""
    path = destination_record_path(dest, manifest.run_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps({"manifest": manifest.to_dict(), "report": report.to_dict()},
                              indent=1))
    os.replace(tmp, path)
    return path
