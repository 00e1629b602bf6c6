"""Back pressure for transfers: Prefect global concurrency limits on transfers and bytes.

Two limits, created (or updated to the configuration) when absent:

* ``tomopipe-transfers``: how many transfers run at once (each occupies one slot);
* ``tomopipe-transfer-mb``: megabytes in flight (a transfer occupies its manifest's size in MB,
  capped at the whole limit so that one run larger than the limit still runs, alone).

A burst of runs therefore queues on the Prefect server instead of flooding the network or the
destination, and the queue is visible in the UI (Concurrency). Reconstruction does not wait for
the burst: each run's flow calls ``move`` and then reconstructs as soon as *its own* transfer
report is complete (every file checksum-verified); the slots are released when the transfer
ends, so the next run's transfer overlaps this run's reconstruction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

from tomopipe.tasks.transfer.sites import TransferSettings

log = logging.getLogger(__name__)

TRANSFERS_LIMIT = "tomopipe-transfers"
MEGABYTES_LIMIT = "tomopipe-transfer-mb"
MB = 10**6


def megabytes(nbytes: int) -> int:
    return max(1, math.ceil(nbytes / MB))


def ensure_transfer_limits(settings: TransferSettings, *, client=None) -> dict[str, int]:
    """Create (or update) both global concurrency limits from the configuration."""
    from prefect.client.orchestration import get_client

    limits = {TRANSFERS_LIMIT: settings.max_concurrent,
              MEGABYTES_LIMIT: megabytes(settings.max_bytes_in_flight)}
    if client is not None:
        for name, limit in limits.items():
            client.upsert_global_concurrency_limit_by_name(name, limit)
        return limits
    with get_client(sync_client=True) as c:
        for name, limit in limits.items():
            c.upsert_global_concurrency_limit_by_name(name, limit)
    return limits


def slots_for(nbytes: int, settings: TransferSettings) -> int:
    """MB slots a transfer of ``nbytes`` occupies (at most the whole limit)."""
    return min(megabytes(nbytes), megabytes(settings.max_bytes_in_flight))


@contextmanager
def transfer_slot(nbytes: int, settings: TransferSettings, *,
                  timeout_s: float | None = None) -> Iterator[None]:
    """Hold one transfer slot and ``nbytes`` of the bytes-in-flight limit while moving.

    Waits (queues) while the limits are full; ``timeout_s`` bounds the wait (TimeoutError).
    """
    from prefect.concurrency.sync import concurrency

    occupy = slots_for(nbytes, settings)
    if megabytes(nbytes) > occupy:
        log.warning("transfer of %d bytes is larger than transfer.max_bytes_in_flight; it "
                    "occupies the whole limit and runs alone", nbytes)
    # Two acquisitions in a fixed order (counts first): no two transfers can deadlock.
    with concurrency(TRANSFERS_LIMIT, occupy=1, timeout_seconds=timeout_s, strict=True), \
            concurrency(MEGABYTES_LIMIT, occupy=occupy, timeout_seconds=timeout_s, strict=True):
        yield
