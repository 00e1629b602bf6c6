"""The flows against the real embedded services: a live scan reconstructed from its events, an
aborted scan, `tomopipe runs`, and a catalog backfill run twice.

Scans are small (32 px, 8 rows, 45 angles) and the flows reconstruct in-process (workers=0).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_flows_support import (  # noqa: F401  (e2_services is a fixture)
    LIVE,
    artifacts_of,
    e2_services,
    final_run,
    phantom_reference,
    publish,
    wait_for,
)
from tomopipe.tasks import results_table
from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

from tomopipe.cli import main as cli

SIZE, ROWS, ANGLES = 32, 8, 45
# The first test of a session also waits for `tomopipe up` (the services fixture): minutes on a
# busy 2-core machine.
pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]


def _simulate(home, state, **kw):
    from tomopipe.infra.simulator.run import simulate

    from tomopipe.config import load_settings

    return simulate(load_settings(home), size=SIZE, rows=ROWS, angles=ANGLES, fps=None,
                    sample=kw.pop("sample", "flows-test"), publish_to=state["zmq_in"], **kw)


def _appender(docs: list):
    return lambda name, doc: docs.append((name, doc))


def _cli_json(*argv) -> object:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli(list(argv))
    assert code in (0, 1), out.getvalue()
    return json.loads(out.getvalue())


def test_live_scan_is_reconstructed(e2_services):  # noqa: F811
    home, state = e2_services
    uid = _simulate(home, state)
    fr = final_run(state, LIVE, uid, 240)
    assert fr["state_type"] == "COMPLETED", fr["state"]["message"]

    row = results_table.read_one(home, uid)
    out = Path(row["output"])
    assert row["state"] == "completed" and is_complete(out)
    assert read_provenance(out)["key"] == row["key"]
    volume = zarr.open_array(str(out / "0"), mode="r")[:]
    reference = phantom_reference(SIZE, ROWS)
    assert volume.shape == reference.shape
    # inside the reconstruction circle the volume follows the phantom
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    inside = (yy**2 + xx**2) < (0.4 * SIZE) ** 2
    corr = np.corrcoef(volume[:, inside].ravel(), reference[:, inside].ravel())[0, 1]
    assert corr > 0.8, corr
    assert Path(row["details"]["preview"]).stat().st_size > 100

    from tomopipe.tasks import catalog as runs

    mirrored = dict(runs.catalog_for_home(home)[uid].metadata)["tomopipe"]  # linked to the run
    assert mirrored["state"] == "completed" and mirrored["output"] == str(out)

    kinds = {a["type"] for a in artifacts_of(state, fr["id"])}
    assert {"progress", "table", "image", "markdown"} <= kinds, kinds

    listed = {r["uid"]: r for r in _cli_json("runs", "--json")}
    assert listed[uid]["state"] == "completed" and listed[uid]["output"] == str(out)
    assert listed[uid]["plan_name"] == "tomo_scan"

    # The worker took the run when it was scheduled (infra/wakeup.py), not at its next poll,
    # and the flow was loaded from its module without the deployment's pull step.
    worker_log = (Path(home) / "logs" / "worker.log").read_text()
    assert f"woken by prefect.flow-run.Scheduled prefect.flow-run.{fr['id']}" in worker_log
    assert "deployment pull step" not in worker_log


def test_aborted_scan_fails_with_its_reason(e2_services):  # noqa: F811
    home, state = e2_services
    uid = _simulate(home, state, abort_after=5)
    fr = final_run(state, LIVE, uid, 240)
    assert fr["state_type"] == "FAILED"
    assert "abort" in fr["state"]["message"], fr["state"]["message"]
    row = results_table.read_one(home, uid)
    assert row["state"] == "failed" and row["output"] is None and "abort" in row["message"]
    from tomopipe.config import load_settings

    assert not (load_settings(home).output_root / uid).exists()  # no volume
    listed = {r["uid"]: r for r in _cli_json("runs", "--json")}
    assert listed[uid]["state"] == "failed" and "abort" in listed[uid]["message"]


def test_backfill_then_everything_is_skipped(e2_services):  # noqa: F811
    """Runs written straight to the catalog (no events, so no live flow) get reconstructed by
    a backfill on the standing Dask cluster, two at a time in one process (``--local``: the
    deployments of this session reconstruct in-process); a second backfill, through the
    deployment, finds them all done. Two reconstructions on threads once broke each other: one
    closed the process's default Dask client while the other's catalog read looked for it."""
    home, state = e2_services
    from tomopipe.deployments.catalog_writer import CatalogWriter
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks import catalog as runs

    from tomopipe.config import load_settings

    settings = load_settings(home)
    writer = CatalogWriter(runs.catalog_for_home(home))
    uids = []
    for _ in range(2):
        docs: list = []
        uid = simulate(settings, size=SIZE, rows=ROWS, angles=ANGLES, fps=None,
                       sample="backfill-test", callbacks=[_appender(docs)])
        for name, doc in docs:
            writer.write(name, doc, uid)
        uids.append(uid)

    first = _cli_json("backfill", "--sample", "backfill-test", "--local", "--concurrency", "2",
                      "--json")
    assert first == {"matched": 2, "reconstructed": 2, "skipped": 0, "failed": 0}, first
    for uid in uids:
        row = results_table.read_one(home, uid)
        assert row["state"] == "completed" and is_complete(row["output"])
    again = _cli_json("backfill", "--sample", "backfill-test", "--json")
    assert again == {"matched": 2, "reconstructed": 0, "skipped": 2, "failed": 0}, again


def test_single_run_by_file(e2_services, tmp_path):  # noqa: F811
    """The single-run flow on a Data Exchange file, run in this process against the server."""
    home, state = e2_services
    from tomopipe.flows.single_run import single_run
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange

    scan = make_phantom_scan(SIZE, ROWS, ANGLES, seed=3)
    path = tmp_path / "scan.h5"
    write_dxchange(path, scan["projections"], scan["flats"], scan["darks"], scan["angles_deg"])
    result = single_run(path=str(path), params={"center": float(scan["center"])}, workers=0,
                        home=str(home))
    volume = zarr.open_array(str(Path(result["output"]) / "0"), mode="r")[:]
    corr = np.corrcoef(volume.ravel(), scan["truth"].ravel())[0, 1]
    assert corr > 0.8, corr
    row = results_table.read_one(home, str(path.resolve()))
    assert row["state"] == "completed" and row["output"] == result["output"]
    # bad input ends Failed with a message naming it, not a traceback
    state_ = single_run(path=str(tmp_path / "missing.h5"), workers=0, home=str(home),
                        return_state=True)
    assert state_.is_failed() and "missing.h5" in state_.message


def test_an_unforeseen_fault_is_recorded_not_left_running(e2_services, tmp_path,  # noqa: F811
                                                          monkeypatch):
    """A fault that is not one of ours (here a RuntimeError from the reconstruction) fails the
    flow with its traceback, and the run's record says failed rather than running forever."""
    import tomopipe.flows.pipeline as pipeline
    import tomopipe.flows.single_run as single
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange

    home = tmp_path / "home"
    scan = make_phantom_scan(SIZE, ROWS, ANGLES, seed=5)
    path = tmp_path / "scan.h5"
    write_dxchange(path, scan["projections"], scan["flats"], scan["darks"], scan["angles_deg"])

    def broken(*args, **kwargs):
        raise RuntimeError("a worker vanished")

    monkeypatch.setattr(pipeline, "reconstruct_volume", broken)
    state_ = single.single_run(path=str(path), workers=0, home=str(home), return_state=True)
    assert state_.is_failed()
    row = results_table.read_one(home, str(path.resolve()))
    assert row["state"] == "failed" and "RuntimeError: a worker vanished" in row["message"]


