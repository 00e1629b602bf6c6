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


BOUNDS = {"max_jobs": 4, "min_jobs": 0, "workers_per_job": 2, "throughput": 1e9,
          "backfill_deadline_s": 2.0}


def test_a_scan_is_paced_by_its_acquisition_rate_when_live_else_by_the_backfill_deadline():
    from tomopipe.tasks.recon.resources import provenance_entry, request_for_scan

    rows, angles, cols = SCAN
    live = request_for_scan(BOUNDS, label="run-1", rows=rows, angles=angles, cols=cols,
                            n_slabs=64, frames_per_s=500)
    assert (live.basis, live.workers, live.jobs) == ("live", 4, 2)  # 3 s: 3 workers, 2 jobs
    backfill = request_for_scan(BOUNDS, label="run-1", rows=rows, angles=angles, cols=cols,
                                n_slabs=64)
    assert (backfill.basis, backfill.deadline_s, backfill.workers) == ("deadline", 2.0, 4)
    entry = provenance_entry(live, BOUNDS, frames_per_s=500)
    assert entry["asked"] == {"workers": 4, "jobs": 2}
    assert (entry["cluster"], entry["basis"], entry["frames_per_s"], entry["deadline_s"],
            entry["throughput"], entry["max_jobs"]) == ("adaptive", "live", 500, 3.0, 1e9, 4)
    # a cluster that takes no request (local workers, a scheduler someone else runs)
    assert provenance_entry(None, None, workers=3) == {"cluster": "fixed", "workers": 3}


def test_a_refused_scan_is_named_in_one_line():
    from tomopipe.tasks.recon.resources import request_for_scan

    with pytest.raises(ResourceRefused) as refused:
        request_for_scan(BOUNDS, label="/data/scan.h5", rows=2048, angles=1500, cols=2048,
                         n_slabs=64, frames_per_s=5000)  # 0.3 s: 21 workers, 11 jobs
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("/data/scan.h5: resources: needs 11 jobs"), message
    assert message.endswith("max_jobs is 4")


@pytest.mark.parametrize("key", ["worker_throughput", "backfill_deadline_s"])
def test_request_settings_are_validated_naming_the_key(key):
    from tomopipe.infra.cluster import parse_cluster_config

    from tomopipe.errors import ConfigError

    base = {"kind": "slurm", "cores": 1, "memory": "1GB"}
    assert getattr(parse_cluster_config({**base, key: 250}), key) == 250.0
    assert parse_cluster_config({**base, key: "1e7"}).__getattribute__(key) == 1e7  # YAML text
    for bad in (0, -1, "fast", True, None, float("inf")):
        with pytest.raises(ConfigError, match=rf"cluster\.{key}: expected a positive"):
            parse_cluster_config({**base, key: bad})


def test_a_bluesky_runs_acquisition_rate_comes_from_its_projection_events(tmp_path):
    """What a live run is paced by: projections a second between the first and the last
    projection event (their document times, here set 0.05 s apart: 20 frames a second)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_bluesky_source import Recorder
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    from tomopipe.config import load_settings

    settings = load_settings(tmp_path)
    rec = Recorder()
    simulate(settings, size=16, rows=2, angles=6, fps=None, sample="s", callbacks=[rec],
             n_flats=2, n_darks=1, seed=1)
    stream = scan_from_documents(rec.docs, settings.data_roots).extra["streams"]["projections"]
    ours = {d["uid"] for name, d in rec.docs if name == "descriptor" and d["name"] == stream}
    docs = [(name, {**d, "time": 1000.0 + 0.05 * d["seq_num"]})
            if name == "event" and d["descriptor"] in ours else (name, d)
            for name, d in rec.docs]
    spec = scan_from_documents(docs, settings.data_roots)
    assert spec.extra["frames_per_s"] == pytest.approx(20.0)
    # events that do not say when (all at one time): no rate; the run gets the backfill deadline
    same = [(name, {**d, "time": 1000.0}) if name == "event" and d["descriptor"] in ours
            else (name, d) for name, d in rec.docs]
    assert scan_from_documents(same, settings.data_roots).extra["frames_per_s"] is None


def test_a_cluster_that_takes_no_request_is_recorded_as_fixed(tmp_path):
    """Local workers (and a scheduler someone else runs) are what they are: the provenance says
    so and how many; without Dask (in-process slabs) there is nothing to record."""
    from distributed import Client, LocalCluster
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
    from tomopipe.tasks.recon.engine import reconstruct
    from tomopipe.tasks.recon.params import ReconParams
    from tomopipe.tasks.sources import open_scan
    from tomopipe.tasks.storage.omezarr import read_provenance

    s = make_phantom_scan(32, 4, 30, center=16.0, n_flats=2, n_darks=2)
    spec = open_scan(write_dxchange(tmp_path / "scan.h5", s["projections"], s["flats"],
                                    s["darks"], s["angles_deg"]))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        reconstruct(spec, ReconParams(center=16.0), tmp_path / "a.zarr", client=client,
                    frames_per_s=1000.0)
    assert read_provenance(tmp_path / "a.zarr")["resources"] == {"cluster": "fixed",
                                                                 "workers": 2}
    reconstruct(spec, ReconParams(center=16.0), tmp_path / "b.zarr", workers=0)
    assert read_provenance(tmp_path / "b.zarr")["resources"] is None
