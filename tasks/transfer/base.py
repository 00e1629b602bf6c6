"""One interface for every mover: ``Mover.transfer(manifest, dest) -> TransferReport``.

A report says, per file, whether its copy at the destination was verified (checksum equal to the
manifest's). A transfer is ``complete`` only when every file is verified; a mover never marks a
partial copy complete. Globus transfers keep their task id in the report.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from tomopipe.tasks.staging.manifest import Manifest

from tomopipe.errors import InputError, TomopipeError

# File statuses: verified (copied and checksum equal), linked (hard link, same inode),
# unchanged (already verified at the destination, skipped), failed.
OK_STATUSES = ("verified", "linked", "unchanged")


class TransferError(TomopipeError):
    """A transfer that did not complete; ``report`` says what was verified and what failed."""

    def __init__(self, message: str, report: TransferReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class FileResult:
    relpath: str
    source: str
    destination: str
    size: int
    checksum: str
    status: str = "failed"
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


@dataclass
class TransferReport:
    run_uid: str
    mover: str
    destination: str
    files: list[FileResult] = field(default_factory=list)
    task_id: str | None = None  # Globus task id
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    events: list[dict] = field(default_factory=list)  # faults the service reported

    @property
    def complete(self) -> bool:
        return not self.error and bool(self.files) and all(f.ok for f in self.files)

    @property
    def bytes_moved(self) -> int:
        return sum(f.size for f in self.files if f.status in ("verified", "linked"))

    @property
    def seconds(self) -> float:
        return max(0.0, (self.finished or time.time()) - self.started)

    def failed(self) -> list[FileResult]:
        return [f for f in self.files if not f.ok]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(complete=self.complete, bytes_moved=self.bytes_moved, seconds=self.seconds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> TransferReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["files"] = [FileResult(**f) for f in data.get("files", [])]
        return cls(**known)

    def summary(self) -> str:
        ok = sum(f.ok for f in self.files)
        text = (f"{self.mover} transfer of run {self.run_uid} to {self.destination}: "
                f"{ok}/{len(self.files)} files verified, {self.bytes_moved} bytes moved "
                f"in {self.seconds:.1f} s")
        if self.task_id:
            text += f", Globus task {self.task_id}"
        if not self.complete:
            reasons = [self.error] if self.error else []
            reasons += [f"{f.relpath}: {f.error}" for f in self.failed()[:5]]
            text += "; NOT complete: " + "; ".join(reasons)
        return text

    def raise_if_incomplete(self) -> TransferReport:
        if not self.complete:
            raise TransferError(self.summary(), self)
        return self


def safe_relpath(relpath: str, *, source: str) -> PurePosixPath:
    """A manifest's relative path, refused if it could climb out of the destination."""
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\x00" in relpath:
        raise InputError(source, "manifest entry path would leave the destination",
                         where=relpath)
    return rel


class Mover(ABC):
    """Moves every file of a manifest to ``dest`` (keeping each entry's relpath)."""

    name = "mover"

    @abstractmethod
    def transfer(self, manifest: Manifest, dest: str | os.PathLike) -> TransferReport:
        """Move and verify; never raises for per-file faults (they are in the report)."""

    def check_manifest(self, manifest: Manifest) -> None:
        if not manifest.entries:
            raise InputError(manifest.run_uid, "manifest lists no files to move")
        if not manifest.complete:
            bad = manifest.unstable()
            what = f"{bad[0].relpath}: {bad[0].why_unstable}" if bad else "the run has not stopped"
            raise InputError(manifest.run_uid, "data still being written; not moved until "
                                               f"complete ({what})")


def destination_record_path(dest: str | os.PathLike, run_uid: str) -> Path:
    """Where a complete transfer leaves its verified manifest at a local destination."""
    return Path(dest) / ".tomopipe" / f"transfer-{run_uid}.json"
