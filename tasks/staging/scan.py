"""Staging for a ScanSpec: the manifest of the files a scan reads, and the spec moved elsewhere.

The flows hold a ``ScanSpec`` (from a run's documents or a file); these helpers turn it into a
manifest to move and, once moved, into the same spec pointing at the verified copies.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from tomopipe.tasks.paths import resolve_data_path
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec
from tomopipe.tasks.staging.checksum import DEFAULT_ALGORITHM
from tomopipe.tasks.staging.manifest import Manifest, build_manifest

from tomopipe.errors import InputError


def spec_files(spec: ScanSpec) -> list[str]:
    """Every distinct file the scan reads (projections, flats, darks), in first-use order."""
    seen: dict[str, None] = {}
    for fs in spec.projections + spec.flats + spec.darks:
        seen.setdefault(fs.path, None)
    return list(seen)


def manifest_for_spec(spec: ScanSpec, data_roots: Iterable[str | os.PathLike] | None = None, *,
                      run_uid: str | None = None, run_stopped: bool = True,
                      algorithm: str = DEFAULT_ALGORITHM) -> Manifest:
    """The scan's files with sizes and checksums. With ``data_roots`` every path is first
    resolved under them (paths from documents); without, files are taken as given (a file the
    user named) and laid out under their common directory."""
    uid = run_uid or spec.identity or spec.label
    roots = list(data_roots) if data_roots is not None else None
    files = spec_files(spec)
    if roots is not None:
        files = [str(resolve_data_path(p, roots, source=uid)) for p in files]
    if not files:
        raise InputError(uid, "scan references no files")
    return build_manifest(files, run_uid=uid, roots=roots, run_stopped=run_stopped,
                          algorithm=algorithm)


def relocate_spec(spec: ScanSpec, manifest: Manifest, dest: str | os.PathLike,
                  transfer: dict | None = None) -> ScanSpec:
    """The same scan reading the copies under ``dest`` (``dest/<entry.relpath>``).

    ``transfer`` (a small summary: mover, task id, destination) is kept in ``spec.extra``.
    """
    by_source = {e.path: Path(dest) / e.relpath for e in manifest.entries}

    def moved(fs: FrameSet) -> FrameSet:
        real = os.path.realpath(fs.path)
        if real not in by_source:
            raise InputError(spec.label, "file is not in the transfer manifest", where=fs.path)
        return dataclasses.replace(fs, path=str(by_source[real]))

    extra = dict(spec.extra)
    if transfer is not None:
        extra["transfer"] = transfer
    return dataclasses.replace(
        spec, projections=tuple(map(moved, spec.projections)),
        flats=tuple(map(moved, spec.flats)), darks=tuple(map(moved, spec.darks)), extra=extra)
