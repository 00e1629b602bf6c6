"""Back pressure, the Prefect transfer tasks and the retention flow against a real (temporary)
Prefect API (prefect_test_harness, one for this module: it takes about 10 s to start)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _settings(**kw):
    from tomopipe.tasks.transfer.sites import parse_transfer_config

    return parse_transfer_config({"a": {}}, kw, {}).transfer


def test_limits_created_from_config(prefect_api):
    from prefect.client.orchestration import get_client
    from tomopipe.tasks.transfer.backpressure import (
        MEGABYTES_LIMIT,
        TRANSFERS_LIMIT,
        ensure_transfer_limits,
    )

    ensure_transfer_limits(_settings(max_concurrent=3, max_bytes_in_flight="2.5GB"))
    ensure_transfer_limits(_settings(max_concurrent=4, max_bytes_in_flight="2.5GB"))  # updates
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(TRANSFERS_LIMIT).limit == 4
        assert client.read_global_concurrency_limit_by_name(MEGABYTES_LIMIT).limit == 2500


def _burst(settings, sizes, hold_s=0.6, meet=None):
    """Run transfers of ``sizes`` bytes at once; return (start, end) of each held slot.

    ``meet``: a barrier every holder waits at while holding its slot (they must overlap).
    """
    from tomopipe.tasks.transfer.backpressure import ensure_transfer_limits, transfer_slot

    ensure_transfer_limits(settings)
    spans, errors = [], []

    def one(nbytes):
        try:
            with transfer_slot(nbytes, settings, timeout_s=60):
                t0 = time.monotonic()
                if meet is not None:
                    meet.wait(timeout=60)
                time.sleep(hold_s)
                spans.append((t0, time.monotonic()))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sorted(spans)


def _max_overlap(spans):
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_burst_queues_on_transfer_count(prefect_api):
    spans = _burst(_settings(max_concurrent=1, max_bytes_in_flight="10GB"), [10**6] * 2)
    assert len(spans) == 2 and _max_overlap(spans) == 1


def test_burst_queues_on_bytes_in_flight(prefect_api):
    # three slots allowed, but only 3 MB in flight: two 2 MB transfers cannot overlap,
    # while a 1 MB one can run beside either of them
    spans = _burst(_settings(max_concurrent=3, max_bytes_in_flight="3MB"), [2 * 10**6] * 2)
    assert _max_overlap(spans) == 1
    both_inside = threading.Barrier(2)  # passes only if both hold their slots at once
    spans = _burst(_settings(max_concurrent=3, max_bytes_in_flight="3MB"), [2 * 10**6, 10**6],
                   meet=both_inside)
    assert len(spans) == 2 and _max_overlap(spans) == 2


def test_flow_moves_run_then_retention_flow_frees_verified_files(prefect_api, tmp_path,
                                                                 monkeypatch):
    from prefect import flow
    from tomopipe.flows.retention import retention_flow
    from tomopipe.tasks.transfer.prefect_tasks import move_run_data, stage_run
    from tomopipe.tasks.transfer.sites import load_transfer_config

    from tomopipe.config import load_settings

    home, raw = tmp_path / "home", tmp_path / "raw"
    (raw / "run1").mkdir(parents=True)
    (raw / "run1" / "det.h5").write_bytes(os.urandom(50_000))
    (raw / "run1" / "keep.h5").write_bytes(os.urandom(10))  # never transferred
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({
        "data_roots": [str(raw)],
        "sites": {"beamline": {"mover": "local", "root": str(raw)},
                  "compute": {"mover": "local"}},
        "transfer": {"source": "beamline", "destination": "compute",
                     "destination_path": str(tmp_path / "scratch"), "max_concurrent": 1},
        "retention": {"beamline": {"keep_days": 0}}}))
    monkeypatch.setenv("TOMOPIPE_HOME", str(home))
    docs = [("start", {"uid": "uid-9"}),
            ("stream_resource", {"uid": "s", "uri": f"file://{raw}/run1/det.h5",
                                 "parameters": {}}),
            ("stop", {"exit_status": "success"})]

    @flow
    def move_one(docs):
        manifest = stage_run(docs, [str(raw)])
        return manifest, move_run_data(manifest)

    manifest, report = move_one(docs)
    assert report.complete and report.destination == str(tmp_path / "scratch" / "uid-9")
    assert (tmp_path / "scratch" / "uid-9" / "run1" / "det.h5").read_bytes() == \
        (raw / "run1" / "det.h5").read_bytes()
    cfg = load_transfer_config(load_settings())
    assert cfg.retention["beamline"].roots == (raw,)
    (result,) = retention_flow()
    assert [os.path.basename(p) for p, _ in result["deleted"]] == ["det.h5"]
    assert [os.path.basename(p) for p, _ in result["kept"]] == ["keep.h5"]
    assert not (raw / "run1" / "det.h5").exists() and (raw / "run1" / "keep.h5").exists()


def test_stage_run_refuses_escape_in_a_flow(prefect_api, tmp_path):
    from prefect import flow
    from tomopipe.tasks.transfer.prefect_tasks import stage_run

    from tomopipe.errors import PathEscapeError

    (tmp_path / "raw").mkdir()

    @flow
    def stage(docs):
        return stage_run(docs, [str(tmp_path / "raw")])

    with pytest.raises(PathEscapeError, match="uid-x"):
        stage([("start", {"uid": "uid-x"}),
               ("resource", {"root": "/etc", "resource_path": "passwd"})])
    # the plain staging functions stay importable without Prefect
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['prefect'] = None; "
                           "import tasks.staging.manifest"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_move_scan_data_returns_spec_on_verified_copies(prefect_api, tmp_path):
    from prefect import flow
    from tomopipe.tasks.sources.spec import FrameSet, ScanSpec
    from tomopipe.tasks.transfer.prefect_tasks import move_scan_data
    from tomopipe.tasks.transfer.sites import parse_transfer_config

    raw = tmp_path / "raw"
    (raw / "r").mkdir(parents=True)
    (raw / "r" / "scan.h5").write_bytes(os.urandom(3000))
    spec = ScanSpec(label="uid-s", projections=(FrameSet(str(raw / "r" / "scan.h5"), "/d"),),
                    flats=(), darks=(), angles_deg=(0.0,), n_rows=1, n_cols=1, dtype="u2",
                    identity="uid-s")
    cfg = parse_transfer_config({"bl": {"root": str(raw)}, "hpc": {}},
                                {"source": "bl", "destination": "hpc",
                                 "destination_path": str(tmp_path / "scratch")}, {})
    in_place = parse_transfer_config({}, {}, {})

    @flow
    def stage_and_move(spec, cfg):
        return move_scan_data(spec, data_roots=[str(raw)], cfg=cfg,
                              ledger=str(tmp_path / "ledger"),
                              manifest_path=str(tmp_path / "prov" / "manifest.json"))

    moved = stage_and_move(spec, cfg)
    want = tmp_path / "scratch" / "uid-s" / "r" / "scan.h5"
    assert moved.projections[0].path == str(want)
    assert want.read_bytes() == (raw / "r" / "scan.h5").read_bytes()
    assert moved.extra["transfer"]["mover"] == "local"
    assert (tmp_path / "prov" / "manifest.json").exists()
    assert stage_and_move(spec, in_place) == spec  # no destination configured: read in place


def test_globus_credentials_from_prefect_secret_block(prefect_api):
    from prefect.blocks.system import Secret
    from tomopipe.tasks.transfer.globus import GlobusCredentials

    from tomopipe.errors import ConfigError

    secret = "blk-" + os.urandom(8).hex()
    Secret(value={"client_id": "cid-block", "client_secret": secret}).save(
        "tomopipe-globus-test", overwrite=True)
    creds = GlobusCredentials.from_prefect_secret("tomopipe-globus-test")
    assert creds.client_id == "cid-block" and creds.secret() == secret
    assert secret not in repr(creds)
    Secret(value="not a mapping").save("tomopipe-globus-bad", overwrite=True)
    with pytest.raises(ConfigError, match="client_id and client_secret") as info:
        GlobusCredentials.from_prefect_secret("tomopipe-globus-bad")
    with pytest.raises(ConfigError, match="transfer.secret_block"):
        GlobusCredentials.from_prefect_secret("no-such-block")
    assert "not a mapping" not in str(info.value)
