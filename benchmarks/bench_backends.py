"""Every available reconstruction backend side by side on one analytic phantom dataset.

    .venv/bin/python benchmarks/bench_backends.py [--quick] [--json out.json] [--threads N]

Cases: 512 wide x 720 angles x 64 rows, and 2048 wide x 720 angles with a few rows (astra's CPU FBP
is slow; it reconstructs only a subset of rows, --astra-rows). Per backend: seconds per slice, speed
relative to astra's CPU FBP, correlation with astra and with the phantom, peak memory (growth of
the process's resident set while it ran, and the NumPy peak from tracemalloc), and, for Fourier
backends, the ratio to the floor of Fourier methods: one complex FFT of the 2N x 2N grid.
Timings on a shared machine are noisy: each figure is the best of --repeat runs, CPU time
(process time) is reported beside wall time, and the FFT floor is re-measured right before each
Fourier run so the ratio sees the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import tracemalloc

import numpy as np
import psutil
import scipy.fft
from tomopipe.tasks.phantom import (
    DEFAULT_FEATURES,
    phantom_projections,
    phantom_volume,
    scale_features,
)
from tomopipe.tasks.recon.backends import available_backends, get_backend


class PeakRSS:
    """Samples the resident set size in a thread; .peak_delta is the growth over the start."""

    def __init__(self, interval: float = 0.002):
        self.proc, self.interval = psutil.Process(), interval

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.peak_delta = self.peak - self.base


def fft_floor(n: int, threads: int, repeat: int = 5) -> tuple[float, float]:
    """(wall, CPU) seconds for one complex64 FFT of the 2n x 2n grid (best of ``repeat``)."""
    grid = np.zeros((2 * n, 2 * n), np.complex64)
    grid[0, 0] = 1
    scipy.fft.fft2(grid, workers=threads)
    wall = cpu = np.inf
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        scipy.fft.fft2(grid, workers=threads, overwrite_x=True)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def run_backend(backend, sinos, angles, center, repeat: int, warm_up: bool = True,
                floor_of=None):
    """Best wall and CPU seconds, the reconstruction, peak RSS growth, tracemalloc peak, and
    (with ``floor_of``: a callable giving the FFT floor) the best ratio to the floor measured
    right before each run, so both see the same load on a shared machine."""
    if warm_up:  # plans, imports, caches
        backend.reconstruct(sinos[:2], angles, center)
    best = {"wall": np.inf, "cpu": np.inf, "x_floor": np.inf, "x_floor_cpu": np.inf}
    rec, rss, traced = None, 0, 0
    for _ in range(repeat):
        floor = floor_of() if floor_of else None
        tracemalloc.start()
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            rec = backend.reconstruct(sinos, angles, center)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        traced = max(traced, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        rss = max(rss, mem.peak_delta)
        best["wall"], best["cpu"] = min(best["wall"], wall), min(best["cpu"], cpu)
        if floor:
            rows = sinos.shape[0]
            best["x_floor"] = min(best["x_floor"], wall / rows / floor[0])
            best["x_floor_cpu"] = min(best["x_floor_cpu"], cpu / rows / floor[1])
    return best, rec, rss, traced


def bench_case(n, rows, n_angles, astra_rows, threads, repeat, log):
    angles = np.linspace(0, np.pi, n_angles, endpoint=False)
    center = n / 2 + 0.3  # off the pixel grid on purpose
    features = scale_features(DEFAULT_FEATURES, 512 / n)  # keep the transmission realistic
    log(f"\n== {n} wide x {n_angles} angles x {rows} rows (astra: {astra_rows} rows) ==")
    sinos = np.ascontiguousarray(
        phantom_projections(n, rows, angles, center=center, features=features).transpose(1, 0, 2))
    truth = phantom_volume(n, rows, features=features)
    floor, floor_1 = fft_floor(n, threads), fft_floor(n, 1)
    log(f"FFT floor (complex64 {2 * n}x{2 * n}): {floor[0] * 1e3:.2f} ms with {threads} threads, "
        f"{floor_1[0] * 1e3:.2f} ms with 1 (CPU time {floor_1[1] * 1e3:.2f} ms)")

    entries = []
    for name in available_backends("fbp"):
        variants = [(name, {})]
        if name == "fourier":
            variants = [(f"fourier ({threads} threads)", {"nthreads": threads}),
                        ("fourier (1 thread)", {"nthreads": 1})]
        for label, options in variants:
            backend = get_backend(name, "fbp", **options)
            data = sinos[:astra_rows] if name == "astra" else sinos
            used = options.get("nthreads", 1)
            floor_of = (lambda t=used: fft_floor(n, t)) if "fourier" in name else None
            # astra's CPU FBP is the slow reference: one run; its noise is small beside its time
            runs = 1 if name == "astra" else repeat
            best, rec, rss, traced = run_backend(backend, data, angles, center, runs,
                                                 warm_up=name != "astra", floor_of=floor_of)
            rows_done = data.shape[0]
            e = {"backend": label, "name": name, "device": backend.device, "rows": rows_done,
                 "threads": used, "s_per_slice": best["wall"] / rows_done,
                 "cpu_s_per_slice": best["cpu"] / rows_done, "rec": rec,
                 "rss_peak_mb": rss / 2**20, "numpy_peak_mb": traced / 2**20}
            if floor_of:
                e["x_fft_floor"], e["x_fft_floor_cpu"] = best["x_floor"], best["x_floor_cpu"]
            entries.append(e)
            log(f"  {label}: {e['s_per_slice']:.4f} s/slice wall, "
                f"{e['cpu_s_per_slice']:.4f} s/slice CPU")

    ref = next((e for e in entries if e["name"] == "astra"), None)
    for e in entries:
        k = e["rows"] if ref is None else min(e["rows"], ref["rows"])
        e["corr_truth"] = correlation(e["rec"], truth[: e["rows"]])
        if ref is not None:
            e["vs_astra_cpu"] = ref["s_per_slice"] / e["s_per_slice"]
            e["vs_astra_cpu_cputime"] = ref["cpu_s_per_slice"] / e["cpu_s_per_slice"]
            e["corr_astra"] = correlation(e["rec"][:k], ref["rec"][:k])
        del e["rec"]
    return {"n": n, "rows": rows, "angles": n_angles, "center": center, "threads": threads,
            "fft_floor_s": floor[0], "fft_floor_1thread_s": floor_1[0],
            "fft_floor_1thread_cpu_s": floor_1[1], "backends": entries}


def print_table(case, log):
    log(f"\n{case['n']} x {case['angles']} angles, {case['rows']} rows, centre {case['center']}")
    head = (f"{'backend':22} {'s/slice':>8} {'CPU s':>8} {'x astra':>8} {'(CPU t)':>8} "
            f"{'corr astra':>10} {'corr truth':>10} {'x floor':>8} {'(CPU t)':>8} "
            f"{'RSS MB':>7} {'numpy MB':>8}")
    log(head)
    log("-" * len(head))
    for e in case["backends"]:
        def fmt(key, spec, e=e):
            return format(e[key], spec) if key in e else format("-", ">" + spec.split(".")[0])
        log(f"{e['backend']:22} {e['s_per_slice']:8.4f} {e['cpu_s_per_slice']:8.4f} "
            f"{fmt('vs_astra_cpu', '8.1f')} {fmt('vs_astra_cpu_cputime', '8.1f')} "
            f"{fmt('corr_astra', '10.5f')} {e['corr_truth']:10.5f} "
            f"{fmt('x_fft_floor', '8.2f')} {fmt('x_fft_floor_cpu', '8.2f')} "
            f"{e['rss_peak_mb']:7.1f} {e['numpy_peak_mb']:8.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rows: a smoke run")
    parser.add_argument("--json", help="write the figures as JSON to this path")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for the Fourier backend and the FFT floor")
    parser.add_argument("--repeat", type=int, default=None, help="runs per backend (best kept)")
    parser.add_argument("--astra-rows", type=int, default=None,
                        help="rows astra's CPU FBP reconstructs (it is slow)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    cases = [(512, 8, 720, 2), (2048, 2, 720, 1)] if args.quick else \
        [(512, 64, 720, 8), (2048, 4, 720, 1)]
    log = print
    log(f"backends available: {', '.join(available_backends())}; {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.2f} (shared machine: timings are noisy)")
    results = []
    for n, rows, n_angles, astra_rows in cases:
        astra_rows = min(args.astra_rows or astra_rows, rows)
        results.append(bench_case(n, rows, n_angles, astra_rows, args.threads, repeat, log))
    for case in results:
        print_table(case, log)
    if args.json:
        meta = {"python": sys.version.split()[0], "machine": platform.machine(),
                "cores": os.cpu_count(), "load_average": os.getloadavg(), "quick": args.quick}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "cases": results}, fh, indent=2)
        log(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
