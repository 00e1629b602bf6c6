"""A file's identity: its content checksum, used to key outputs made from it."""

from __future__ import annotations

import hashlib
import os

from tomopipe.errors import InputError

BLOCK_BYTES = 8 * 1024 * 1024  # large blocks: scan files are gigabytes


def file_checksum(path: str | os.PathLike, *, block_bytes: int = BLOCK_BYTES) -> str:
    """SHA-256 of the file's bytes, streamed in large blocks, as ``"sha256:<hex>"``."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as fh:
            buffer = bytearray(block_bytes)
            view = memoryview(buffer)
            while n := fh.readinto(buffer):
                digest.update(view[:n])
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    return "sha256:" + digest.hexdigest()


def combined_checksum(checksums: list[str]) -> str:
    """One identity for a scan spread over several files (e.g. frames behind external links)."""
    digest = hashlib.sha256("\n".join(checksums).encode())
    return "sha256:" + digest.hexdigest()
