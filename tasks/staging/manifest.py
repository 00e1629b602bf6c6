"""The exact set of files a run references, each with size, mtime and checksum.

A Manifest is built from a run's documents (StreamResource: ``uri``; legacy Resource: ``root`` +
``resource_path``), every path resolved under the data roots first. It is JSON-serialisable and
is saved next to the volume's provenance. A file still being written (run not stopped, HDF5
superblock flags set, or size/mtime changing between two looks) is marked not ``stable`` and must
not be moved until a later manifest sees it complete; ``changed_entries`` says what to move again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tomopipe.tasks.paths import resolve_data_path
from tomopipe.tasks.staging.checksum import DEFAULT_ALGORITHM, file_checksum
from tomopipe.tasks.staging.swmr import hdf5_open_for_writing

from tomopipe.errors import InputError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # absolute real path at the source
    relpath: str  # path under its data root: the layout kept at the destination
    size: int
    mtime_ns: int
    checksum: str  # "<algorithm>:<hex>": "blake3:..." (default) or "sha256:..."
    stable: bool = True  # False: still being written when looked at
    why_unstable: str = ""

    def same_content(self, other: ManifestEntry) -> bool:
        return (self.size, self.mtime_ns, self.checksum) == (other.size, other.mtime_ns,
                                                             other.checksum)

@dataclass
class Manifest:
    run_uid: str
    entries: list[ManifestEntry] = field(default_factory=list)
    run_stopped: bool = True
    created: float = field(default_factory=time.time)
    version: int = MANIFEST_VERSION

    @property
    def complete(self) -> bool:
        """Every file finished writing: safe to move and to reconstruct from."""
        return self.run_stopped and all(e.stable for e in self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def unstable(self) -> list[ManifestEntry]:
        return [e for e in self.entries if not e.stable]

    def to_dict(self) -> dict:
        return {"version": self.version, "run_uid": self.run_uid, "run_stopped": self.run_stopped,
                "created": self.created, "complete": self.complete,
                "total_bytes": self.total_bytes, "entries": [asdict(e) for e in self.entries]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        try:
            entries = [ManifestEntry(**e) for e in data["entries"]]
            return cls(run_uid=data["run_uid"], entries=entries,
                       run_stopped=bool(data.get("run_stopped", True)),
                       created=float(data.get("created", 0.0)),
                       version=int(data.get("version", MANIFEST_VERSION)))
        except (KeyError, TypeError) as exc:
            raise InputError("manifest", f"not a tomopipe manifest ({exc})") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            raise InputError(str(path), f"manifest is not valid JSON ({exc})") from exc


def _relpath(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if path == root or root in path.parents:
            return path.relative_to(root).as_posix()
    return path.name


def entry_for(path: str | os.PathLike, *, relpath: str, settle_s: float = 0.0,
              algorithm: str = DEFAULT_ALGORITHM) -> ManifestEntry:
    """One file's entry: two looks (before and after hashing, ``settle_s`` apart at least)."""
    path = Path(path)
    before = os.stat(path)
    checksum, nread = file_checksum(path, algorithm=algorithm)
    if settle_s:
        time.sleep(settle_s)
    after = os.stat(path)
    why = ""
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) \
            or nread != after.st_size:
        why = "file changed while it was read"
    elif hdf5_open_for_writing(path):
        why = "HDF5 superblock says the file is open for writing (SWMR)"
    return ManifestEntry(path=str(path), relpath=relpath, size=after.st_size,
                         mtime_ns=after.st_mtime_ns, checksum=checksum, stable=not why,
                         why_unstable=why)


