"""Resolve paths that come from documents, only under the configured data roots.

A document (a run's StreamResource or Resource) names files by URI or path. Whatever it names must
lie under one of the data roots: ``..`` escapes, symbolic links that leave the roots and absolute
paths elsewhere are refused *before* anything is read or moved.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tomopipe.errors import ConfigError, InputError, PathEscapeError

_LOCAL_HOSTS = ("", "localhost")


def path_from_uri(path: str | os.PathLike, *, source: str) -> str:
    """The file-system path of a ``file://`` URI or a plain path (other schemes are refused)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise InputError(source, "path contains a NUL byte", where=repr(text))
    if not text.strip():
        raise InputError(source, "empty path")
    if "://" in text or text.startswith("file:"):
        parts = urlsplit(text)
        if parts.scheme != "file":
            raise InputError(source, f"unsupported URI scheme {parts.scheme!r} (only file:// "
                                     "and plain paths)", where=text)
        if parts.netloc not in _LOCAL_HOSTS:
            raise PathEscapeError(source, f"file URI names another host {parts.netloc!r}",
                                  where=text)
        if parts.query or parts.fragment:
            raise InputError(source, "file URI with a query or fragment", where=text)
        text = unquote(parts.path)
        if "\x00" in text:
            raise InputError(source, "path contains a NUL byte", where=repr(text))
    return text


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _real_roots(roots: Iterable[str | os.PathLike]) -> list[Path]:
    real = [Path(os.path.realpath(os.path.expanduser(os.fspath(r)))) for r in roots]
    if not real:
        raise ConfigError("data_roots: no data roots configured; paths from documents cannot be "
                          "resolved")
    return real


def resolve_data_path(path: str | os.PathLike, roots: Iterable[str | os.PathLike], *,
                      source: str) -> Path:
    """The real path of ``path`` if it lies under one of ``roots``; else ``PathEscapeError``.

    ``path``: a ``file://`` URI or a plain path; relative paths are taken relative to the first
    root. ``source`` names where the path came from (a run uid) for the error message.
    The check is done twice: lexically (``..`` that climbs out) and on the real path with every
    symbolic link resolved (a link inside a root that points elsewhere).
    """
    roots_list = list(roots)
    real_roots = _real_roots(roots_list)
    given = os.fsdecode(os.fspath(path))
    text = path_from_uri(path, source=source)
    candidate = Path(text).expanduser() if text.startswith("~") else Path(text)
    if not candidate.is_absolute():
        candidate = real_roots[0] / candidate
    roots_text = ", ".join(str(r) for r in real_roots)

    def refuse(why: str) -> PathEscapeError:
        err = PathEscapeError(source, f"{why}; data roots: [{roots_text}]", where=given)
        err.path, err.roots = given, [str(r) for r in real_roots]
        return err

    # Lexical check first: "root/../etc" is refused even if it happens to exist nowhere.
    lexical = Path(os.path.normpath(candidate))
    lexical_roots = [Path(os.path.normpath(os.path.abspath(os.fspath(r)))) for r in roots_list]
    if not any(_is_within(lexical, r) for r in real_roots + lexical_roots):
        raise refuse("path lies outside the data roots")
    real = Path(os.path.realpath(candidate))
    if not any(_is_within(real, r) for r in real_roots):
        raise refuse(f"path resolves (through a symbolic link) to {real}, outside the data roots")
    return real


def is_under_roots(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> bool:
    """True when the real path of ``path`` lies under one of ``roots``."""
    real = Path(os.path.realpath(os.fspath(path)))
    return any(_is_within(real, r) for r in _real_roots(roots))


def check_output_path(out: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                      folder: bool = True) -> Path:
    """Refuse an output path that cannot be written, or whose writing would destroy data.

    ``out`` is where a volume (a folder) will be created: it must not be an existing file, nor
    any of ``inputs`` (the scan's own files), and its nearest existing folder must be a writable
    folder. Each fault is one ``InputError`` naming ``out``. Nothing is created here.
    """
    given = os.fspath(out)
    path = Path(os.path.abspath(given))
    real = Path(os.path.realpath(path))
    for item in inputs:
        if real == Path(os.path.realpath(os.fspath(item))):
            raise InputError(given, f"is the input file {os.fspath(item)}; writing there would "
                                    "destroy the scan: pick another --out")
    if path.exists() and folder and not path.is_dir():
        raise InputError(given, "is a file, not a volume folder (--overwrite replaces only "
                                "volumes): pick another --out")
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(given, f"cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(given, f"cannot be written: the folder {ancestor} is read-only "
                                "(permission denied, or a read-only file system)")
    return path
