"""Retention: delete raw files older than a site's ``keep_days`` only when a verified copy exists.

Policy (declarative, in config.yaml)::

    retention:
      beamline: {keep_days: 14, roots: [/data/raw]}

A file is deleted only when all of these hold, else it is kept and the reason reported:

* it is older than ``keep_days`` (mtime) and a regular file (symbolic links are never followed);
* the transfer ledger records a complete transfer of it, and it has not changed since it was
  staged (size and mtime equal to the manifest's);
* the copy is verified now: for a local destination the copy exists and its checksum (the
  manifest's algorithm: BLAKE3 or SHA-256) equals the manifest's (read again); for Globus, the
  service verified the checksum (``verify_checksum`` with the source's SHA-256 as external
  checksum) in the recorded task.

The scheduled Prefect flow that applies it lives in ``flows/retention.py``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tomopipe.tasks.paths import is_under_roots
from tomopipe.tasks.staging.checksum import verify_file
from tomopipe.tasks.transfer.ledger import CopyRecord, copies_by_source
from tomopipe.tasks.transfer.sites import RetentionPolicy

DAY = 86400.0


@dataclass
class RetentionReport:
    site: str
    keep_days: float
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (path, why it could go)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (path, why it stays)
    bytes_freed: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"site": self.site, "keep_days": self.keep_days, "dry_run": self.dry_run,
                "bytes_freed": self.bytes_freed, "deleted": [list(d) for d in self.deleted],
                "kept": [list(k) for k in self.kept]}

    def markdown(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [f"## Retention at site `{self.site}` (keep {self.keep_days:g} days)", "",
                 f"{verb} {len(self.deleted)} files ({self.bytes_freed / 1e9:.3f} GB), "
                 f"kept {len(self.kept)}.", "", "| file | action | why |", "|---|---|---|"]
        lines += [f"| {p} | {verb} | {why} |" for p, why in self.deleted[:200]]
        lines += [f"| {p} | kept | {why} |" for p, why in self.kept[:200]]
        return "\n".join(lines)


def _verified_copy(path: Path, st: os.stat_result, records: list[CopyRecord]) -> tuple[bool, str]:
    """(True, why) when one recorded copy is verified now; else (False, the last reason)."""
    why = "no complete transfer of it is recorded"
    for rec in records:
        entry, copy = rec.entry, rec.copy
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            why = "changed since it was copied (size or mtime differ from the manifest)"
            continue
        if rec.mover == "globus":
            return True, (f"Globus task {rec.task_id} verified the checksum of "
                          f"{copy.destination}")
        dest = Path(copy.destination)
        if not dest.is_file():
            why = f"recorded copy {dest} is missing"
            continue
        if dest.stat().st_size != entry.size:
            why = f"recorded copy {dest} has the wrong size"
            continue
        try:
            ok, _ = verify_file(dest, entry.checksum)  # in the manifest's own algorithm
        except ValueError as exc:
            why = f"recorded copy {dest} cannot be checked: {exc}"
            continue
        if not ok:
            why = f"recorded copy {dest} fails its checksum"
            continue
        return True, f"copy {dest} verified ({entry.checksum[:19]}...)"
    return False, why


def apply_retention(policy: RetentionPolicy, ledger: str | os.PathLike, *,
                    now: float | None = None, dry_run: bool = False) -> RetentionReport:
    """Apply one site's policy; the report lists every file looked at, deleted or kept."""
    now = time.time() if now is None else now
    cutoff = now - policy.keep_days * DAY
    copies = copies_by_source(ledger)
    report = RetentionReport(site=policy.site, keep_days=policy.keep_days, dry_run=dry_run)
    for root in policy.roots:
        root = Path(root)
        if not root.is_dir():
            report.kept.append((str(root), "retention root does not exist"))
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = [d for d in dirnames if d != ".tomopipe"]
            for name in sorted(filenames):
                path = Path(dirpath) / name
                st = path.lstat()
                if path.is_symlink():
                    report.kept.append((str(path), "symbolic link: never followed"))
                    continue
                if st.st_mtime >= cutoff:
                    age = (now - st.st_mtime) / DAY
                    report.kept.append((str(path), f"younger than {policy.keep_days:g} days "
                                                   f"({age:.1f} days)"))
                    continue
                real = os.path.realpath(path)
                if not is_under_roots(real, policy.roots):
                    report.kept.append((str(path), "resolves outside the retention roots"))
                    continue
                ok, why = _verified_copy(path, st, copies.get(real, []))
                if not ok:
                    report.kept.append((str(path), why))
                    continue
                if not dry_run:
                    path.unlink()
                report.deleted.append((str(path), why))
                report.bytes_freed += st.st_size
    return report
