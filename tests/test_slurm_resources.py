"""Resource requests sized from the scan (tasks/recon/resources.py): plain arithmetic."""

from __future__ import annotations

import pytest
from tomopipe.tasks.recon.resources import ResourceRefused, request_workers

from tomopipe.errors import PlanError

# 2048 rows x 1500 angles x 2048 columns; a worker doing 1e9 elements/s needs 6.29 s alone
SCAN = (2048, 1500, 2048)


def test_live_run_keeps_up_with_the_detector():
    # 1500 frames at 500 fps: 3 s of acquisition -> ceil(6.29 / 3) = 3 workers
    req = request_workers(*SCAN, throughput=1e9, frames_per_s=500, max_jobs=8)
    assert (req.workers, req.jobs, req.basis) == (3, 3, "live")
    assert req.deadline_s == pytest.approx(3.0)
    assert req.estimate_s <= req.deadline_s


def test_backfill_deadline_and_whole_jobs():
    # 2 s target -> 4 workers; 4 workers per job -> one job
    req = request_workers(*SCAN, throughput=1e9, deadline_s=2.0, workers_per_job=4, max_jobs=2)
    assert (req.workers, req.jobs, req.basis) == (4, 1, "deadline")
    # 5 workers needed, 4 a job -> 2 jobs bringing 8
    req = request_workers(*SCAN, throughput=1e9, deadline_s=1.3, workers_per_job=4, max_jobs=2)
    assert (req.workers, req.jobs) == (8, 2)


def test_never_more_workers_than_slabs_nor_fewer_than_one():
    assert request_workers(*SCAN, throughput=1e9, deadline_s=0.1, max_jobs=100,
                           n_slabs=6).workers == 6
    assert request_workers(8, 90, 64, throughput=1e9, deadline_s=3600).workers == 1


def test_a_request_that_cannot_be_met_is_refused_naming_the_need_and_the_bound():
    with pytest.raises(ResourceRefused, match=r"needs 7 jobs .* max_jobs is 4"):
        request_workers(*SCAN, throughput=1e9, deadline_s=1.0, max_jobs=4)


@pytest.mark.parametrize("kwargs, match", [
    ({"throughput": 0, "deadline_s": 1}, "throughput must be positive"),
    ({"throughput": 1e9}, "either frames_per_s"),
    ({"throughput": 1e9, "deadline_s": 1, "frames_per_s": 10}, "either frames_per_s"),
    ({"throughput": 1e9, "deadline_s": -1}, "deadline_s must be positive"),
    ({"throughput": 1e9, "frames_per_s": 0}, "frames_per_s must be positive"),
    ({"throughput": 1e9, "deadline_s": 1, "max_jobs": 0}, "max_jobs must be a positive"),
])
def test_bad_inputs_say_which(kwargs, match):
    with pytest.raises(PlanError, match=match):
        request_workers(*SCAN, **kwargs)
