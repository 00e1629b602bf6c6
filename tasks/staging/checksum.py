"""Streaming SHA-256 of files, in large blocks (the GIL is released while hashing)."""

from __future__ import annotations

import hashlib
import os

BLOCK_SIZE = 8 * 1024 * 1024  # large reads keep the disk streaming and the hash loop cheap
ALGORITHM = "sha256"


def format_checksum(hex_digest: str) -> str:
    return f"{ALGORITHM}:{hex_digest}"


def split_checksum(checksum: str) -> tuple[str, str]:
    """("sha256", hex) from "sha256:<hex>"."""
    algo, _, digest = checksum.partition(":")
    if not digest:
        raise ValueError(f"checksum {checksum!r} is not of the form 'algorithm:hex'")
    return algo, digest


def file_sha256(path: str | os.PathLike, *, block_size: int = BLOCK_SIZE) -> tuple[str, int]:
    """("sha256:<hex>", bytes read) of a file, streamed in ``block_size`` blocks."""
    digest = hashlib.sha256()
    buf = bytearray(block_size)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            total += n
    return format_checksum(digest.hexdigest()), total
