"""Streaming on the live services: live updates per second, frame-on-disk -> in-the-live-views
latency, stop -> published, and the highest frame rate sustained with the lag bounded.

Needs the services of $TOMOPIPE_HOME (``tomopipe up``): the simulated scan goes through the
real bus, bridge, catalog, Prefect deployment and the standing Dask cluster, as a live run does.

    .venv/bin/python benchmarks/bench_streaming.py                       # 256 x 256 x 64, 720
    .venv/bin/python benchmarks/bench_streaming.py --size 512 --rows 128 --fps 25,50,100

Figures:
- ``updates_per_s``: distinct updates of the live group's ``tomopipe_live`` attribute per
  second while the scan ran (after the first one);
- ``latency_p95_s``: for every projection, from the camera's write (the simulator's
  ``on_frame``) to the first time every worker had written live views holding it (the
  workers' progress histories), 95th percentile; ``latency_p95_last_half_s`` over the frames
  of the scan's second half (after the start-up: flow start, first projection,
  blocks started: ``first_live_update_after_start_s``); the views start at a provisional
  centre and start again once the centre is found (the frames cover 180 degrees):
  ``latency_p95_found_center_s`` and ``first_view_found_center_after_start_s`` count only
  views at the centre found;
- ``stop_to_published_s``: the stop document's time to the volume's rename into place (polled
  every 20 ms), and ``stop_to_recorded_s`` to the results record (after preview and artifacts);
- peer: the one-shot engine on the same finished scan on the same standing cluster
  (``at_stop_recon_s``): what a reconstruct-at-stop run would need after the stop, as a ratio;
- ``lag_bounded``: the lag (frames landed minus frames in) stayed under ``fps`` frames (one
  second of frames) over the last half of the scan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def services(home: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tomopipe.cli", "status", "--json"],
                         capture_output=True, text=True, env={**os.environ,
                                                              "TOMOPIPE_HOME": str(home)})
    state = json.loads(out.stdout or "{}")
    if not state.get("running"):
        raise SystemExit(f"no services up for {home}: run `tomopipe up` first")
    return state


def measure(home: Path, state: dict, *, size: int, rows: int, angles: int, fps: float,
            order: str, timeout: float = 900.0) -> dict:
    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks import results_table
    from tomopipe.tasks.recon.params import recon_params
    from tomopipe.tasks.storage.live_views import live_path, read_block_status, read_live_attrs
    from tomopipe.tasks.storage.location import volume_location
    from tomopipe.tasks.storage.omezarr import is_complete, read_provenance

    from tomopipe.config import load_settings
    from tomopipe.context import run_context

    settings = load_settings(home)
    written: dict[int, float] = {}
    marks: dict[str, float | str] = {}

    def on_frame(kind, index, frame):
        if kind == "projection":
            written[index] = time.time()

    def docs(name, doc):
        if name == "start":
            marks["uid"], marks["start"] = doc["uid"], doc["time"]
        elif name == "stop":
            marks["stop"] = doc["time"]

    errors: list[BaseException] = []

    def scan():
        try:
            simulate(settings, size=size, rows=rows, angles=angles, fps=fps, sample="stream-bench",
                     publish_to=state["zmq_in"], serializer=state.get("zmq_serializer", "msgpack"),
                     callbacks=[docs], on_frame=on_frame, angle_order=order, seed=1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    while "uid" not in marks:
        if errors:
            raise errors[0]
        time.sleep(0.01)
    uid = str(marks["uid"])
    ctx = run_context(home)
    out = volume_location(ctx.output_root, uid, recon_params(ctx.settings, None)).path
    live = live_path(out)
    updates: list[tuple[float, dict]] = []
    last = None
    deadline = time.monotonic() + timeout
    while not is_complete(out):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{uid}: no volume at {out} after {timeout} s")
        attrs = read_live_attrs(live) if live.exists() else {}
        if attrs.get("updated") and attrs.get("updated") != last:
            last = attrs["updated"]
            updates.append((time.time(), attrs))
        time.sleep(0.02)
    published = time.time()
    thread.join()
    if errors:
        raise errors[0]
    row = results_table.read_one(home, uid) or {}
    while row.get("state") not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)  # the record follows the preview and the artifacts
        row = results_table.read_one(home, uid) or {}
    stop = float(marks["stop"])
    scan_s = stop - float(marks["start"])
    during = [(t, a) for t, a in updates if a.get("state") == "streaming" and t <= stop]
    if len(during) > 1:
        updates_per_s = (len(during) - 1) / (during[-1][0] - during[0][0])
    else:
        updates_per_s = 0.0
    # frame -> in the live views of every block
    histories = [np.asarray(b.get("history") or [[0, 0, np.nan]], dtype=np.float64)
                 for b in read_block_status(live)]
    final_center = (read_provenance(out).get("center") or {}).get("value") \
        if out.exists() else None
    lat = latencies(written, histories)
    # the same at the centre found: views shown before it (at the provisional centre) left out
    lat_found = latencies(written, [h[h[:, 2] == final_center] for h in histories]) \
        if final_center is not None else np.asarray([])
    later = np.asarray([x for i, x in zip(written, lat, strict=True)
                        if written[i] >= stop - scan_s / 2])  # after the start-up, steady
    lags = [(t, a.get("lag", 0)) for t, a in during]
    half = [lag for t, lag in lags if t >= stop - scan_s / 2]
    streamed = bool(histories) and any(h.shape[0] > 1 for h in histories)
    return {
        "uid": uid, "size": size, "rows": rows, "angles": angles, "order": order,
        "fps_asked": fps, "fps_achieved": round(angles / scan_s, 1) if scan_s > 0 else None,
        "scan_s": round(scan_s, 2), "streamed": streamed,
        "live_updates": len(during), "updates_per_s": round(updates_per_s, 2),
        "latency_p50_s": round(float(np.nanpercentile(lat, 50)), 3) if lat.size else None,
        "latency_p95_s": round(float(np.nanpercentile(lat, 95)), 3) if lat.size else None,
        "latency_p95_last_half_s": (round(float(np.nanpercentile(later, 95)), 3)
                                    if later.size else None),
        "first_live_update_after_start_s": (round(during[0][0] - float(marks["start"]), 2)
                                            if during else None),
        # the workers' views in the live group (napari sees them) come before the flow's
        # first update of its attributes and of the UI when the stream starter began the blocks
        "first_block_views_after_start_s": (first_at(histories, None, float(marks["start"]))
                                            if streamed else None),
        "stream_started_by": (row.get("details") or {}).get("stream_started_by"),
        "stream_began_after_start_s": (row.get("details") or {}).get(
            "stream_began_after_start_s"),
        "latency_p95_found_center_s": (round(float(np.nanpercentile(lat_found, 95)), 3)
                                       if lat_found.size else None),
        "first_view_found_center_after_start_s": (
            first_at(histories, final_center, float(marks["start"]))
            if final_center is not None else None),
        "max_lag": max((lag for _, lag in lags), default=None),
        "lag_last_half_max": max(half, default=None),
        "lag_bounded": bool(half) and max(half) <= max(fps, 1),
        "stop_to_published_s": round(published - stop, 3),
        "stop_to_recorded_s": round(row.get("updated", published) - stop, 3),
        "output": str(out), "state": row.get("state"),
    }


def latencies(written: dict, histories: list) -> np.ndarray:
    """For each frame (index -> time the camera wrote it), the time until every block's live
    views held it (first history entry with more frames in), minus the write."""
    out = []
    for i, t_written in written.items():
        t_in = []
        for h in histories:
            hit = np.nonzero(h[:, 1] > i)[0]
            t_in.append(h[hit[0], 0] if hit.size else np.nan)
        out.append(max(t_in, default=np.nan) - t_written)
    return np.asarray(out)


def first_at(histories: list, center, t0: float) -> float | None:
    """When every block had shown a view at ``center`` (None: at any centre), after ``t0``."""
    firsts = [(h if center is None else h[h[:, 2] == center])[:1, 0] for h in histories]
    if not firsts or any(f.size == 0 for f in firsts):
        return None
    return round(float(max(f[0] for f in firsts)) - t0, 2)


def at_stop_peer(home: Path, state: dict, uid: str) -> float:
    """The one-shot engine on the finished scan, on the same standing cluster (seconds)."""
    import tempfile

    from tomopipe.tasks.catalog import catalog_for, run_documents
    from tomopipe.tasks.recon.engine import reconstruct
    from tomopipe.tasks.recon.params import recon_params
    from tomopipe.tasks.sources.bluesky_run import scan_from_documents

    from tomopipe.context import run_context

    ctx = run_context(home)
    spec = scan_from_documents(run_documents(catalog_for(ctx)[uid]), ctx.data_roots,
                               tomo_plans=ctx.tomo_plans)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        t = time.perf_counter()
        reconstruct(spec, recon_params(ctx.settings, None), Path(tmp) / "peer.zarr",
                    scheduler=state["dask_scheduler"])
        return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--angles", type=int, default=720)
    p.add_argument("--fps", default="100", help="one rate, or several: 25,50,100")
    p.add_argument("--order", default="golden", choices=("sequential", "interlaced", "golden"))
    p.add_argument("--no-peer", action="store_true", help="skip the reconstruct-at-stop peer")
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = p.parse_args(argv)
    home = Path(os.environ.get("TOMOPIPE_HOME") or Path.home() / ".local/share/tomopipe")
    state = services(home)
    results = []
    for fps in (float(f) for f in args.fps.split(",")):
        r = measure(home, state, size=args.size, rows=args.rows, angles=args.angles, fps=fps,
                    order=args.order)
        if not args.no_peer:
            r["at_stop_recon_s"] = round(at_stop_peer(home, state, r["uid"]), 3)
            r["published_vs_at_stop"] = round(r["stop_to_published_s"] / r["at_stop_recon_s"], 3)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(f"\n{'fps asked':>9} {'achieved':>8} {'upd/s':>6} {'lat p95':>8} {'2nd half':>8} "
          f"{'found c':>8} {'max lag':>7} {'bounded':>7} {'stop->pub':>9} {'at-stop peer':>12} "
          f"{'ratio':>6}")
    for r in results:
        print(f"{r['fps_asked']:>9.0f} {r['fps_achieved']:>8} {r['updates_per_s']:>6} "
              f"{r['latency_p95_s']!s:>8} {r['latency_p95_last_half_s']!s:>8} "
              f"{r['latency_p95_found_center_s']!s:>8} {r['max_lag']!s:>7} {r['lag_bounded']!s:>7} "
              f"{r['stop_to_published_s']:>9} {r.get('at_stop_recon_s', '-')!s:>12} "
              f"{r.get('published_vs_at_stop', '-')!s:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