def build_manifest(files: Iterable[str | os.PathLike], *, run_uid: str,
                   roots: Iterable[str | os.PathLike] | None = None, run_stopped: bool = True,
                   settle_s: float = 0.0, algorithm: str = DEFAULT_ALGORITHM) -> Manifest:
    """A Manifest of ``files`` (already resolved under the data roots).

    ``algorithm``: the checksum of every entry, "blake3" (fast; the default) or "sha256".

    ``relpath`` of each entry is its path under the root that holds it (``roots``), else under the
    files' common directory. Files listed twice are kept once.
    """
    paths = sorted({Path(os.path.realpath(os.fspath(f))) for f in files})
    root_list = [Path(os.path.realpath(os.fspath(r))) for r in roots] if roots else []
    if not root_list and paths:
        root_list = [Path(os.path.commonpath([p.parent for p in paths]))]
    entries = []
    for p in paths:
        if not p.is_file():
            raise InputError(run_uid, "referenced file does not exist or is not a regular file",
                             where=str(p))
        entries.append(entry_for(p, relpath=_relpath(p, root_list), settle_s=settle_s,
                                 algorithm=algorithm))
    return Manifest(run_uid=run_uid, entries=entries, run_stopped=run_stopped)


def _doc_path(name: str, doc: dict, run_uid: str) -> str:
    if name == "stream_resource":
        if doc.get("uri"):
            return doc["uri"]
        if doc.get("resource_path") is not None:  # event-model < 1.21 StreamResource
            return os.path.join(doc.get("root", ""), doc["resource_path"])
        raise InputError(run_uid, "StreamResource has neither 'uri' nor 'resource_path'",
                         where=f"stream_resource {doc.get('uid', '?')}")
    if doc.get("resource_path") is None:
        raise InputError(run_uid, "Resource has no 'resource_path'",
                         where=f"resource {doc.get('uid', '?')}")
    return os.path.join(doc.get("root", ""), doc["resource_path"])


def _files_under(directory: Path, roots: list, source: str) -> list[Path]:
    """Regular files under a directory; every entry (links too) checked against the roots."""
    found, seen, todo = [], set(), [directory]
    while todo:
        d = todo.pop()
        if d in seen:  # a link back up the tree
            continue
        seen.add(d)
        for child in sorted(d.iterdir()):
            real = resolve_data_path(child, roots, source=source)
            if real.is_dir():
                todo.append(real)
            elif real.is_file():
                found.append(real)
    return sorted(set(found))


def files_from_documents(docs: Iterable[tuple[str, dict]], roots: Iterable[str | os.PathLike],
                         *, run_uid: str | None = None) -> tuple[str, list[Path], bool]:
    """(run uid, files the run references, run stopped?) from (name, doc) pairs.

    Every path is resolved under ``roots`` before anything is read; a directory (an image
    series) stands for the regular files under it, each checked again.
    """
    roots = list(roots)
    uid, stopped, files = run_uid, False, []
    for name, doc in docs:
        if name == "start":
            uid = uid or doc.get("uid")
        elif name == "stop":
            stopped = True
        elif name in ("stream_resource", "resource"):
            src = uid or doc.get("run_start") or "unknown run"
            path = resolve_data_path(_doc_path(name, doc, src), roots, source=src)
            if path.is_dir():
                files += _files_under(path, roots, src)
            else:
                files.append(path)
    if uid is None:
        raise InputError("documents", "no start document and no run uid given")
    return uid, files, stopped


def manifest_from_documents(docs: Iterable[tuple[str, dict]], roots: Iterable[str | os.PathLike],
                            *, run_uid: str | None = None, settle_s: float = 0.0,
                            algorithm: str = DEFAULT_ALGORITHM) -> Manifest:
    """Stage a run: its files resolved under the roots, sized and checksummed."""
    roots = list(roots)
    uid, files, stopped = files_from_documents(docs, roots, run_uid=run_uid)
    if not files:
        raise InputError(uid, "the run's documents reference no files "
                              "(no StreamResource or Resource documents)")
    return build_manifest(files, run_uid=uid, roots=roots, run_stopped=stopped,
                          settle_s=settle_s, algorithm=algorithm)


def changed_entries(old: Manifest | None, new: Manifest) -> list[ManifestEntry]:
    """Entries of ``new`` that ``old`` did not have with the same size, mtime and checksum."""
    if old is None:
        return list(new.entries)
    before = {e.relpath: e for e in old.entries}
    return [e for e in new.entries if e.relpath not in before
            or not before[e.relpath].same_content(e)]
