"""The worker's books for crash recovery (deployments/crash_recovery.py), on their own: which
launch records belong to runs whose processes are gone, and which crashed runs are re-run.
The end-to-end case (a real worker SIGKILLed) is tests/faults/test_worker_killed.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace
from uuid import uuid4

from tomopipe.deployments import crash_recovery as cr
from tomopipe.infra.zygote_client import start_ticks


def _record(home, run_id, processes):
    folder = cr.records_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run_id}.json").write_text(json.dumps({"flow_run_id": run_id,
                                                       "processes": processes}))


def test_a_record_is_dead_only_when_every_process_it_names_is_gone(tmp_path):
    me = os.getpid()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone = int(ended.stdout)
    _record(tmp_path, "alive", [[gone, 1], [me, start_ticks(me)]])  # the engine still runs
    _record(tmp_path, "dead", [[gone, 1], [gone, 2]])
    _record(tmp_path, "reused", [[me, start_ticks(me) + 1]])  # same pid, another process
    (cr.records_dir(tmp_path) / "garbage.json").write_text("{not json")
    dead = sorted(run_id for _, run_id in cr.dead_records(tmp_path))
    assert dead == ["dead", "reused"]


def test_crashed_runs_are_rerun_once_and_only_from_a_deployment():
    def run(tags=(), deployment=True):
        return SimpleNamespace(id=uuid4(), tags=list(tags),
                               deployment_id=uuid4() if deployment else None)

    assert cr.may_rerun(run())
    assert not cr.may_rerun(run(tags=[cr.RERUN_TAG]))  # a re-run that crashed in turn
    assert not cr.may_rerun(run(deployment=False))  # nothing to submit again


def test_the_crash_is_recorded_with_a_reason_a_person_can_read(tmp_path):
    from tomopipe.tasks import results_table

    for said, expect in (("Execution was aborted by Python system exit call.",
                          "its process ended before the run finished (Execution was aborted"),
                         ("the flow run's process died (its worker was killed, or it was)",
                          "the flow run's process died")):
        uid = str(uuid4())
        flow_run = SimpleNamespace(id=uuid4(), tags=[], deployment_id=uuid4(),
                                   parameters={"uid": uid},
                                   state=SimpleNamespace(message=said))
        cr.record_crash(tmp_path, flow_run)
        row = results_table.read_one(tmp_path, uid)
        assert row["state"] == "crashed" and expect in row["message"], row
        assert row["message"].endswith("submitted again")


def test_runs_claimed_before_this_worker_and_never_started_are_scheduled_again(tmp_path):
    """A stand-in for Prefect's client (the real one is exercised by the fault cases): only the
    Pending runs claimed before the worker started, with no launch record, go back."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC)
    old, new, started = (SimpleNamespace(id=uuid4(), name=n, state=SimpleNamespace(
        timestamp=start + timedelta(seconds=dt))) for n, dt in
        (("old", -60), ("new", 5), ("started", -60)))
    _record(tmp_path, str(started.id), [[os.getpid(), start_ticks(os.getpid())]])

    class Client:
        def __init__(self):
            self.set = []

        async def read_flow_runs(self, **_):
            return [old, new, started]

        async def set_flow_run_state(self, run_id, state, force=False):
            self.set.append((run_id, state.type.value, force))

    client = Client()
    done = asyncio.run(cr.reschedule_unstarted(client, tmp_path, "tomopipe", start))
    assert done == [str(old.id)] and client.set == [(old.id, "SCHEDULED", True)]
