"""Globus mover. Globus's cloud API is MOCKED here (globus_sdk.testing + responses): the
service cannot run on this machine. What is real: the manifest, the files it was built from, the
globus-sdk client and its HTTP requests, which the tests read back and check exactly."""

import hashlib
import json
import os
import uuid
from pathlib import Path

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse, get_last_request, load_response
from tomopipe.tasks.staging.manifest import build_manifest
from tomopipe.tasks.transfer.globus import GlobusCredentials, GlobusMover, make_transfer_client
from tomopipe.tasks.transfer.sites import parse_transfer_config

from tomopipe.errors import ConfigError

SRC_COLL, DST_COLL = str(uuid.uuid4()), str(uuid.uuid4())
SECRET = "s3cr3t-do-not-print-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def mocked_responses():
    responses.start()
    yield
    responses.stop()
    responses.reset()


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "raw"
    (root / "run7").mkdir(parents=True)
    for name, n in (("proj.h5", 4096), ("flat.h5", 100)):
        (root / "run7" / name).write_bytes(os.urandom(n))
    manifest = build_manifest(sorted((root / "run7").iterdir()), run_uid="uid-7", roots=[root])
    cfg = parse_transfer_config(
        {"beamline": {"mover": "globus", "collection": SRC_COLL,
                      "path_map": {str(root): "/bl/raw"}},
         "hpc": {"mover": "globus", "collection": DST_COLL,
                 "path_map": {"/scratch/tomo": "/tomo"}}},
        {"source": "beamline", "destination": "hpc", "destination_path": "/scratch/tomo/in"},
        {})
    return manifest, cfg


def _client():
    return globus_sdk.TransferClient(
        authorizer=globus_sdk.AccessTokenAuthorizer("test-token"),
        retry_config=globus_sdk.transport.RetryConfig(max_retries=0))


def _mover(cfg, **kw):
    kw.setdefault("poll_s", 1)
    sleeps = []
    mover = GlobusMover(cfg.sites["beamline"], cfg.sites["hpc"], client=_client(),
                        backoff_s=0.5, sleep=sleeps.append, **kw)
    return mover, sleeps


def _task(task_id, status, nice="Queued", faults=0, **extra):
    return RegisteredResponse(service="transfer", path=f"/v0.10/task/{task_id}", json={
        "DATA_TYPE": "task", "task_id": task_id, "type": "TRANSFER", "status": status,
        "nice_status": nice, "faults": faults, "files": 2, **extra})


def _submit():
    load_response("transfer.get_submission_id")
    return load_response("transfer.submit_transfer").metadata["task_id"]


def _successful(task_id, paths):
    load_response(RegisteredResponse(
        service="transfer", path=f"/v0.10/task/{task_id}/successful_transfers",
        json={"DATA_TYPE": "successful_transfers", "marker": 0, "next_marker": None,
              "DATA": [{"DATA_TYPE": "successful_transfer", "source_path": s,
                        "destination_path": d} for s, d in paths]}))


def _events(task_id, events):
    load_response(RegisteredResponse(
        service="transfer", path=f"/v0.10/task/{task_id}/event_list",
        json={"DATA_TYPE": "event_list", "limit": 100, "offset": 0, "total": len(events),
              "DATA": [{"DATA_TYPE": "event", "is_error": True, "time": "2026-11-21 08:00:00",
                        **e} for e in events]}))


def _cancel(task_id):
    load_response(RegisteredResponse(
        service="transfer", method="POST", path=f"/v0.10/task/{task_id}/cancel",
        json={"DATA_TYPE": "result", "code": "Canceled", "message": "cancelled"}))


def _requests(method, suffix):
    return [c.request for c in responses.calls
            if c.request.method == method and c.request.url.split("?")[0].endswith(suffix)]


