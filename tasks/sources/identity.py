"""A file's identity: its content checksum, used to key outputs made from it.

The hashing is staging's (``tasks.staging.checksum``, BLAKE3); this module only turns a file that
cannot be read into an error that names it.
"""

from __future__ import annotations

import os

from tomopipe.tasks.staging.checksum import file_checksum as _stream_checksum
from tomopipe.tasks.staging.checksum import new_hasher

from tomopipe.errors import InputError


def file_checksum(path: str | os.PathLike) -> str:
    """The checksum of the file's bytes, as ``"blake3:<hex>"``."""
    try:
        return _stream_checksum(path)[0]
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None


def combined_checksum(checksums: list[str]) -> str:
    """One identity for a scan spread over several files (e.g. frames behind external links)."""
    digest = new_hasher()
    digest.update("\n".join(checksums).encode())
    return "blake3:" + digest.hexdigest()