def test_volume_goes_back_to_results_to(e2_services, tmp_path):  # noqa: F811
    """With transfer.results_to set, the published volume is copied there and verified."""
    _, state = e2_services  # the Prefect server; the run itself uses a home of its own
    import hashlib

    import yaml
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange

    home, results = tmp_path / "home", tmp_path / "results"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({
        "sites": {"compute": {"mover": "local", "root": str(home)},
                  "beamline": {"mover": "local", "root": str(results)}},
        "transfer": {"source": "compute", "results_to": "beamline",
                     "results_path": str(results)}}))
    scan = make_phantom_scan(SIZE, ROWS, ANGLES, seed=4)
    path = tmp_path / "scan.h5"
    write_dxchange(path, scan["projections"], scan["flats"], scan["darks"], scan["angles_deg"])
    # In a process of its own: the transfer's concurrency slots go through a Prefect service
    # that stays bound, for the life of a process, to the first API it used, and later test
    # modules of this process use other (test-harness) servers.
    code = ("import json, sys; from tomopipe.flows.single_run import single_run; "
            "print(json.dumps(single_run(path=sys.argv[1], params={'center': float(sys.argv[2])},"
            " workers=0, home=sys.argv[3])))")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(scan["center"]),
                           str(home)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": state["prefect_api"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    out = Path(result["output"])
    assert "results_back_error" not in result
    copy = Path(result["results_back"]) / out.name
    sent = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert sent and sent == sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert all(digest(out / rel) == digest(copy / rel) for rel in sent)