def _check_submitted_body(manifest):
    body = json.loads(_requests("POST", "/v0.10/transfer")[-1].body)
    assert body["DATA_TYPE"] == "transfer"
    assert body["source_endpoint"] == SRC_COLL and body["destination_endpoint"] == DST_COLL
    assert body["verify_checksum"] is True
    assert body["sync_level"] in ("checksum", 3)  # the SDK sends the API's integer form
    assert body["submission_id"] and body["deadline"]
    items = sorted(body["DATA"], key=lambda i: i["source_path"])
    want = sorted(manifest.entries, key=lambda e: e.relpath)
    assert [(i["source_path"], i["destination_path"]) for i in items] == [
        (f"/bl/raw/{e.relpath}", f"/tomo/in/uid-7/{e.relpath}") for e in want]
    # Globus checks SHA-256 (it has no BLAKE3): the source's, whatever the manifest's algorithm
    assert [i["external_checksum"] for i in items] == [
        hashlib.sha256(Path(e.path).read_bytes()).hexdigest() for e in want]
    assert {i["checksum_algorithm"] for i in items} == {"SHA256"}
    assert all(i["DATA_TYPE"] == "transfer_item" for i in items)


def test_success_one_task_per_run_and_exact_request(run):
    manifest, cfg = run
    task_id = _submit()
    load_response(_task(task_id, "SUCCEEDED", "OK"))
    dests = [f"/tomo/in/uid-7/{e.relpath}" for e in manifest.entries]
    _successful(task_id, [(f"/bl/raw/{e.relpath}", d) for e, d in zip(manifest.entries, dests,
                                                                          strict=True)][:1])
    mover, sleeps = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert report.complete, report.summary()
    assert report.task_id == task_id and task_id in report.summary()
    # one listed as transferred (verified by the service), the other skipped as identical
    assert sorted(f.status for f in report.files) == ["unchanged", "verified"]
    assert len(_requests("POST", "/v0.10/transfer")) == 1 and sleeps == []
    _check_submitted_body(manifest)
    assert get_last_request().url.split("?")[0].endswith("/successful_transfers")


def test_transient_failure_then_success_retries_with_backoff(run):
    manifest, cfg = run
    load_response("transfer.get_submission_id")
    responses.add(responses.POST, "https://transfer.api.globus.org/v0.10/transfer", status=503,
                  json={"code": "ServiceUnavailable", "message": "try later"})
    task_id = load_response("transfer.submit_transfer").metadata["task_id"]
    for status in ("ACTIVE", "SUCCEEDED"):  # one poll while active, then done
        load_response(_task(task_id, status))
    _successful(task_id, [])
    mover, sleeps = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert report.complete, report.summary()
    posts = _requests("POST", "/v0.10/transfer")
    assert len(posts) == 2 and sleeps == [0.5]
    # the retry re-sent the same submission id: Globus cannot start a second task
    assert len({json.loads(p.body)["submission_id"] for p in posts}) == 1
    assert len(_requests("GET", "/v0.10/submission_id")) == 1
    _check_submitted_body(manifest)


def test_permission_denied_cancels_with_clear_error(run):
    manifest, cfg = run
    task_id = _submit()
    load_response(_task(task_id, "ACTIVE", "PERMISSION_DENIED", faults=1))
    _events(task_id, [{"code": "PERMISSION_DENIED", "description": "permission denied",
                       "details": "Error (transfer) mkdir /tomo/in: Permission denied"}])
    _cancel(task_id)
    mover, _ = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert not report.complete
    assert "PERMISSION_DENIED" in report.error and "cancelled" in report.error
    assert task_id in report.error and "Permission denied" in report.error
    assert len(_requests("POST", f"/task/{task_id}/cancel")) == 1
    assert all(f.status == "failed" for f in report.files)


def test_submit_refused_is_not_retried(run):
    manifest, cfg = run
    load_response("transfer.get_submission_id")
    load_response("transfer.submit_transfer", case="failure")
    mover, sleeps = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert not report.complete and "HTTP 400" in report.error and report.task_id is None
    assert sleeps == [] and len(_requests("POST", "/v0.10/transfer")) == 1


