"""The whole ``tomopipe recon`` command against astra's CPU FBP on the same cores.

    .venv/bin/python benchmarks/bench_recon_command.py [--n 512] [--rows 128] [--angles 720]
                     [--repeat 3] [--modes threads,workers] [--json PATH]

One analytic phantom scan (Data Exchange, centre off the pixel grid) is reconstructed by:

- ``tomopipe recon SCAN --out OUT`` as a new process on a home with no services: the wall time
  from exec to exit, which includes Python's start, the imports, centre finding (``auto``), the
  slabs, the pyramid and the writes. Mode ``threads`` is the default (slab threads in the
  command's own process); mode ``workers`` passes ``--workers N`` (a Dask cluster of N worker
  processes started for the run, the default before the standing cluster).
- astra's CPU FBP (``linear`` projector, Ram-Lak as astra's FBP does it) on the same sinograms
  (flat/dark-normalised, -log, outside the timing), with the true centre, split across one
  process per core: the time is the slowest process's reconstruction alone (no start, no I/O,
  no centre finding), which favours astra. astra's FBP costs the same for every slice, so with
  ``--astra-rows K`` it reconstructs only K central slices and its time is scaled to all of them
  (its correlation is then over those K).

Both volumes are compared with the analytic truth (Pearson correlation over the reconstructed
slices). Each figure is the best of ``--repeat`` runs (median beside it); the machine may be
shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _astra_part(args):
    sinos, angles, center = args
    from tomopipe.tasks.recon.astra_backend import AstraBackend

    backend = AstraBackend()
    t, c = time.perf_counter(), time.process_time()
    rec = backend.reconstruct(sinos, angles, center, algorithm="fbp", filter_name="ramlak")
    return time.perf_counter() - t, time.process_time() - c, np.asarray(rec, dtype=np.float32)


def astra_on_cores(sinos: np.ndarray, angles: np.ndarray, center: float,
                   cores: int) -> tuple[float, float, np.ndarray]:
    """(seconds of the slowest process, CPU seconds of all, volume): slices split evenly over
    ``cores`` processes."""
    parts = np.array_split(sinos, cores)
    with mp.get_context("spawn").Pool(cores) as pool:
        out = pool.map(_astra_part, [(p, angles, center) for p in parts])
    return (max(t for t, _, _ in out), sum(c for _, c, _ in out),
            np.concatenate([r for _, _, r in out]))


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_command(scan: Path, out: Path, home: Path,
                extra: list[str]) -> tuple[float, float, dict]:
    """(wall seconds from exec to exit, CPU seconds of the command and its children, result)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "TOMOPIPE_HOME": str(home)}
    c = _children_cpu()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tomopipe.cli", "recon", str(scan), "--out",
                           str(out), "--json", "--no-progress", *extra],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"tomopipe recon failed ({proc.returncode}): {proc.stderr}")
    return wall, _children_cpu() - c, json.loads(proc.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="detector columns (slice n x n)")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--angles", type=int, default=720)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="threads,workers",
                    help="comma-separated: threads (the default command), workers (--workers N)")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--astra-rows", type=int, default=None,
                    help="astra reconstructs only this many central slices, its time scaled "
                         "to all (default: all)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--cache", type=Path,
                    help="keep the phantom scan and its truth in this folder and reuse them")
    args = ap.parse_args(argv)

    import zarr
    from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
    from tomopipe.tasks.recon.params import ReconParams
    from tomopipe.tasks.recon.slab import preprocess_slab
    from tomopipe.tasks.sources import open_scan
    from tomopipe.tasks.sources.hdf5io import read_slab

    center = args.n / 2 + 4.3  # off the pixel grid and off the middle
    with tempfile.TemporaryDirectory(prefix="bench_recon_command_") as tmp:
        tmp = Path(tmp)
        folder = args.cache or tmp
        folder.mkdir(parents=True, exist_ok=True)
        name = f"phantom_{args.n}x{args.rows}x{args.angles}"
        scan, truth_file = folder / f"{name}.h5", folder / f"{name}.truth.npy"
        if scan.exists() and truth_file.exists():
            truth = np.load(truth_file)
        else:
            d = make_phantom_scan(args.n, args.rows, args.angles, center=center)
            write_dxchange(scan, d["projections"], d["flats"], d["darks"], d["angles_deg"])
            truth = d["truth"]
            np.save(truth_file, truth)
            del d

        spec = open_scan(scan)
        sinos = preprocess_slab(*read_slab(spec, (0, spec.n_rows)), ReconParams())
        angles = np.deg2rad(np.asarray(spec.angles_deg))
        modes = args.modes.split(",")
        astra_times, astra_cpu, astra_vol = [], [], None
        k = min(args.astra_rows or args.rows, args.rows)
        a0 = (args.rows - k) // 2
        a1, scale = a0 + k, args.rows / k
        walls: dict[str, list[float]] = {m: [] for m in modes}
        cpus: dict[str, list[float]] = {m: [] for m in modes}
        last: dict[str, tuple[dict, Path]] = {}
        # Interleaved, so astra and each mode see the same load on a shared machine.
        for i in range(args.repeat):
            t, c, astra_vol = astra_on_cores(sinos[a0:a1], angles, center, args.cores)
            astra_times.append(t * scale)
            astra_cpu.append(c * scale)
            for mode in modes:
                extra = ["--workers", str(args.cores)] if mode == "workers" else []
                out = tmp / f"{mode}{i}.zarr"
                wall, cpu, result = run_command(scan, out, tmp / "home", extra)
                walls[mode].append(wall)
                cpus[mode].append(cpu)
                last[mode] = (result, out)
        astra_s = min(astra_times)
        astra_corr = correlation(astra_vol, truth[a0:a1])
        del sinos, astra_vol

        rows = []
        for mode in modes:
            result, out = last[mode]
            vol = zarr.open_group(str(out), mode="r")["0"][:]
            t = result["timings"]
            best = min(walls[mode])
            rows.append({
                "mode": mode, "best_s": best, "median_s": statistics.median(walls[mode]),
                "x_astra": astra_s / best,
                "x_astra_median": statistics.median(astra_times) / statistics.median(walls[mode]),
                "cpu_s": min(cpus[mode]), "x_astra_cpu": min(astra_cpu) / min(cpus[mode]),
                "corr_truth": correlation(vol, truth),
                "center": result["center"], "center_error_px": result["center"] - center,
                "process_start_and_imports_s": walls[mode][-1] - t["total_s"],
                **{k: t.get(k) for k in ("cluster_s", "center_s", "plan_s", "slabs_s",
                                         "sum_read_s", "sum_recon_s", "sum_pyramid_s",
                                         "sum_write_s")},
            })

    print(f"tomopipe recon on {args.rows} rows x {args.angles} angles x {args.n} wide, "
          f"{args.cores} cores; best of {args.repeat} (median)")
    print(f"{'':<34} {'wall s':>7} {'median':>7} {'x astra':>8} {'(median)':>8} "
          f"{'CPU s':>7} {'x astra CPU':>11} {'corr truth':>10}")
    if k < args.rows:
        print(f"astra reconstructed {k} of the {args.rows} slices; its times are scaled by "
              f"{scale:g}")
    print(f"{'astra CPU FBP (recon only)':<34} {astra_s:>7.2f} "
          f"{statistics.median(astra_times):>7.2f} {1.0:>8.2f} {1.0:>8.2f} "
          f"{min(astra_cpu):>7.2f} {1.0:>11.2f} {astra_corr:>10.5f}")
    for r in rows:
        label = ("tomopipe recon (slab threads)" if r["mode"] == "threads"
                 else f"tomopipe recon --workers {args.cores}")
        print(f"{label:<34} {r['best_s']:>7.2f} {r['median_s']:>7.2f} {r['x_astra']:>8.2f} "
              f"{r['x_astra_median']:>8.2f} {r['cpu_s']:>7.2f} {r['x_astra_cpu']:>11.2f} "
              f"{r['corr_truth']:>10.5f}")
    print("\nwhere the command's time goes (last run; sums are over slabs, i.e. CPU-ish):")
    keys = ("process_start_and_imports_s", "cluster_s", "center_s", "plan_s", "slabs_s",
            "sum_read_s", "sum_recon_s", "sum_pyramid_s", "sum_write_s")
    print(f"{'':<10}" + "".join(f"{k.removesuffix('_s'):>14}" for k in keys))
    for r in rows:
        print(f"{r['mode']:<10}" + "".join(f"{(r[k] or 0):>14.2f}" for k in keys))
    print(f"centre found: {rows[0]['center']:.3f} (true {center}); machine: {os.cpu_count()} "
          f"CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({
            "dataset": {"n": args.n, "rows": args.rows, "angles": args.angles,
                        "center": center}, "cores": args.cores,
            "astra_rows": k, "astra_s": astra_s, "astra_runs_s": astra_times,
            "astra_cpu_s": astra_cpu,
            "astra_corr_truth": astra_corr,
            "runs": rows,
            "load_average_1min": os.getloadavg()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
