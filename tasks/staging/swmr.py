"""Is an HDF5 file still open for writing? Read the superblock's file-consistency flags.

HDF5 (1.10+) sets bit 0 (write access) and bit 2 (SWMR write access) of the superblock's
file-consistency flags while a writer holds the file and clears them on close. The superblock
lies at byte 0, 512, 1024, 2048, ... (a user block may precede it).
"""

from __future__ import annotations

import os

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
WRITE_ACCESS = 0x01
SWMR_WRITE_ACCESS = 0x04


def _superblock_offset(fh) -> int | None:
    offset = 0
    size = os.fstat(fh.fileno()).st_size
    while offset + len(HDF5_SIGNATURE) <= size:
        fh.seek(offset)
        if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def hdf5_consistency_flags(path: str | os.PathLike) -> int | None:
    """The file-consistency flags of an HDF5 file, or None when it is not HDF5."""
    with open(path, "rb") as fh:
        base = _superblock_offset(fh)
        if base is None:
            return None
        fh.seek(base + 8)
        version = fh.read(1)
        if not version:
            return None
        if version[0] in (0, 1):
            fh.seek(base + 20)  # after versions, sizes and the group K values
            raw = fh.read(4)
            return int.from_bytes(raw, "little") if len(raw) == 4 else None
        fh.seek(base + 11)  # version 2 and 3: signature, version, two sizes, then the flags
        raw = fh.read(1)
        return raw[0] if raw else None


def hdf5_open_for_writing(path: str | os.PathLike) -> bool:
    """True when the superblock says a writer (plain or SWMR) holds the file."""
    flags = hdf5_consistency_flags(path)
    if flags is None:
        return False
    return bool(flags & (WRITE_ACCESS | SWMR_WRITE_ACCESS))
