"""The embedded Prefect server: ``python -m tomopipe.infra.prefect_server ARGS`` runs
``prefect ARGS`` (``server start ...``) with SQLite write transactions that wait for each other.

Prefect opens SQLite transactions as ``BEGIN DEFERRED`` unless a caller asks for a row lock. A
deferred transaction that reads, then writes while another connection holds the write lock
fails at once with "database is locked" (SQLite cannot wait there without breaking the
transaction's snapshot); the server answers 503 and Prefect's client retries after 2 s. On
this server that happened to one API call of most live runs (the worker's state proposals, the
automation's flow-run creation), 2 s each, against a 2 s budget from run start to running.
``BEGIN IMMEDIATE`` takes the write lock up front, so a second writer waits the milliseconds
the first needs (SQLite's busy timeout) instead of failing. Prefect's own migrations run that
way. Only the SQLite configuration is changed; a PostgreSQL URL
(PREFECT_API_DATABASE_CONNECTION_URL) runs Prefect untouched.

It also hands the server's own in-process API clients the application it already made
(``reuse_current_app``), with any database: every automation action (the one that creates the
live flow run from the run-start event included) makes such a client, and each one called
Prefect's ``create_app()``, which hashes every setting and sets logging up again before it finds
the application in its cache: 0.35 s idle and 0.7 s with a scan running, of a 2 s budget.
"""

from __future__ import annotations

import functools
import sys


def immediate_sqlite_transactions() -> None:
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred = AioSqliteConfiguration.begin_transaction
    if getattr(deferred, "tomopipe_immediate", False):
        return

    def begin_transaction(self, session, with_for_update: bool = False):
        return deferred(self, session, with_for_update=True)  # True: BEGIN IMMEDIATE

    begin_transaction.tomopipe_immediate = True
    AioSqliteConfiguration.begin_transaction = begin_transaction


def reuse_current_app() -> None:
    """Make ``create_app()`` without settings return, while the current settings object is the
    same, the application its first such call returned, without re-hashing the settings or
    setting logging up again. Calls with settings or ``ignore_cache`` go to Prefect as before;
    so does the first call under another settings object (a ``temporary_settings`` block)."""
    import prefect.settings
    from prefect.server.api import server

    create_app = server.create_app
    if getattr(create_app, "tomopipe_reused", False):
        return
    made: dict = {}  # (id of the settings, ephemeral, webserver_only) -> (settings, app)

    @functools.wraps(create_app)
    def reused(settings=None, ephemeral=False, webserver_only=False, final=False,
               ignore_cache=False):
        if settings is not None or ignore_cache:
            return create_app(settings, ephemeral, webserver_only, final, ignore_cache)
        current = prefect.settings.get_current_settings()
        key = (id(current), ephemeral, webserver_only)
        if key not in made or made[key][0] is not current:  # kept, so its id is not reused
            made[key] = (current, create_app(current, ephemeral, webserver_only, final))
        return made[key][1]

    reused.tomopipe_reused = True
    server.create_app = reused


def uses_sqlite(url: str | None) -> bool:
    """Whether the server's database (PREFECT_API_DATABASE_CONNECTION_URL) is SQLite."""
    return not url or url.startswith("sqlite")


def main(argv: list[str]) -> int:
    import os

    if uses_sqlite(os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")):
        immediate_sqlite_transactions()  # PostgreSQL: Prefect untouched
    reuse_current_app()
    from prefect.cli import app

    sys.argv = ["prefect", *argv]
    return app()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