def test_deadline_passed_cancels(run):
    manifest, cfg = run
    task_id = _submit()
    load_response(_task(task_id, "ACTIVE", "Queued"))
    _cancel(task_id)
    ticks = iter(range(0, 10_000, 5))  # a clock that moves 5 s per look
    mover, _ = _mover(cfg, deadline_s=7)
    mover._clock = lambda: next(ticks)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert not report.complete and "deadline" in report.error and "cancelled" in report.error
    assert len(_requests("POST", f"/task/{task_id}/cancel")) == 1
    # it waited with task_wait (which polls get_task) before giving up
    assert len(_requests("GET", f"/task/{task_id}")) >= 2


def test_checksum_failure_reported_by_service(run):
    manifest, cfg = run
    task_id = _submit()
    load_response(_task(task_id, "ACTIVE", "VERIFY_CHECKSUM", faults=3))
    bad = f"/tomo/in/uid-7/{manifest.entries[0].relpath}"
    _events(task_id, [{"code": "VERIFY_CHECKSUM", "description": "checksum verification failed",
                       "details": f"checksum mismatch on {bad}"}] * 3)
    _cancel(task_id)
    mover, _ = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert not report.complete
    assert "checksum verification failed" in report.error and bad in report.error
    assert [e["code"] for e in report.events] == ["VERIFY_CHECKSUM"] * 3
    assert len(_requests("POST", f"/task/{task_id}/cancel")) == 1


def test_task_failed_reports_fatal_error(run):
    manifest, cfg = run
    task_id = _submit()
    load_response(_task(task_id, "FAILED", "QUOTA_EXCEEDED",
                        fatal_error={"code": "QUOTA_EXCEEDED", "description": "quota"}))
    _events(task_id, [{"code": "QUOTA_EXCEEDED", "description": "quota exceeded"}])
    mover, _ = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert not report.complete and "QUOTA_EXCEEDED" in report.error


def test_secret_never_in_repr_errors_or_reports(run, monkeypatch):
    manifest, cfg = run
    creds = GlobusCredentials("client-123", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(creds)
    monkeypatch.delenv("GLOBUS_CLIENT_ID", raising=False)
    monkeypatch.setenv("GLOBUS_CLIENT_SECRET", SECRET)
    with pytest.raises(ConfigError, match="GLOBUS_CLIENT_ID") as info:
        GlobusCredentials.from_env()
    assert SECRET not in str(info.value)
    # Globus Auth refuses the client: the error names the client, never the secret
    responses.add(responses.POST, "https://auth.globus.org/v2/oauth2/token", status=401,
                  json={"error": "invalid_client", "errors": [{"code": "UNAUTHORIZED",
                        "detail": f"bad secret {SECRET}"}]})
    mover = GlobusMover(cfg.sites["beamline"], cfg.sites["hpc"], credentials=creds, retries=0)
    assert SECRET not in repr(mover)
    try:
        mover._client = make_transfer_client(creds)
        report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
        text = report.to_json() + report.summary()
    except Exception as exc:  # token fetched eagerly: the error itself must be clean
        text = str(exc) + repr(exc) + str(exc.__cause__)
    assert "client-123" in text and "401" in text and "bad secret ***" in text  # scrubbed
    assert SECRET not in text


def test_globus_site_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="sites.hpc.collection"):
        parse_transfer_config({"hpc": {"mover": "globus", "root": "/x"}}, {}, {})
    with pytest.raises(ConfigError, match="sites.hpc.collection: not a Globus collection id"):
        parse_transfer_config({"hpc": {"mover": "globus", "collection": "nope"}}, {}, {})
    with pytest.raises(ConfigError, match="sites.hpc.mover"):
        parse_transfer_config({"hpc": {"mover": "ftp"}}, {}, {})
    with pytest.raises(ConfigError, match="transfer.destination: site 'nowhere'"):
        parse_transfer_config({"a": {}}, {"source": "a", "destination": "nowhere"}, {})
    with pytest.raises(ConfigError, match="transfer.max_bytes_in_flight"):
        parse_transfer_config({"a": {}}, {"max_bytes_in_flight": "lots"}, {})
    with pytest.raises(ConfigError, match="retention.a.keep_days"):
        parse_transfer_config({"a": {"root": "/r"}}, {}, {"a": {}})
    with pytest.raises(ConfigError, match=r"transfer: unknown key\(s\) \['colour'\]"):
        parse_transfer_config({}, {"colour": 1}, {})
    cfg = parse_transfer_config({"hpc": {"mover": "globus", "collection": DST_COLL,
                                         "path_map": {"/a": "/A", "/a/b": "/B"}}}, {}, {})
    assert cfg.sites["hpc"].collection_path("/a/b/c.h5") == "/B/c.h5"  # longest prefix
    assert cfg.sites["hpc"].collection_path("/a/x.h5") == "/A/x.h5"
    with pytest.raises(ConfigError, match="sites.hpc.path_map"):
        cfg.sites["hpc"].collection_path("/elsewhere/x.h5")


