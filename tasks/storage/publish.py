"""Atomic publishing of a volume: write beside the target, mark complete last, then rename.

Protocol for an output ``OUT.zarr``:

1. Everything is written into ``OUT.zarr.partial/``. Beside the Zarr hierarchy (in
   ``OUT.zarr.partial/.tomopipe-slabs/``, which Zarr never reads) live the job's key and plan
   (``job.json``, written after the empty volume exists) and one done-marker per slab, written
   after that slab's shards.
2. When every slab has its marker, the group attribute ``tomopipe.complete`` becomes true, the
   marker folder is removed and the folder is renamed to ``OUT.zarr`` (one ``os.rename``).

So a crash leaves at most a ``.partial`` folder, which never counts as complete; a re-run with
the same key resumes it (only slabs without markers are recomputed), a different key starts it
over. An existing ``OUT.zarr`` with the same key makes the job a no-op; one with a different key
is an error unless ``overwrite`` is set, and then it is replaced only once the new one is whole.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tomopipe.tasks.storage.omezarr import is_complete, read_provenance, update_provenance

from tomopipe.errors import InputError

MARKER_DIR = ".tomopipe-slabs"
JOB_FILE = "job.json"


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _marker_dir(partial: Path) -> Path:
    return Path(partial) / MARKER_DIR


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def slab_marker(partial: str | Path, rows: tuple[int, int]) -> Path:
    """Done-marker of the slab covering volume planes ``[rows[0], rows[1])``."""
    return _marker_dir(Path(partial)) / f"rows-{rows[0]:07d}-{rows[1]:07d}.done"


def mark_slab_done(partial: str | Path, rows: tuple[int, int], info: dict | None = None) -> None:
    """Record that the slab's shards are written (call only after they are)."""
    _write_atomic(slab_marker(partial, rows), json.dumps({"rows": list(rows), **(info or {})}))


def slab_done(partial: str | Path, rows: tuple[int, int]) -> bool:
    return slab_marker(partial, rows).exists()


@dataclass
class Publication:
    """Where a job writes and what it found there. ``state``: fresh | resume | skip."""

    out: Path
    partial: Path
    key: str
    state: str
    job: dict = field(default_factory=dict)  # the job.json of a resumed partial
    existing: dict = field(default_factory=dict)  # provenance of a completed OUT (skip)


def _looks_like_ours(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return not names or "zarr.json" in names or MARKER_DIR in names


def _finished_partial_key(partial: Path) -> str | None:
    try:
        prov = read_provenance(partial)
    except InputError:
        return None
    return prov.get("key") if prov.get("complete") is True else None


def begin(out: str | Path, key: str, *, overwrite: bool = False) -> Publication:
    """Decide whether a job with ``key`` is a no-op, a resume or a fresh start at ``out``."""
    out = Path(out)
    partial = partial_path(out)
    if out.exists():
        if not overwrite and is_complete(out) and read_provenance(out).get("key") == key:
            return Publication(out, partial, key, "skip", existing=read_provenance(out))
        if not overwrite:
            try:
                held = f"a different reconstruction (key {read_provenance(out).get('key')})"
            except InputError:
                held = "something that is not a tomopipe volume"
            raise InputError(
                str(out),
                f"already holds {held}; this job's key is {key}. "
                "Pick another --out or pass --overwrite",
            )
    if partial.exists():
        job_file = _marker_dir(partial) / JOB_FILE
        try:
            job = json.loads(job_file.read_text())
        except (OSError, ValueError):
            job = {}
        if job.get("key") == key:
            return Publication(out, partial, key, "resume", job=job)
        if _finished_partial_key(partial) == key and not out.exists():
            os.rename(partial, out)  # a job stopped between marking complete and renaming
            return Publication(out, partial, key, "skip", existing=read_provenance(out))
        if not _looks_like_ours(partial):
            raise InputError(str(partial), "exists and is not an unfinished tomopipe volume; "
                             "move it away or pick another --out")
        shutil.rmtree(partial)  # an unfinished job with other parameters: start over
    return Publication(out, partial, key, "fresh")


def record_job(pub: Publication, job: dict) -> None:
    """After the empty volume is created: store key and plan, making the partial resumable."""
    _marker_dir(pub.partial).mkdir(parents=True, exist_ok=True)
    _write_atomic(_marker_dir(pub.partial) / JOB_FILE, json.dumps({**job, "key": pub.key}))
    pub.job = {**job, "key": pub.key}


def finish(pub: Publication, provenance: dict) -> Path:
    """Mark the partial complete (with ``provenance``) and rename it to ``out``."""
    update_provenance(pub.partial, **provenance, key=pub.key, complete=True)
    shutil.rmtree(_marker_dir(pub.partial), ignore_errors=True)
    old = None
    if pub.out.exists():  # only reached with overwrite: keep the old one until the new is in place
        old = pub.out.with_name(f"{pub.out.name}.old-{os.getpid()}")
        os.rename(pub.out, old)
    os.rename(pub.partial, pub.out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    return pub.out
