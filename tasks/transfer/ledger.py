"""A ledger of complete transfers (``$TOMOPIPE_HOME/transfers``): what was copied where.

Retention reads it to find, for a raw file, a copy whose checksum was verified against the
manifest. Only complete transfers are recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from tomopipe.tasks.staging.manifest import Manifest, ManifestEntry
from tomopipe.tasks.transfer.base import FileResult, TransferReport


@dataclass(frozen=True)
class CopyRecord:
    entry: ManifestEntry  # the source file as staged
    copy: FileResult  # where it went and how it was verified
    mover: str
    task_id: str | None
    record_file: str


def ledger_dir(home: str | os.PathLike) -> Path:
    return Path(home) / "transfers"


def record_transfer(directory: str | os.PathLike, manifest: Manifest,
                    report: TransferReport) -> Path | None:
    """Write the manifest and report of a complete transfer (atomically); None if incomplete."""
    if not report.complete:
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dest_key = hashlib.sha256(report.destination.encode()).hexdigest()[:12]
    path = directory / f"{manifest.run_uid}-{dest_key}.json"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps({"manifest": manifest.to_dict(), "report": report.to_dict()},
                              indent=1))
    os.replace(tmp, path)
    return path


def copies_by_source(directory: str | os.PathLike) -> dict[str, list[CopyRecord]]:
    """Source path -> every recorded verified copy of it (unreadable records are skipped)."""
    found: dict[str, list[CopyRecord]] = {}
    directory = Path(directory)
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            manifest = Manifest.from_dict(data["manifest"])
            report = TransferReport.from_dict(data["report"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        results = {f.relpath: f for f in report.files}
        for entry in manifest.entries:
            copy = results.get(entry.relpath)
            if copy is not None and copy.ok:
                found.setdefault(entry.path, []).append(
                    CopyRecord(entry, copy, report.mover, report.task_id, str(path)))
    return found
