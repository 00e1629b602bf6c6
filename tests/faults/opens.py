"""Count the files a piece of code opens outside the data roots.

Two witnesses, because neither sees everything alone:

- ``sys.addaudithook`` sees every ``open``, ``os.listdir`` and ``os.scandir`` made through
  Python in this process (``open()``, ``os.open``, ``Path.read_bytes``, checksumming), with the
  path as given;
- inotify (Linux, through ctypes: no package needed) sees every open of a file or folder under
  the watched "outside" folders by any code at all, including HDF5's own C-level ``open(2)``,
  which no Python audit event reports.

Used by tests/faults/test_hostile_documents.py and benchmarks/faults_input.py.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
from pathlib import Path

_IN_ACCESS, _IN_OPEN = 0x1, 0x20
_EVENT = struct.Struct("iIII")
_AUDITED = ("open", "os.listdir", "os.scandir")

_lock = threading.Lock()
_active: list[OpenAudit] = []
_hooked = False


def _hook(event: str, args: tuple) -> None:
    if event not in _AUDITED or not _active or not args:
        return
    path = args[0]
    if isinstance(path, int) or path is None:
        return  # an already-open descriptor (os.open(fd), listdir(fd))
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return
    for audit in list(_active):
        audit.python_opens.append(text)


class _Inotify:
    """A minimal inotify watch on folders (and the files in them)."""

    def __init__(self, folders: list[Path]):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.where: dict[int, Path] = {}
        for folder in folders:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(str(folder)),
                                              _IN_OPEN | _IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
            self.where[wd] = folder

    def drain(self) -> list[str]:
        seen: list[str] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(buf):
                wd, _mask, _cookie, length = _EVENT.unpack_from(buf, offset)
                name = buf[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                folder = self.where.get(wd, Path("?"))
                seen.append(str(folder / os.fsdecode(name)) if name else str(folder))
                offset += _EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)


class OpenAudit:
    """``with OpenAudit(roots, outside=[...]) as audit: ...`` then ``audit.outside_roots()``.

    ``outside_roots()`` lists every path opened outside ``roots`` that lies in a watched
    ``outside`` folder (inotify, any code) or under ``suspect`` prefixes (Python-level opens
    anywhere, e.g. ``/etc``). Opens of the interpreter's own files (modules, shared libraries)
    are not data reads and are not counted.
    """

    def __init__(self, roots, *, outside=(), suspect=()):
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        self.outside = [Path(os.path.realpath(p)) for p in outside]
        self.suspect = [Path(os.path.realpath(p)) for p in (*outside, *suspect)]
        self.python_opens: list[str] = []
        self.os_opens: list[str] = []
        self._inotify: _Inotify | None = None

    def __enter__(self) -> OpenAudit:
        global _hooked
        with _lock:
            if not _hooked:
                sys.addaudithook(_hook)  # hooks cannot be removed: one for the process
                _hooked = True
        if self.outside:
            self._inotify = _Inotify(self.outside)
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.remove(self)
        if self._inotify is not None:
            self.os_opens += self._inotify.drain()
            self._inotify.close()

    def _under(self, path: Path, folders: list[Path]) -> bool:
        return any(path == f or f in path.parents for f in folders)

    def outside_roots(self) -> list[str]:
        found = []
        for text in self.python_opens + self.os_opens:
            p = Path(os.path.abspath(text))
            real = Path(os.path.realpath(p))
            if self._under(real, self.roots) and self._under(p, self.roots):
                continue
            if self._under(real, self.suspect) or self._under(p, self.suspect):
                found.append(text)
        return sorted(set(found))
