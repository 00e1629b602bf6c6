"""Starting a run's stream, and handing one started at the run's first frame to its live flow.

``start_stream`` decides whether a run can stream on the connected cluster and, when it can,
starts one block per worker (``streaming.StreamRun.begin``). Two callers use it:

- the **stream starter** (``deployments/stream_starter.py``), a standing process on the
  document bus: it starts the blocks as the run's first projection is announced, from the
  bus's own documents, a second or more before the live flow runs (a flow run takes 1.2-1.7 s
  to reach ``Running`` on two cores), and offers the stream;
- the **live flow**, which adopts the offer when its terms (``Terms``: parameters, volume,
  view positions) are its own, else aborts it and starts its own.

Who owns a run's stream is decided under a Dask lock per run, on the standing scheduler:

- ``offer`` (the starter): only when nobody owns the run yet; the stream is published as a
  Dask dataset, which holds the block futures, so they outlive the starter's client;
- ``claim`` (the flow): takes an offer, or marks the run the flow's own so no offer follows;
- ``abandon`` (the starter): aborts an offer no flow took within a grace after the stop (the
  blocks would otherwise hold the workers until their idle timeout);
- ``release`` (the flow): forgets the run once its stream is over.

Plain functions on a ``distributed.Client``: no Prefect here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import NamedTuple

from tomopipe.tasks.recon import streaming
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe.errors import PlanError, ServiceError

STARTER, FLOW = "starter", "flow"  # who owns a run's stream
LOCK_TIMEOUT_S = 60.0  # an abandon holds the lock while the blocks stop (a poll or two)


@dataclasses.dataclass(frozen=True)
class Terms:
    """What a stream was started with, as the live flow would start it."""

    params: ReconParams
    out: str
    positions: dict | None = None  # the live views' planes asked for; None: the middle

    def differ(self, other: Terms) -> str | None:
        """What ``other`` asks for that this stream was not started with, or None."""
        if self.params != other.params:
            changed = sorted(k for k, v in dataclasses.asdict(other.params).items()
                             if dataclasses.asdict(self.params)[k] != v)
            return f"its reconstruction parameters differ ({', '.join(changed)})"
        if str(self.out) != str(other.out):
            return f"its volume differs ({self.out}, not {other.out})"
        if (self.positions or None) != (other.positions or None):
            return f"its live views' planes differ ({self.positions}, not {other.positions})"
        return None


def moved_refusal(moved: bool) -> str | None:
    """Why a run whose data are moved first (``transfer.destination``) does not stream."""
    return ("the data are moved before reconstruction (transfer.destination): reconstructed at "
            "the stop") if moved else None


def start_stream(client, spec: ScanSpec, start: dict, params: ReconParams, out: str | Path, *,
                 positions: dict | None = None, extra_provenance: dict | None = None
                 ) -> tuple[streaming.StreamRun | None, str | None]:
    """(the stream begun, None), or (None, why the run is reconstructed at the stop).

    ``spec``: the run's layout so far (its first projection at least); ``start``: its start
    document (the planned angles, the beamline's axis)."""
    import numpy as np
    from tomopipe.infra import scaling
    from tomopipe.tasks.recon.engine import _budget, resolve_rows
    from tomopipe.tasks.sources.angle_plan import planned_angles_deg

    tomo = start.get("tomo")
    planned = planned_angles_deg(tomo)
    center_given = None if params.center == "auto" else float(params.center)
    # with "auto" the views start at a provisional centre; the blocks start again once found
    center = streaming.provisional_center(spec, tomo) if center_given is None else None
    reason = streaming.stream_refusal(params, spec, planned, center_given
                                      if center is None else center["value"])
    reason = reason or streaming.cluster_refusal(scaling.bounds(client))
    if reason:
        return None, reason
    n_workers, budget = _budget(client, None)
    rows = resolve_rows(spec, params)
    try:
        splan = streaming.plan_stream(
            rows[1] - rows[0], spec.n_cols, n_workers=n_workers, memory_budget=budget,
            raw_itemsize=np.dtype(spec.dtype).itemsize,
            n_flats_darks=sum(len(fs.indices or ()) for fs in spec.flats + spec.darks))
    except PlanError as exc:
        return None, str(exc)
    if center is None:
        center = streaming.early_center(spec, params, planned, 0)  # the given one
    run = streaming.StreamRun.begin(client, spec, params, out, planned_deg=planned,
                                    center=center, stream_plan=splan, positions=positions,
                                    extra_provenance=extra_provenance)
    return run, None


def warm_up(client) -> None:
    """Pay a standing caller's one-off costs of a first start now (0.5 s on two cores: the
    scheduler's first lock and dataset calls, the cluster's bounds, the first Zarr group)."""
    import tempfile

    from tomopipe.infra import scaling
    from tomopipe.tasks.recon.engine import _budget
    from tomopipe.tasks.storage import live_views

    scaling.bounds(client)
    _budget(client, None)
    with _owning(client, "warm-up"):
        owner(client, "warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        shape = (2, 8, 8)
        live_views.create_live_group(Path(tmp) / "warm-up.live.zarr", shape,
                                     live_views.view_positions(shape))


def describe(run: streaming.StreamRun) -> str:
    """One line on how a stream runs: its blocks and its centre."""
    center = run.center
    return (f"{len(run.blocks)} blocks of {run.stream_plan.chunk_plan.slab_rows} rows; centre "
            f"{center['value']:.2f} ({center['method']}"
            + (", until the frames cover the half-turn to find it)" if center.get("provisional")
               else ")"))


# ------------------------------------------------------------------------------ the handover


def _names(uid: str) -> tuple[str, str]:
    return f"tomopipe-stream-owner-{uid}", f"tomopipe-stream-run-{uid}"


@contextlib.contextmanager
def _owning(client, uid: str):
    from distributed import Lock

    lock = Lock(f"tomopipe-stream-{uid}", scheduler_rpc=client.scheduler, loop=client.loop)
    try:
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise ServiceError(f"Dask scheduler {client.scheduler.address}: the stream lock of "
                               f"run {uid} was not free within {LOCK_TIMEOUT_S:.0f} s")
        try:
            yield
        finally:
            lock.release()
    finally:  # its lease refresher would run on the client's loop for ever
        refresher = getattr(lock, "refresh_callback", None)
        if refresher is not None:
            refresher.stop()


def owner(client, uid: str) -> str | None:
    """Who owns run ``uid``'s stream now: STARTER (offered), FLOW, or None."""
    return client.get_dataset(_names(uid)[0], default=None)


def offer(client, uid: str, begin, terms: Terms) -> streaming.StreamRun | None:
    """Start run ``uid``'s stream (``begin()``: a StreamRun, or None when it cannot) and offer
    it to the live flow, unless a flow owns the run already. Returns the stream offered."""
    owner_key, run_key = _names(uid)
    with _owning(client, uid):
        if owner(client, uid) is not None:
            return None
        run = begin()
        if run is None:
            return None
        # the futures apart: a dataset's futures are found (and bound to the client that
        # gets it) in lists and mappings, not inside other objects
        client.publish_dataset({"run": dataclasses.replace(run, futures=[]),
                                "futures": list(run.futures), "terms": terms}, name=run_key)
        client.publish_dataset(STARTER, name=owner_key)
        return run


class Claim(NamedTuple):
    """What the flow's ``claim`` got."""

    run: streaming.StreamRun | None  # the offered stream, adopted
    how: str  # adopted, or why not
    owned: bool  # the run's stream is this flow's now (``release`` it at the end)
    offered: bool  # there was an offer (adopted, or aborted: other terms)


def claim(client, uid: str, terms: Terms, *, mark_own: bool = True) -> Claim:
    """The flow's side: take the starter's offer when it was started on ``terms``; an offer
    started on others is aborted (the flow starts its own). Without an offer, ``mark_own``
    makes the run the flow's own, so the starter offers none later."""
    owner_key, run_key = _names(uid)
    with _owning(client, uid):
        who = owner(client, uid)
        if who != STARTER:
            mine = who is None and mark_own
            if mine:
                client.publish_dataset(FLOW, name=owner_key)
            return Claim(None, "no stream was started at the run's first frame" if who is None
                         else "the run's stream is another flow's", mine, False)
        offered = client.get_dataset(run_key)
        client.publish_dataset(FLOW, name=owner_key, override=True)
    run = dataclasses.replace(offered["run"], futures=offered["futures"])
    why = offered["terms"].differ(terms)
    if why:
        run.abort(f"not the live flow's: {why}")
        return Claim(None, f"aborted the stream started at the run's first frame: {why}", True,
                     True)
    return Claim(run, "adopted the stream started at the run's first frame", True, True)


def abandon(client, uid: str, reason: str) -> bool:
    """The starter's side: abort run ``uid``'s offer if no flow took it. True when aborted."""
    owner_key, run_key = _names(uid)
    with _owning(client, uid):
        if owner(client, uid) != STARTER:
            return False
        offered = client.get_dataset(run_key)
        run = dataclasses.replace(offered["run"], futures=offered["futures"])
        run.abort(reason)  # under the lock: no flow starts on the same volume meanwhile
        for key in (run_key, owner_key):
            with contextlib.suppress(KeyError):
                client.unpublish_dataset(key)
    return True


def release(client, uid: str) -> None:
    """The flow's side, once the stream of a run it owns (``Claim.owned``) is over (published,
    failed or discarded)."""
    for key in _names(uid)[::-1]:
        with contextlib.suppress(KeyError):
            client.unpublish_dataset(key)
