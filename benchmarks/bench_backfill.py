"""Backfill against single runs in a row, on the running services of $TOMOPIPE_HOME.

    .venv/bin/python benchmarks/bench_backfill.py [--runs 6] [--concurrency 2] [--size 256]
                     [--rows 64] [--angles 360] [--up]

Simulated scans are published to the bus (their live flows reconstruct them once), then the
same runs are reconstructed again (``force``) two ways through the registered deployments:

- ``single-run`` once per run, one after the other (each flow run waited for);
- one ``backfill`` flow run over the same runs (matched by their sample name) at
  ``--concurrency``.

Both use the home's standing Dask cluster; the script checks that every slab of every volume
ran in its worker processes (no second cluster). Prints the wall times side by side and their
ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from bench_latency import live_flow_run, on_standing_cluster, services_state

from tomopipe.context import prefect_api_scope


def _run(name: str, parameters: dict, timeout: float):
    from prefect.deployments import run_deployment

    fr = run_deployment(name, parameters=parameters, timeout=timeout)
    if fr.state is None or not fr.state.is_completed():
        raise SystemExit(f"{name} flow run {fr.id} ended {fr.state and fr.state.type.value}: "
                         f"{fr.state and fr.state.message}")
    return fr


def _single_then_backfill(home: Path, uids: list[str], sample: str, args) -> tuple[float, float]:
    """Wall times of the runs reconstructed again one single-run flow after the other, then
    by one backfill flow run."""
    t = time.perf_counter()
    for uid in uids:
        _run("single-run/single-run", {"uid": uid, "force": True, "home": str(home)},
             args.timeout)
    singles_s = time.perf_counter() - t
    t = time.perf_counter()
    _run("backfill/backfill", {"sample": sample, "force": True,
                               "concurrency": args.concurrency, "home": str(home)}, args.timeout)
    return singles_s, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="detector columns")
    ap.add_argument("--rows", type=int, default=64, help="detector rows")
    ap.add_argument("--angles", type=int, default=360)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--up", action="store_true", help="start the services of the home first")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    from tomopipe.infra.simulator.run import simulate
    from tomopipe.tasks import results_table

    from tomopipe.config import home as default_home
    from tomopipe.config import load_settings

    home = default_home()
    state = services_state(home, up=args.up)
    settings = load_settings(home)

    sample = f"backfill-bench-{uuid.uuid4().hex[:6]}"
    uids = []
    for _ in range(args.runs):
        uids.append(simulate(settings, size=args.size, rows=args.rows, angles=args.angles,
                             fps=None, sample=sample, publish_to=state["zmq_in"],
                             serializer=state.get("zmq_serializer", "msgpack")))
    for uid in uids:  # the live flows reconstruct each once; wait for all of them
        live_flow_run(state["prefect_api"], uid, args.timeout)
    print(f"{len(uids)} runs of {args.size} x {args.size} x {args.rows} rows x {args.angles} "
          f"angles published and reconstructed live (sample {sample})", flush=True)

    with prefect_api_scope(state["prefect_api"]):
        singles_s, backfill_s = _single_then_backfill(home, uids, sample, args)
    single_ok = all(on_standing_cluster(state, results_table.read_one(home, u)["output"])
                    for u in uids)
    rows = [results_table.read_one(home, u) for u in uids]
    backfill_ok = all(r["state"] == "completed" and on_standing_cluster(state, r["output"])
                      for r in rows)

    figures = {"runs": args.runs, "concurrency": args.concurrency,
               "dataset": {"size": args.size, "rows": args.rows, "angles": args.angles},
               "single_runs_in_a_row_s": singles_s, "backfill_s": backfill_s,
               "speedup": singles_s / backfill_s,
               "all_slabs_on_standing_cluster": single_ok and backfill_ok,
               "load_average_1min": os.getloadavg()[0]}
    print(f"{'':<40} {'wall s':>8} {'per run s':>9} {'ratio':>6}")
    print(f"{f'{args.runs} single-run flows in a row':<40} {singles_s:>8.1f} "
          f"{singles_s / args.runs:>9.2f} {1.0:>6.2f}")
    label = f"backfill of {args.runs}, concurrency {args.concurrency}"
    print(f"{label:<40} {backfill_s:>8.1f} {backfill_s / args.runs:>9.2f} "
          f"{singles_s / backfill_s:>6.2f}")
    ok = figures["all_slabs_on_standing_cluster"]
    print(f"every slab on the standing cluster's workers: {ok}; machine: {os.cpu_count()} "
          f"CPUs, load average {figures['load_average_1min']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["all_slabs_on_standing_cluster"] else 1


if __name__ == "__main__":
    sys.exit(main())
