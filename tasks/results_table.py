"""Record what became of each run: a results table under the home, mirrored into the catalog.

The table (SQLite, ``$TOMOPIPE_HOME/results.sqlite``) is the record ``tomopipe runs`` reads: one
row per source (run uid or file) with its state (waiting | running | completed | failed |
crashed: its flow-run process died, see deployments/crash_recovery.py), the
output volume, its key, centre and the reason of a failure. It is written at every state change,
cheaply and without a network. The final state is also written into the run's node in the Tiled
catalog, as metadata ``tomopipe: {output, key, center, state, message}`` next to ``start`` and
``stop``, so whoever browses the catalog sees the volume linked to the raw run. That write
happens only after the run's stop document is stored (the TiledWriter rewrites the run's
metadata when it stores the stop) and is best effort: a catalog that refuses it does not fail the
reconstruction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

from tomopipe.tasks import run_progress

log = logging.getLogger(__name__)

STATES = ("waiting", "running", "completed", "failed", "crashed")
TABLE = """CREATE TABLE IF NOT EXISTS results (
    uid TEXT PRIMARY KEY, plan_name TEXT, state TEXT NOT NULL, output TEXT, key TEXT,
    center REAL, message TEXT, flow_run_id TEXT, details TEXT, updated REAL NOT NULL)"""
COLUMNS = ("uid", "plan_name", "state", "output", "key", "center", "message", "flow_run_id",
           "details", "updated")


def results_path(home: Path) -> Path:
    return Path(home) / "results.sqlite"


def _connect(home: Path, table: str = TABLE) -> sqlite3.Connection:
    """The home's results database (WAL, waiting writers), with ``table`` created if absent."""
    path = results_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(table)
    return db


def record(home: Path, uid: str, state: str, *, plan_name: str | None = None,
           output: str | None = None, key: str | None = None, center: float | None = None,
           message: str | None = None, flow_run_id: str | None = None,
           details: dict | None = None) -> dict:
    """Insert or update the row of ``uid``; fields left None keep their stored value."""
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {STATES}")
    row = {"uid": uid, "plan_name": plan_name, "state": state, "output": output, "key": key,
           "center": center, "message": message, "flow_run_id": flow_run_id,
           "details": json.dumps(details) if details is not None else None,
           "updated": time.time()}
    db = _connect(home)
    try:
        old = db.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE uid = ?",
                         (uid,)).fetchone()
        if old:
            kept = dict(zip(COLUMNS, old, strict=True))
            for k, v in row.items():
                if v is None and k not in ("message", "output"):
                    row[k] = kept[k]
            if state == "running":  # a new attempt: forget the last failure
                row["message"] = None
            elif row["output"] is None and state != "failed":
                row["output"] = kept["output"]
        db.execute(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES "
                   f"({', '.join('?' * len(COLUMNS))})", tuple(row[c] for c in COLUMNS))
        run_progress.note_state(db, uid, state, row["updated"])  # the run's timeline
    finally:
        db.close()
    return row


def read_all(home: Path) -> dict[str, dict]:
    if not results_path(home).exists():
        return {}
    db = _connect(home)
    try:
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM results").fetchall()
    finally:
        db.close()
    out = {}
    for r in rows:
        d = dict(zip(COLUMNS, r, strict=True))
        d["details"] = json.loads(d["details"]) if d["details"] else None
        out[d["uid"]] = d
    return out


def read_one(home: Path, uid: str) -> dict | None:
    return read_all(home).get(uid)


def mirror_to_catalog(catalog, uid: str, result: dict) -> bool:
    """Write ``tomopipe: {...}`` into the run's metadata; False (logged) when it cannot."""
    try:
        node = catalog[uid]
        md = dict(node.metadata)
        md["tomopipe"] = {k: result.get(k) for k in ("output", "key", "center", "state",
                                                     "message")}
        node.update_metadata(metadata=md)
        return True
    except Exception as exc:  # the result table holds the truth; this is a courtesy copy
        log.warning("could not record the result of %s in the catalog: %s", uid, exc)
        return False
