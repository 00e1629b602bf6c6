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
"""

from __future__ import annotations

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


def uses_sqlite(url: str | None) -> bool:
    """Whether the server's database (PREFECT_API_DATABASE_CONNECTION_URL) is SQLite."""
    return not url or url.startswith("sqlite")


def main(argv: list[str]) -> int:
    import os

    if uses_sqlite(os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")):
        immediate_sqlite_transactions()  # PostgreSQL: Prefect untouched
    from prefect.cli import app

    sys.argv = ["prefect", *argv]
    return app()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
