"""Secrets stay secret: the Tiled API key and the Globus client secret.

With the session's real services (one ``tomopipe up`` home) and a real live run through them:

- the Tiled API key is in no log, no database, no result record, no flow-run parameter, no
  artifact, no Prefect log, no deployment, no process command line (``ps`` shows those to every
  user), not in what ``tomopipe status`` and ``tomopipe runs`` print; the only files holding it
  are services.json and Tiled's config, both mode 0600.

The Globus client secret (Globus's cloud API is mocked with globus_sdk.testing and responses:
it cannot be reached from here) is in no log record at any level, from our code, globus_sdk or
urllib3, and in no error message, when Globus Auth refuses the client.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from test_flows_support import LIVE, _retrying, e2_services, final_run  # noqa: F401

pytestmark = pytest.mark.services


def _files_holding(folder: Path, secret: bytes) -> list[Path]:
    """Every regular file under ``folder`` whose bytes contain ``secret`` (read in blocks with an
    overlap, so a secret across a block boundary is found too)."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        tail = b""
        try:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    if secret in tail + block:
                        found.append(path)
                        break
                    tail = block[-len(secret):]
        except OSError:
            continue  # a socket, a file that vanished meanwhile
    return found


def _api_dump(state: dict, what: str, body: dict | None = None) -> str:
    r = _retrying(lambda: httpx.post(f"{state['prefect_api']}/{what}/filter",
                                     json=body or {"limit": 200}, timeout=30))
    r.raise_for_status()
    return json.dumps(r.json())


@pytest.mark.timeout(900)  # `tomopipe up` and a live run on a busy 2-core machine
def test_tiled_key_only_in_its_two_0600_files_after_a_real_run(e2_services):  # noqa: F811
    from tomopipe.infra.simulator.run import simulate

    from tomopipe.cli import main as cli
    from tomopipe.config import load_settings

    home, state = e2_services
    key = state["tiled_api_key"]
    assert key and len(key) >= 32

    uid = simulate(load_settings(home), size=32, rows=8, angles=45, fps=None,
                   sample="secrets-test", publish_to=state["zmq_in"])
    fr = final_run(state, LIVE, uid, 240)
    assert fr["state_type"] == "COMPLETED", fr["state"]["message"]

    # Files: logs, Prefect's database, the results table, the bridge's ledger and journal,
    # Tiled's catalog, the volumes, the previews. The Prefect home is looked at wherever it is.
    places = {Path(home), Path(state["prefect_home"])}
    holders = sorted({p for place in places for p in _files_holding(place, key.encode())})
    expected = {Path(home) / "services.json", Path(home) / "tiled" / "config.yml"}
    assert set(holders) <= expected, f"the Tiled key is also in {set(holders) - expected}"
    assert Path(home) / "services.json" in holders  # the search finds what is there
    for path in holders:
        assert path.stat().st_mode & 0o777 == 0o600, f"{path} is {oct(path.stat().st_mode)}"

    # The Prefect API: every flow run (parameters, state messages), artifact, log, deployment.
    for what in ("flow_runs", "task_runs", "artifacts", "deployments", "variables"):
        assert key not in _api_dump(state, what), f"the Tiled key is in Prefect's {what}"
    assert key not in _api_dump(state, "logs", {"limit": 200, "sort": "TIMESTAMP_DESC"})

    # Command lines of every process of the home are readable by every user of the machine.
    for pid in (state.get("pids") or {}).values():
        try:
            top = psutil.Process(pid)
            for p in [top, *top.children(recursive=True)]:
                assert key not in " ".join(p.cmdline()), f"the key is on {p.pid}'s command line"
        except psutil.NoSuchProcess:
            continue

    import contextlib
    import io

    # What a person reads: `tomopipe status` and `tomopipe runs` (`status --json` is the
    # machine interface and carries the key by design, like services.json, for scripts that
    # connect to Tiled).
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli(["status"]) == 0
        assert cli(["runs", "--json"]) == 0
    assert state["tiled"] in out.getvalue() + err.getvalue()
    assert key not in out.getvalue() + err.getvalue()


# -- Globus ----------------------------------------------------------------------------------

SECRET = "gl0bus-" + uuid.uuid4().hex


def test_globus_secret_in_no_log_record_nor_error(tmp_path, monkeypatch, caplog):
    import responses
    from tomopipe.tasks.staging.manifest import build_manifest
    from tomopipe.tasks.transfer.globus import GlobusCredentials, GlobusMover, make_transfer_client
    from tomopipe.tasks.transfer.sites import parse_transfer_config

    root = tmp_path / "raw"
    (root / "run1").mkdir(parents=True)
    (root / "run1" / "proj.h5").write_bytes(os.urandom(4096))
    manifest = build_manifest([root / "run1" / "proj.h5"], run_uid="uid-1", roots=[root])
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    cfg = parse_transfer_config(
        {"beamline": {"mover": "globus", "collection": src, "path_map": {str(root): "/raw"}},
         "hpc": {"mover": "globus", "collection": dst, "path_map": {"/scratch": "/s"}}},
        {"source": "beamline", "destination": "hpc", "destination_path": "/scratch/in"}, {})
    monkeypatch.setenv("GLOBUS_CLIENT_ID", "client-9")
    monkeypatch.setenv("GLOBUS_CLIENT_SECRET", SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, every level: globus_sdk, urllib3, ours
    with responses.RequestsMock() as mocked:
        # Globus Auth refuses the client and, carelessly, echoes what it was sent
        mocked.add(responses.POST, "https://auth.globus.org/v2/oauth2/token", status=401,
                   json={"error": "invalid_client",
                         "errors": [{"code": "UNAUTHORIZED", "detail": f"bad {SECRET}"}]})
        creds = GlobusCredentials.from_env()
        text = ""
        try:
            mover = GlobusMover(cfg.sites["beamline"], cfg.sites["hpc"], credentials=creds,
                                retries=0)
            mover._client = make_transfer_client(creds)
            report = mover.transfer(manifest, "/scratch/in/uid-1")
            text = report.to_json() + report.summary() + repr(mover)
        except Exception as exc:
            text = f"{exc}{exc!r}{exc.__cause__}{exc.__context__}"
    assert "client-9" in text and "401" in text  # the refusal is reported, by client id
    assert SECRET not in text
    records = [r.getMessage() + str(r.args) + str(r.exc_text or "") for r in caplog.records]
    assert records, "no log records at all: the capture is not working"
    leaked = [r for r in records if SECRET in r]
    assert not leaked, leaked[:3]
