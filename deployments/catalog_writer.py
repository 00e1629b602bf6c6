"""Persist documents into the Tiled catalog with bluesky's TiledWriter.

Events and stream datums go to the catalog in batches of ``batch_size`` documents (and at the
stop), so the catalog follows a run as frames land, a few frames behind.
A run resumed after a bridge restart, or stalled while the catalog was down, is rebuilt: its
partial node is deleted and the journal of its documents replayed through a new TiledWriter,
because TiledWriter keeps per-run state only in memory.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class CatalogWriter:
    def __init__(self, catalog, batch_size: int = 10):
        self.catalog = catalog
        # events and stream datums are sent every batch_size documents (and at the stop): the
        # catalog lags a run by at most that many frames, for far fewer requests
        self.batch_size = batch_size
        # One TiledWriter per open run: a run written again (rebuild) needs a writer that has
        # not seen its start document, and TiledWriter cannot forget one run among several.
        self._writers: dict = {}

    def in_catalog(self, uid: str) -> bool:
        try:
            self.catalog[uid]
        except KeyError:
            return False
        return True

    def write(self, name: str, doc: dict, run_uid: str) -> None:
        if name == "start":
            from bluesky.callbacks.tiled_writer import TiledWriter

            self._writers[run_uid] = TiledWriter(self.catalog, batch_size=self.batch_size)
        writer = self._writers.get(run_uid)
        if writer is None:
            raise ValueError(f"{name} document of run {run_uid}, whose start was not written")
        writer(name, doc)
        if name == "stop":
            del self._writers[run_uid]

    def rebuild(self, uid: str, docs: list[tuple[str, dict]]) -> None:
        """Write a run again from its documents so far, replacing any partial node."""
        self._writers.pop(uid, None)
        if self.in_catalog(uid):
            self.catalog[uid].delete(recursive=True, external_only=False)
        for name, doc in docs:
            self.write(name, doc, uid)


class NullWriter:
    """For facilities whose own TiledWriter already persists the documents (--no-writer)."""

    catalog = None

    def write(self, name: str, doc: dict, run_uid: str) -> None:
        pass

    def rebuild(self, uid: str, docs) -> None:
        pass
