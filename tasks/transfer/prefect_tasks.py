"""Thin Prefect tasks over staging and transfer, for the flows to call.

Typical use in a flow, from a ScanSpec (what the flows hold)::

    spec = move_scan_data(spec, data_roots=settings.data_roots)  # no-op without a destination
    # reconstruct from the returned spec at once: it reads the checksum-verified copies

or from a run's documents::

    manifest = stage_run(docs, settings.data_roots)          # waits for the run to finish writing
    report = move_run_data(manifest)                         # queues on the transfer limits
    # reconstruct from report.destination as soon as this returns: every file is verified
    ...
    move_results_back(volume_dir, run_uid=manifest.run_uid)  # optional

Only small things (paths, manifests, reports) cross these tasks; file bytes never do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task
from tomopipe.tasks.sources.spec import ScanSpec
from tomopipe.tasks.staging.manifest import Manifest, manifest_from_documents
from tomopipe.tasks.staging.scan import manifest_for_spec, relocate_spec
from tomopipe.tasks.transfer.backpressure import ensure_transfer_limits, transfer_slot
from tomopipe.tasks.transfer.base import TransferError, TransferReport
from tomopipe.tasks.transfer.ledger import ledger_dir
from tomopipe.tasks.transfer.movers import (
    manifest_algorithm,
    move_results,
    move_run,
    run_destination,
)
from tomopipe.tasks.transfer.sites import TransferConfig, load_transfer_config


def _config(cfg: TransferConfig | None) -> TransferConfig:
    if cfg is not None:
        return cfg
    from tomopipe.config import load_settings

    return load_transfer_config(load_settings())


def _ledger(ledger: str | None) -> Path:
    if ledger is not None:
        return Path(ledger)
    from tomopipe.config import load_settings

    return ledger_dir(load_settings().home)


@task(name="stage-run", retries=0)
def stage_run(docs: list, data_roots: list, run_uid: str | None = None,
              wait_s: float = 600.0, interval_s: float = 2.0) -> Manifest:
    """The run's files (resolved under the data roots) with sizes and checksums.

    Restages every ``interval_s`` while a file is still being written (SWMR flags, changing
    size), for at most ``wait_s``; then returns the manifest (``complete`` says which). When
    ``docs`` hold no stop document the manifest is returned at once, not complete: fetch the
    documents again after the run stops.
    """
    import time

    deadline = time.monotonic() + wait_s
    while True:
        manifest = manifest_from_documents(docs, data_roots, run_uid=run_uid)
        if manifest.complete or not manifest.run_stopped or time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    get_run_logger().info("staged run %s: %d files, %d bytes, complete=%s", manifest.run_uid,
                          len(manifest.entries), manifest.total_bytes, manifest.complete)
    return manifest


@task(name="move-run-data", retries=1, retry_delay_seconds=30)
def move_run_data(manifest: Manifest, cfg: TransferConfig | None = None,
                  dest: str | None = None, queue_timeout_s: float | None = None,
                  ledger: str | None = None) -> TransferReport:
    """Move a staged run under the transfer limits; raises TransferError unless complete.

    A complete transfer is recorded in the ledger (default ``$TOMOPIPE_HOME/transfers``) so
    that retention can later delete the raw files it verified.
    """
    cfg = _config(cfg)
    logger = get_run_logger()
    ensure_transfer_limits(cfg.transfer)
    with transfer_slot(manifest.total_bytes, cfg.transfer, timeout_s=queue_timeout_s):
        report = move_run(manifest, cfg, dest=dest, ledger=_ledger(ledger))
    logger.info(report.summary())
    if not report.complete:
        raise TransferError(report.summary(), report)
    return report


@task(name="move-results-back", retries=1, retry_delay_seconds=30)
def move_results_back(volume_dir: str, run_uid: str, cfg: TransferConfig | None = None,
                      site: str | None = None, dest: str | None = None) -> TransferReport:
    """Move a published volume to the beamline site (or a user's site), verified."""
    cfg = _config(cfg)
    ensure_transfer_limits(cfg.transfer)
    size = sum(p.stat().st_size for p in Path(volume_dir).rglob("*") if p.is_file())
    with transfer_slot(size, cfg.transfer):
        report = move_results(volume_dir, cfg, run_uid=run_uid, site=site, dest=dest)
    get_run_logger().info(report.summary())
    if not report.complete:
        raise TransferError(report.summary(), report)
    return report


@task(name="move-scan-data", retries=1, retry_delay_seconds=30)
def move_scan_data(spec: ScanSpec, data_roots: list | None = None,
                   cfg: TransferConfig | None = None, ledger: str | None = None,
                   manifest_path: str | None = None) -> ScanSpec:
    """Stage and move the files a scan reads; the spec that reads the verified copies.

    With no ``transfer.destination`` configured the spec is returned as it is (read in place).
    ``data_roots``: resolve every path under them first (a scan from a run's documents).
    ``manifest_path``: also save the manifest there (next to the volume's provenance).
    """
    cfg = _config(cfg)
    manifest = manifest_for_spec(spec, data_roots, algorithm=manifest_algorithm(cfg))
    if manifest_path:
        manifest.save(manifest_path)
    dest = run_destination(cfg, manifest.run_uid)
    if dest is None:
        return _with_manifest(spec, manifest)
    ensure_transfer_limits(cfg.transfer)
    with transfer_slot(manifest.total_bytes, cfg.transfer):
        report = move_run(manifest, cfg, dest=dest, ledger=_ledger(ledger))
    get_run_logger().info(report.summary())
    if not report.complete:
        raise TransferError(report.summary(), report)
    summary = {"mover": report.mover, "task_id": report.task_id,
               "destination": report.destination, "files": len(report.files),
               "bytes_moved": report.bytes_moved}
    return _with_manifest(relocate_spec(spec, manifest, dest, transfer=summary), manifest)


def _with_manifest(spec: ScanSpec, manifest: Manifest) -> ScanSpec:
    """The spec carrying its manifest, which the engine keeps in the volume's provenance."""
    return dataclasses.replace(spec, extra={**spec.extra, "manifest": manifest.to_dict()})