def test_mover_chosen_per_site_with_credentials_from_env(run, monkeypatch):
    from tomopipe.tasks.transfer.local import LocalMover
    from tomopipe.tasks.transfer.movers import mover_for

    manifest, cfg = run
    monkeypatch.setenv("GLOBUS_CLIENT_ID", "client-env")
    monkeypatch.setenv("GLOBUS_CLIENT_SECRET", SECRET)
    mover = mover_for(cfg, cfg.sites["beamline"], cfg.sites["hpc"])
    assert isinstance(mover, GlobusMover) and mover._credentials.client_id == "client-env"
    assert SECRET not in repr(mover) and SECRET not in repr(mover.__dict__)
    local = parse_transfer_config({"a": {}, "b": {}}, {"hardlink": True, "workers": 3}, {})
    lm = mover_for(local, local.sites["a"], local.sites["b"])
    assert isinstance(lm, LocalMover) and lm.allow_hardlink and lm.workers == 3
    half = parse_transfer_config({"a": {}, "hpc": {"mover": "globus", "collection": DST_COLL,
                                                   "root": "/x"}}, {}, {})
    with pytest.raises(ConfigError, match="sites.a.collection"):
        mover_for(half, half.sites["a"], half.sites["hpc"])


def test_sha256_manifest_sent_as_is_and_chosen_for_globus_sites(run, tmp_path):
    from tomopipe.tasks.transfer.movers import manifest_algorithm

    _, cfg = run
    assert manifest_algorithm(cfg) == "sha256"  # a Globus site on either side
    local = parse_transfer_config({"a": {}, "b": {}}, {"source": "a", "destination": "b",
                                                       "destination_path": "/d"}, {})
    assert manifest_algorithm(local) == "blake3"
    root = tmp_path / "raw"  # the fixture's files
    files = sorted((root / "run7").iterdir())
    manifest = build_manifest(files, run_uid="uid-7", roots=[root], algorithm="sha256")
    # same size and mtime, other bytes: a SHA-256 manifest is not read again (the service's
    # verification then fails the task); only the manifest's own digest goes out
    st = files[0].stat()
    files[0].write_bytes(os.urandom(st.st_size))
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    task_id = _submit()
    load_response(_task(task_id, "SUCCEEDED", "OK"))
    _successful(task_id, [])
    mover, _ = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    body = json.loads(_requests("POST", "/v0.10/transfer")[-1].body)
    sent = {i["source_path"]: (i["checksum_algorithm"], i["external_checksum"])
            for i in body["DATA"]}
    assert sent == {f"/bl/raw/{e.relpath}": ("SHA256", e.checksum.split(":")[1])
                    for e in manifest.entries}
    assert {f.checksum for f in report.files} == {e.checksum for e in manifest.entries}


def test_blake3_manifest_with_changed_source_sends_nothing(run, tmp_path):
    manifest, cfg = run
    assert manifest.entries[0].checksum.startswith("blake3:")
    with open(manifest.entries[0].path, "ab") as fh:
        fh.write(b"late frame")
    mover, _ = _mover(cfg)
    report = mover.transfer(manifest, "/scratch/tomo/in/uid-7")
    assert not report.complete and "changed since it was staged" in report.error
    assert manifest.entries[0].relpath in report.error
    assert not _requests("POST", "/v0.10/transfer") and not responses.calls
