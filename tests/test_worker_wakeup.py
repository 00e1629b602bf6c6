"""What makes a triggered run start promptly without fast polling: the worker's wake-up on
scheduled-run events (infra/wakeup.py), SQLite transactions that wait rather than fail
(infra/prefect_server.py), and deployments that load their flow without a pull step.

The wake-up's loop is tested here against a stand-in worker and event stream (its contract:
one poll per event, waiting for the worker's first sync, reconnecting after a lost stream); the
real worker and server are exercised by the services tests and by test_flows.py, which checks
in the worker's log that a live run was started by the wake-up.
"""

from __future__ import annotations

import contextlib
import sqlite3
import types
import uuid

import anyio
from tomopipe.infra import prefect_server, wakeup


class FakeWorker:
    def __init__(self):
        self.is_setup = False
        self._work_pool = None
        self.polls = 0

    async def get_and_submit_flow_runs(self):
        self.polls += 1


def fake_stream(batches, filters):
    """A subscriber: each connection yields the next batch of events, then the stream drops."""
    batches = list(batches)

    @contextlib.asynccontextmanager
    async def subscribe(event_filter):
        filters.append(event_filter)
        if not batches:
            await anyio.sleep_forever()
        batch = batches.pop(0)

        async def events():
            for name in batch:
                yield types.SimpleNamespace(event=name, resource=types.SimpleNamespace(id="x"))
            raise ConnectionError("stream closed")

        yield events()

    return subscribe


def test_wakes_once_per_event_after_setup_and_reconnects(monkeypatch):
    monkeypatch.setattr(wakeup, "RETRY_S", 0.01)
    worker, filters = FakeWorker(), []
    pool_id = uuid.uuid4()
    subscriber = fake_stream([["prefect.flow-run.Scheduled"] * 2,
                              ["prefect.flow-run.AwaitingRetry"]], filters)

    async def scenario():
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: wakeup.wake_on_scheduled(worker, subscriber=subscriber))
            await anyio.sleep(0.3)
            assert filters == [] and worker.polls == 0  # no pool yet: nothing to listen for
            worker._work_pool = types.SimpleNamespace(id=pool_id, name="tomopipe")
            worker.is_setup = True
            with anyio.fail_after(10):
                while worker.polls < 3 or len(filters) < 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(scenario)
    assert worker.polls == 3  # two events on the first connection, one after reconnecting
    assert len(filters) == 3
    f = filters[0]
    assert f.event.name == list(wakeup.WAKE_EVENTS)
    assert f.any_resource.id == [f"prefect.work-pool.{pool_id}"]


def test_immediate_sqlite_transactions_take_the_write_lock_up_front(tmp_path, monkeypatch):
    """Prefect's own deferred transactions let a second writer fail at once; the embedded
    server's transactions hold the write lock from BEGIN, so a second writer waits."""
    from prefect.server.database.configurations import AioSqliteConfiguration
    from sqlalchemy import text

    # restored after the test: the patch is for the server process only
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction",
                        AioSqliteConfiguration.begin_transaction)
    path = tmp_path / "prefect.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")

    def other_writer_is_locked_out() -> bool:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return True
        finally:
            other.close()

    async def locked_while_reading() -> bool:
        engine = await config.engine()
        try:
            session = await config.session(engine)
            async with session:
                async with config.begin_transaction(session):
                    await session.execute(text("SELECT count(*) FROM t"))  # a read only
                    return other_writer_is_locked_out()
        finally:
            await engine.dispose()

    assert anyio.run(locked_while_reading) is False  # Prefect's default: BEGIN DEFERRED
    prefect_server.immediate_sqlite_transactions()
    prefect_server.immediate_sqlite_transactions()  # twice is once
    assert anyio.run(locked_while_reading) is True