def test_register_all_updates_and_removes_stale(e2_services):  # noqa: F811
    """Registering again keeps one automation per trigger and deletes deployments (and their
    automations) that prefect.yaml no longer defines."""
    import httpx
    from tomopipe.deployments.register import register_all

    from tomopipe.config import load_settings

    home, state = e2_services
    api = state["prefect_api"]
    live = httpx.get(f"{api}/deployments/name/live-run/live", timeout=30).json()
    made = httpx.post(f"{api}/deployments/", timeout=30, json={
        "name": "stale", "flow_id": live["flow_id"], "work_pool_name": "tomopipe",
        "entrypoint": "flows/live.py:live_run"})
    assert made.is_success, made.text
    stale = made.json()
    httpx.post(f"{api}/automations/", timeout=30, json={
        "name": "stale-trigger", "trigger": {"type": "event", "expect": ["never.happens"],
                                             "posture": "Reactive", "threshold": 1},
        "actions": [{"type": "run-deployment", "source": "selected",
                     "deployment_id": stale["id"]}],
        "owner_resource": f"prefect.deployment.{stale['id']}"}).raise_for_status()

    registered = register_all(load_settings(home), state)
    assert "live-run/live" in registered and "backfill/backfill" in registered
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    assert "stale" not in {d["name"] for d in deployments}
    automations = httpx.post(f"{api}/automations/filter", json={}, timeout=30).json()
    names = [a["name"] for a in automations]
    assert "stale-trigger" not in names and names.count("live__automation_1") == 1
    live_auto = next(a for a in automations if a["name"] == "live__automation_1")
    assert live_auto["trigger"]["match"]["bluesky.tomo"] == "true"
    assert live_auto["trigger"]["expect"] == ["bluesky.run.start"]
    live = httpx.get(f"{api}/deployments/name/live-run/live", timeout=30).json()
    variables = live["job_variables"]
    assert variables["env"]["PREFECT__FLOW_ENTRYPOINT"] == "tomopipe.flows.live:live_run"
    assert "working_dir" not in variables  # the flow is imported from the installed package
    # retention runs daily; registering again (`up` did once) does not add a second schedule
    retention = httpx.get(f"{api}/deployments/name/retention/retention", timeout=30).json()
    assert [s["schedule"]["cron"] for s in retention["schedules"]] == ["0 3 * * *"]
    # the other tests' flows reconstruct in-process: keep that after re-registering
    from test_flows_support import _prepare

    _prepare(home, state)


def test_preview_shows_three_middle_slices(tmp_path):
    from PIL import Image
    from tomopipe.tasks.preview import write_preview
    from tomopipe.tasks.storage.omezarr import LevelLayout, create_volume, write_levels

    vol = np.zeros((8, 16, 24), np.float32)
    vol[3:5, 6:10, 10:14] = 1.0  # a bright block through the middle of every axis
    out = tmp_path / "v.zarr"
    create_volume(out, [LevelLayout(vol.shape, (8, 16, 24), (8, 16, 24))], pixel_size_um=None,
                  provenance={})
    write_levels(out, 0, [vol])
    png = write_preview(out, min_px=0)
    assert png == tmp_path / "v.zarr.preview.png"
    image = np.asarray(Image.open(png))
    # (y, x) plane 16 x 24, (z, x) plane 8 x 24, (z, y) plane 8 x 16, 4 px apart
    assert image.shape == (16, 24 + 4 + 24 + 4 + 16)
    assert image[8, 12] == 255 and image[0, 0] == 0  # the block in the z slice
    assert image[4, 28 + 12] == 255 and image[4, 56 + 8] == 255
    assert image[12, 28 + 12] == 0  # below the (z, x) plane: padding


def test_run_referencing_a_file_outside_the_data_roots_fails_naming_it(e2_services, tmp_path):  # noqa: F811
    """A StreamResource pointing outside the data roots is refused before anything is read or
    moved; the live flow fails, and `tomopipe runs --json` shows the path and the roots."""
    import copy
    import shutil
    import uuid

    from tomopipe.infra.simulator.run import simulate

    from tomopipe.config import load_settings

    home, state = e2_services
    docs: list = []
    simulate(load_settings(home), size=SIZE, rows=ROWS, angles=ANGLES, fps=None,
             sample="escape-test", publish_to=None, callbacks=[_appender(docs)])
    # the same run under a new uid, its projections file copied outside every data root
    uid = str(uuid.uuid4())
    outside = tmp_path / "elsewhere" / "cam_projection.h5"
    outside.parent.mkdir()
    rewritten = []
    for name, doc in docs:
        doc = copy.deepcopy(dict(doc))
        if name == "start":
            doc["uid"] = uid
        elif "run_start" in doc:
            doc["run_start"] = uid
        if name == "stream_resource" and doc["uri"].endswith("cam_projection.h5"):
            shutil.copy(doc["uri"].removeprefix("file://"), outside)
            doc["uri"] = outside.as_uri()
        rewritten.append((name, doc))
    publish(state["zmq_in"], rewritten)

    fr = final_run(state, LIVE, uid, 240)
    assert fr["state_type"] == "FAILED"
    message = fr["state"]["message"]
    roots = [str(r) for r in load_settings(home).data_roots]
    assert str(outside) in message and all(r in message for r in roots), message
    listed = {r["uid"]: r for r in _cli_json("runs", "--json")}
    assert listed[uid]["state"] == "failed" and listed[uid]["output"] is None
    assert str(outside) in listed[uid]["message"]
    assert not (load_settings(home).output_root / uid).exists()
