"""Retention: delete raw files only when a verified copy exists (real files, real transfers)."""

import os
import time

import pytest
from tomopipe.tasks.staging.manifest import build_manifest
from tomopipe.tasks.transfer.ledger import record_transfer
from tomopipe.tasks.transfer.local import LocalMover
from tomopipe.tasks.transfer.retention import apply_retention
from tomopipe.tasks.transfer.sites import RetentionPolicy

DAY = 86400


@pytest.fixture
def site(tmp_path):
    root, dest, ledger = tmp_path / "raw", tmp_path / "copies", tmp_path / "home" / "transfers"
    files = {}
    for run in ("runA", "runB"):
        (root / run).mkdir(parents=True)
        for name in ("proj.h5", "flat.h5"):
            p = root / run / name
            p.write_bytes(os.urandom(2000))
            files[f"{run}/{name}"] = p
    policy = RetentionPolicy(site="beamline", keep_days=7, roots=(root,))
    return root, dest, ledger, files, policy


def _move(files, root, dest, ledger, uid, **mover_kw):
    manifest = build_manifest(files, run_uid=uid, roots=[root])
    report = LocalMover(**mover_kw).transfer(manifest, dest / uid)
    record_transfer(ledger, manifest, report)
    return manifest, report


def _later(days=30):
    return time.time() + days * DAY


def test_deletes_only_files_with_verified_copies(site):
    root, dest, ledger, files, policy = site
    _move([files["runA/proj.h5"], files["runA/flat.h5"]], root, dest, ledger, "A")
    report = apply_retention(policy, ledger, now=_later())
    deleted = {os.path.relpath(p, root) for p, _ in report.deleted}
    kept = {os.path.relpath(p, root): why for p, why in report.kept}
    assert deleted == {"runA/proj.h5", "runA/flat.h5"}
    assert not files["runA/proj.h5"].exists() and (dest / "A" / "runA" / "proj.h5").exists()
    assert set(kept) == {"runB/proj.h5", "runB/flat.h5"}
    assert all("no complete transfer" in why for why in kept.values())
    assert files["runB/proj.h5"].exists() and report.bytes_freed == 4000
    assert "verified" in report.deleted[0][1]
    assert "| kept |" in report.markdown() and "deleted 2 files" in report.markdown()


def test_young_files_kept_even_with_copies(site):
    root, dest, ledger, files, policy = site
    _move([files["runA/proj.h5"]], root, dest, ledger, "A")
    report = apply_retention(policy, ledger, now=time.time() + 2 * DAY)
    assert report.deleted == [] and files["runA/proj.h5"].exists()
    assert any("younger than 7 days" in why for _, why in report.kept)


def test_missing_or_corrupted_copy_keeps_the_source(site):
    root, dest, ledger, files, policy = site
    _move([files["runA/proj.h5"], files["runA/flat.h5"]], root, dest, ledger, "A")
    (dest / "A" / "runA" / "proj.h5").unlink()
    with open(dest / "A" / "runA" / "flat.h5", "r+b") as fh:  # same size, one byte flipped
        b = fh.read(1)
        fh.seek(0)
        fh.write(bytes([b[0] ^ 1]))
    report = apply_retention(policy, ledger, now=_later())
    kept = {os.path.relpath(p, root): why for p, why in report.kept}
    assert report.deleted == []
    assert "missing" in kept["runA/proj.h5"] and "fails its checksum" in kept["runA/flat.h5"]
    assert files["runA/proj.h5"].exists() and files["runA/flat.h5"].exists()


def test_source_changed_after_copy_or_failed_transfer_kept(site):
    root, dest, ledger, files, policy = site
    _move([files["runA/proj.h5"]], root, dest, ledger, "A")
    files["runA/proj.h5"].write_bytes(os.urandom(2001))  # rewritten after its copy

    def truncate(stage, tmp):
        os.truncate(tmp, 10)

    _, failed = _move([files["runB/proj.h5"]], root, dest, ledger, "B", fault_hook=truncate)
    assert not failed.complete
    report = apply_retention(policy, ledger, now=_later())
    kept = {os.path.relpath(p, root): why for p, why in report.kept}
    assert report.deleted == []
    assert "changed since it was copied" in kept["runA/proj.h5"]
    assert "no complete transfer" in kept["runB/proj.h5"]


def test_hard_linked_copy_counts_and_dry_run_deletes_nothing(site):
    root, dest, ledger, files, policy = site
    _move([files["runA/proj.h5"]], root, dest, ledger, "A", allow_hardlink=True)
    dry = apply_retention(policy, ledger, now=_later(), dry_run=True)
    assert [os.path.relpath(p, root) for p, _ in dry.deleted] == ["runA/proj.h5"]
    assert files["runA/proj.h5"].exists() and "would delete" in dry.markdown()
    real = apply_retention(policy, ledger, now=_later())
    assert not files["runA/proj.h5"].exists()
    assert (dest / "A" / "runA" / "proj.h5").read_bytes()  # the linked copy survives
    assert real.bytes_freed == 2000


def test_symlinks_never_followed(site, tmp_path):
    root, dest, ledger, files, policy = site
    outside = tmp_path / "precious.h5"
    outside.write_bytes(b"keep me")
    os.symlink(outside, root / "runA" / "link.h5")
    report = apply_retention(policy, ledger, now=_later())
    assert outside.exists() and (root / "runA" / "link.h5").is_symlink()
    assert any("symbolic link" in why for _, why in report.kept)


def test_retention_flow_applies_the_policy_of_its_home(site):
    """The flow resolves its home once (the run context) and applies that home's policy; a
    site without a policy is refused by name. Runs on Prefect's test server."""
    import yaml
    from tomopipe.flows.retention import retention_flow

    from tomopipe.errors import ConfigError

    root, dest, ledger, files, _ = site
    home = ledger.parent  # the ledger lives under the home, where the flow looks for it
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump({
        "sites": {"beamline": {"mover": "local", "root": str(root)}},
        "retention": {"beamline": {"keep_days": 0}}}))
    _move([files["runA/proj.h5"]], root, dest, ledger, "A")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        [report] = retention_flow(home=str(home), dry_run=True)
        with pytest.raises(ConfigError, match=r"^retention\.elsewhere: no retention policy"):
            retention_flow(home=str(home), site="elsewhere")
    assert report["site"] == "beamline" and report["dry_run"] is True
    assert [os.path.relpath(p, root) for p, _ in report["deleted"]] == ["runA/proj.h5"]
    assert files["runA/proj.h5"].exists()  # a dry run deletes nothing
