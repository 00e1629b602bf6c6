"""The bridge's durable memory under the home: which events went out, and each open run's
documents so far.

* ``Ledger``: SQLite table of (run uid, event name) already emitted, so that no run gets an
  event twice across restarts, replays and reconciliations.
* ``Journal``: one JSON-lines file per run that has not stopped yet. After a crash the bridge
  replays it into a fresh catalog writer, so the rest of the run's documents still land.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # autocommit: each record is durable as soon as it returns
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emitted (uid TEXT NOT NULL, event TEXT NOT NULL,"
            " at REAL NOT NULL, PRIMARY KEY (uid, event))"
        )

    def has(self, uid: str, event: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM emitted WHERE uid = ? AND event = ?", (uid, event)
            ).fetchone()
        return row is not None

    def record(self, uid: str, event: str) -> bool:
        """Record an emission; False when it was already there."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO emitted (uid, event, at) VALUES (?, ?, ?)",
                (uid, event, time.time()),
            )
        return cur.rowcount == 1

    def events_of(self, uid: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT event FROM emitted WHERE uid = ?", (uid,)).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        self._db.close()


class Journal:
    """Documents of runs still open, one ``<uid>.jsonl`` each; removed when the run is done."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _file(self, uid: str) -> Path:
        return self.dir / f"{uid}.jsonl"

    def append(self, uid: str, name: str, doc: dict) -> None:
        with self._file(uid).open("a") as f:
            f.write(json.dumps([name, doc], default=_plain) + "\n")
            f.flush()  # a killed process keeps what the OS already has

    def open_runs(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.jsonl"))

    def documents(self, uid: str) -> list[tuple[str, dict]]:
        docs = []
        path = self._file(uid)
        if not path.exists():
            return docs
        for line in path.read_text().splitlines():
            try:
                name, doc = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            docs.append((name, doc))
        return docs

    def close_run(self, uid: str) -> None:
        self._file(uid).unlink(missing_ok=True)


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class Spool:
    """Documents as received, before they are handled: what a killed bridge had taken off the
    bus but not yet written is handled after the restart. Handled documents are skipped by the
    bridge (it knows their uids), so the saved position may lag without harm.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "inbox.jsonl"
        self._pos_file = self.dir / "inbox.pos"
        self._lock = threading.Lock()
        self._handled = self._saved_position()
        self._lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self._saved_at = time.monotonic()

    def _saved_position(self) -> int:
        try:
            return int(self._pos_file.read_text())
        except (OSError, ValueError):
            return 0

    def append(self, name: str, doc) -> None:
        try:
            line = json.dumps([name, doc], default=_plain) + "\n"
        except (TypeError, ValueError):
            line = json.dumps([name, None]) + "\n"  # not a document: keeps the count right
        with self._lock, self.path.open("a") as f:
            f.write(line)
            f.flush()
            self._lines += 1

    def pending(self) -> list[tuple[str, object]]:
        """Documents received but maybe not handled before the last stop."""
        if not self.path.exists():
            return []
        docs = []
        for line in self.path.read_text().splitlines()[self._handled:]:
            try:
                name, doc = json.loads(line)
            except ValueError:
                continue
            docs.append((name, doc))
        return docs

    @property
    def backlog(self) -> int:
        """Lines received and not yet counted as handled."""
        return self._lines - self._handled

    def handled(self, n: int = 1) -> None:
        """Count handled documents; once all are, the spool starts afresh."""
        with self._lock:
            self._handled += n
            now = time.monotonic()
            if self._handled >= self._lines:
                self.path.unlink(missing_ok=True)
                self._handled = self._lines = 0
            elif now - self._saved_at < 1.0:
                return
            self._pos_file.write_text(str(self._handled))
            self._saved_at = now
