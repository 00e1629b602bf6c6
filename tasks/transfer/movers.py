"""Choose the mover for a pair of sites, move a run's data, move results back.

These are the plain functions the Prefect tasks in ``tasks.transfer.prefect_tasks`` wrap.
"""

from __future__ import annotations

import os
from pathlib import Path

from tomopipe.tasks.staging.checksum import DEFAULT_ALGORITHM
from tomopipe.tasks.staging.manifest import Manifest, build_manifest
from tomopipe.tasks.transfer.base import Mover, TransferReport
from tomopipe.tasks.transfer.globus import GlobusCredentials, GlobusMover
from tomopipe.tasks.transfer.ledger import record_transfer
from tomopipe.tasks.transfer.local import LocalMover
from tomopipe.tasks.transfer.sites import Site, TransferConfig

from tomopipe.errors import ConfigError, InputError


def mover_for(cfg: TransferConfig, source: Site, destination: Site, *,
              credentials: GlobusCredentials | None = None, client=None) -> Mover:
    """Globus when either site says globus (both then need collections), else local."""
    t = cfg.transfer
    if "globus" in (source.mover, destination.mover):
        if credentials is None and client is None:
            credentials = GlobusCredentials.resolve(t.secret_block)
        return GlobusMover(source, destination, client=client, credentials=credentials,
                           deadline_s=t.deadline_s, poll_s=t.poll_s, retries=t.retries)
    return LocalMover(allow_hardlink=t.hardlink, workers=t.workers,
                      verify_from_device=t.verify_from_device)


def manifest_algorithm(cfg: TransferConfig, source: str | None = None,
                       destination: str | None = None) -> str:
    """The checksum to stage with for a move between two sites: "sha256" when Globus moves it
    (the service checks SHA-256, not BLAKE3; staging it once avoids a second read), else
    "blake3" (local copies, about 2.5 x cheaper to hash)."""
    t = cfg.transfer
    names = [n for n in (source or t.source, destination or t.destination) if n]
    if any(cfg.sites.get(n) is not None and cfg.sites[n].mover == "globus" for n in names):
        return "sha256"
    return DEFAULT_ALGORITHM


def run_destination(cfg: TransferConfig, run_uid: str) -> Path | None:
    """Where a run's raw data lands (``<destination_path>/<run uid>``); None: no move."""
    t = cfg.transfer
    if not t.destination:
        return None
    return Path(t.destination_path) / run_uid


def move_run(manifest: Manifest, cfg: TransferConfig, *, dest: str | os.PathLike | None = None,
             mover: Mover | None = None, ledger: str | os.PathLike | None = None
             ) -> TransferReport:
    """Move a staged run to the configured destination site; the report says what verified.

    A complete transfer is recorded in ``ledger`` (``$TOMOPIPE_HOME/transfers``) for retention.
    """
    t = cfg.transfer
    if not t.destination:
        raise ConfigError("transfer.destination: not set, so there is nowhere to move runs")
    dest = Path(dest) if dest is not None else run_destination(cfg, manifest.run_uid)
    if mover is None:
        mover = mover_for(cfg, cfg.site(t.source, "transfer.source"),
                          cfg.site(t.destination, "transfer.destination"))
    report = mover.transfer(manifest, dest)
    if ledger is not None:
        record_transfer(ledger, manifest, report)
    return report


def volume_manifest(volume_dir: str | os.PathLike, *, run_uid: str,
                    algorithm: str = DEFAULT_ALGORITHM) -> Manifest:
    """A manifest of a published volume directory, its name kept in every relpath."""
    volume_dir = Path(volume_dir).resolve()
    if not volume_dir.is_dir():
        raise InputError(str(volume_dir), "published volume directory does not exist")
    files = [p for p in volume_dir.rglob("*") if p.is_file()]
    if not files:
        raise InputError(str(volume_dir), "published volume directory holds no files")
    return build_manifest(files, run_uid=run_uid, roots=[volume_dir.parent], algorithm=algorithm)


def move_results(volume_dir: str | os.PathLike, cfg: TransferConfig, *, run_uid: str,
                 site: str | None = None, dest: str | os.PathLike | None = None,
                 from_site: str | None = None, mover: Mover | None = None) -> TransferReport:
    """Move a published volume directory back to the beamline site (``transfer.results_to``)
    or to another named site (a user's endpoint), under its results path or ``dest``."""
    t = cfg.transfer
    target = site or t.results_to
    if not target:
        raise ConfigError("transfer.results_to: not set and no site given for the results")
    dest_root = dest if dest is not None else t.results_path
    if dest_root is None:
        raise ConfigError("transfer.results_path: not set and no destination path given")
    here = from_site or t.destination or t.source
    manifest = volume_manifest(volume_dir, run_uid=run_uid,
                               algorithm=manifest_algorithm(cfg, here, target))
    if mover is None:
        mover = mover_for(cfg, cfg.site(here, "transfer.destination"),
                          cfg.site(target, "transfer.results_to"))
    return mover.transfer(manifest, Path(dest_root))
