"""When each run reached each step, and how far its live reconstruction has grown.

A second table in the results database (``$TOMOPIPE_HOME/results.sqlite``, beside the results
table), so that ``tomopipe runs --json`` can give scripts, per run:

- ``timeline``: ``start`` and ``stop`` (the run's documents, from the catalog), ``running``
  (when its flow began to reconstruct it) and ``published`` (when its volume was published), as
  Unix times, null until they happen;
- ``live`` while it runs: ``fraction`` (of the final angular weight in the live views),
  ``updated`` (Unix time) and ``path`` (the live OME-Zarr group).

``note_state`` is called by ``results_table.record`` on the same connection at every state
change; ``record_live`` by the streaming flow at every live update.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

TABLE = """CREATE TABLE IF NOT EXISTS progress (
    uid TEXT PRIMARY KEY, running REAL, published REAL, live_fraction REAL, live_updated REAL,
    live_path TEXT)"""


def note_state(db: sqlite3.Connection, uid: str, state: str, when: float) -> None:
    """Record the time of a state change: ``running`` starts an attempt (and forgets the last
    publication), ``completed`` is the publication."""
    db.execute(TABLE)
    db.execute("INSERT OR IGNORE INTO progress (uid) VALUES (?)", (uid,))
    if state == "running":
        db.execute("UPDATE progress SET running = ?, published = NULL, live_fraction = NULL, "
                   "live_updated = NULL, live_path = NULL WHERE uid = ? AND "
                   "(running IS NULL OR published IS NOT NULL)", (when, uid))
    elif state == "completed":
        db.execute("UPDATE progress SET published = ? WHERE uid = ?", (when, uid))


def _connect(home: Path) -> sqlite3.Connection:
    from tomopipe.tasks import results_table  # which imports this module

    return results_table._connect(home, TABLE)


def record_live(home: Path, uid: str, fraction: float, path: str,
                updated: float | None = None) -> None:
    db = _connect(home)
    try:
        db.execute("INSERT OR IGNORE INTO progress (uid) VALUES (?)", (uid,))
        db.execute("UPDATE progress SET live_fraction = ?, live_updated = ?, live_path = ? "
                   "WHERE uid = ?", (float(fraction), updated or time.time(), str(path), uid))
    finally:
        db.close()


def read_all(home: Path) -> dict[str, dict]:
    from tomopipe.tasks.results_table import results_path

    if not results_path(home).exists():
        return {}
    db = _connect(home)
    try:
        rows = db.execute("SELECT uid, running, published, live_fraction, live_updated, "
                          "live_path FROM progress").fetchall()
    finally:
        db.close()
    return {r[0]: {"running": r[1], "published": r[2], "live_fraction": r[3],
                   "live_updated": r[4], "live_path": r[5]} for r in rows}


def timeline(start: dict | None, stop: dict | None, progress: dict | None) -> dict:
    """``{start, running, stop, published}`` in Unix times (None: not yet)."""
    progress = progress or {}
    return {"start": (start or {}).get("time"), "running": progress.get("running"),
            "stop": (stop or {}).get("time"), "published": progress.get("published")}


def live(state: str, progress: dict | None) -> dict | None:
    """``{fraction, updated, path}`` while the run is running and streams; else None."""
    progress = progress or {}
    if state != "running" or progress.get("live_path") is None:
        return None
    return {"fraction": progress["live_fraction"], "updated": progress["live_updated"],
            "path": progress["live_path"]}
