"""Retention flow: apply each site's declarative retention policy on a schedule.

The rules (plain code in ``tasks.transfer.retention``): a raw file older than the site's
``keep_days`` is deleted only when the transfer ledger records a complete transfer of it, it has
not changed since, and its copy is verified now (local: checksum read again; Globus: checksum
verified by the service in the recorded task). Everything else is kept, with the reason.

``tomopipe up`` registers it to run daily at 03:00 (``prefect.yaml``); without the services,
``python -m tomopipe.flows.retention`` serves it on the same schedule. Each run leaves a Markdown
artifact per site listing what it deleted and what it kept and why.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from tomopipe.tasks.transfer.ledger import ledger_dir
from tomopipe.tasks.transfer.retention import RetentionReport, apply_retention
from tomopipe.tasks.transfer.sites import load_transfer_config

from tomopipe.errors import ConfigError

__all__ = ["RetentionReport", "apply_retention", "retention_flow"]


@flow(name="retention", log_prints=False)
def retention_flow(site: str | None = None, dry_run: bool = False,
                   home: str | None = None) -> list[dict]:
    """Apply every configured retention policy (or one site's) and report what it did."""
    from prefect.artifacts import create_markdown_artifact
    from tomopipe.flows.pipeline import flow_context

    logger = get_run_logger()
    settings = flow_context(home).settings
    cfg = load_transfer_config(settings)
    if site is not None and site not in cfg.retention:
        raise ConfigError(f"retention.{site}: no retention policy for this site "
                          f"(policies: {sorted(cfg.retention)})")
    policies = [cfg.retention[site]] if site else list(cfg.retention.values())
    results = []
    for policy in policies:
        report = apply_retention(policy, ledger_dir(settings.home), dry_run=dry_run)
        logger.info("retention %s: %d deleted (%d bytes), %d kept", policy.site,
                    len(report.deleted), report.bytes_freed, len(report.kept))
        create_markdown_artifact(report.markdown(), key=f"retention-{policy.site}".lower()
                                 .replace("_", "-"), description="files deleted and kept")
        results.append(report.to_dict())
    return results


if __name__ == "__main__":
    retention_flow.serve(name="retention-daily", cron="0 3 * * *")
