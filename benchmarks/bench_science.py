"""The science options side by side with a peer, as ratios: what each costs and what it buys.

    .venv/bin/python benchmarks/bench_science.py [--size N] [--repeat R] [--json out.json]

- Paganin: tomopipe's filter (edge padding to a fast FFT length, real FFTs) against TomoPy's
  algorithm (edge padding to a power of two, complex FFTs), written out here in NumPy from its
  published source because TomoPy itself is a conda package; seconds per projection.
- 360-degree offset axis: axis search plus stitching plus FBP of the stitched sinogram, against
  FBP alone of a 180-degree sinogram of the same (stitched) width; seconds per slice.
- CGLS against SIRT (astra, CPU): seconds per iteration, and the error against the phantom after
  the same number of iterations (30 angles).
- Flat-field drift: interpolated normalisation against one mean flat; seconds per slab.

Each timing is the best of --repeat runs (wall time; the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
from tomopipe.infra.datasets import make_offset_axis_scan
from tomopipe.tasks.phantom import (
    DEFAULT_FEATURES,
    phantom_projections,
    phantom_volume,
    scale_features,
)
from tomopipe.tasks.preprocess.drift import normalize_drift, schedule_from_positions
from tomopipe.tasks.preprocess.normalize import minus_log, normalize
from tomopipe.tasks.preprocess.phase import paganin_filter, wavelength_m
from tomopipe.tasks.preprocess.stitch360 import find_axis_360, stitch_half_turns
from tomopipe.tasks.recon.backends import get_backend
from tomopipe.tasks.recon.slab import to_sinograms


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def tomopy_style_paganin(frames, pixel_cm, dist_cm, energy_kev, alpha):
    """TomoPy's retrieve_phase algorithm (power-of-two edge padding, complex FFT), in NumPy."""
    lam = wavelength_m(energy_kev) * 100
    _, rows, cols = frames.shape

    def pad_width(n):
        pad_pix = math.ceil(math.pi * lam * dist_cm / pixel_cm**2)
        return int((2 ** math.ceil(math.log2(n + pad_pix)) - n) * 0.5)

    py, pz = pad_width(rows), pad_width(cols)
    ny, nz = rows + 2 * py, cols + 2 * pz
    fy = np.fft.fftfreq(ny, pixel_cm)[:, None]
    fz = np.fft.fftfreq(nz, pixel_cm)[None, :]
    filt = 1 / (1 + math.pi * lam * dist_cm * (fy**2 + fz**2) / alpha)
    out = np.empty_like(frames)
    for k in range(frames.shape[0]):
        prj = np.pad(frames[k], ((py, py), (pz, pz)), mode="edge")
        out[k] = np.real(np.fft.ifft2(np.fft.fft2(prj) * filt))[py:py + rows, pz:pz + cols]
    return out


def bench_paganin(n: int, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    frames = (0.5 + 0.5 * rng.random((8, n, n))).astype(np.float32)
    ours = best(lambda: paganin_filter(frames, pixel_size_um=1.0, distance_mm=100.0,
                                       energy_kev=20.0, delta_beta=100.0), repeat)
    peer = best(lambda: tomopy_style_paganin(frames, 1e-4, 10.0, 20.0, 1 / 100.0), repeat)
    a = paganin_filter(frames, pixel_size_um=1.0, distance_mm=100.0, energy_kev=20.0,
                       delta_beta=100.0)
    b = tomopy_style_paganin(frames, 1e-4, 10.0, 20.0, 1 / 100.0)
    return {"frame": [n, n], "tomopipe_s_per_projection": ours / 8,
            "tomopy_algorithm_s_per_projection": peer / 8, "speedup": peer / ours,
            "max_rel_difference": float(np.abs(a / b - 1).max())}


def bench_offset(n: int, repeat: int) -> dict:
    axis = n - 0.15 * n
    scan = make_offset_axis_scan(n, 1, 2 * n, axis=axis, object_width=1.6 * n, with_truth=False)
    sinos = to_sinograms(minus_log(normalize(scan["projections"], scan["flats"], scan["darks"])))
    angles = np.radians(scan["angles_deg"])
    fbp = get_backend("fourier", "fbp", nthreads=1)

    def full():
        est = find_axis_360(sinos, angles)
        st, half, c = stitch_half_turns(sinos, angles, est.value)
        fbp.reconstruct(st, half, c)

    st, half, c = stitch_half_turns(sinos, angles, axis)
    plain = best(lambda: fbp.reconstruct(st, half, c), repeat)
    search = best(lambda: find_axis_360(sinos, angles), repeat)
    total = best(full, repeat)
    return {"detector": n, "stitched_width": st.shape[-1], "angles": int(angles.size),
            "axis_search_s": search, "search_stitch_fbp_s": total, "fbp_of_stitched_s": plain,
            "overhead_ratio": total / plain}


def bench_iterative(n: int, repeat: int, iterations: int = 20) -> dict:
    angles = np.linspace(0, np.pi, 30, endpoint=False)
    features = scale_features(DEFAULT_FEATURES, 512 / n)
    sinos = phantom_projections(n, 1, angles, features=features).transpose(1, 0, 2)
    truth = phantom_volume(n, 1, features=features)
    out = {"size": n, "angles": 30, "iterations": iterations}
    for name in ("sirt", "cgls"):
        be = get_backend("astra", name)
        seconds = best(lambda be=be, name=name: be.reconstruct(
            sinos, angles, n / 2, algorithm=name, iterations=iterations), repeat)
        rec = be.reconstruct(sinos, angles, n / 2, algorithm=name, iterations=iterations)
        out[f"{name}_s_per_iteration"] = seconds / iterations
        out[f"{name}_rmse"] = float(np.sqrt(((rec - truth) ** 2).mean()))
    out["cgls_over_sirt_time"] = out["cgls_s_per_iteration"] / out["sirt_s_per_iteration"]
    out["cgls_over_sirt_error"] = out["cgls_rmse"] / out["sirt_rmse"]
    return out


def bench_drift(n: int, repeat: int) -> dict:
    rng = np.random.default_rng(1)
    proj = rng.integers(1000, 2000, (2 * n, 32, n)).astype(np.uint16)
    flats = rng.integers(3000, 4000, (20, 32, n)).astype(np.uint16)
    darks = rng.integers(90, 110, (10, 32, n)).astype(np.uint16)
    schedule = schedule_from_positions([-1] * 10 + [2 * n] * 10, range(2 * n))
    plain = best(lambda: normalize(proj, flats, darks), repeat)
    drift = best(lambda: normalize_drift(proj, flats, darks, schedule), repeat)
    return {"slab": list(proj.shape), "mean_flat_s": plain, "interpolated_flat_s": drift,
            "ratio": drift / plain}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="detector width (default 512)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "load_1min": os.getloadavg()[0]}
    figures = {"machine": machine,
               "paganin": bench_paganin(args.size, args.repeat),
               "offset_360": bench_offset(args.size // 2, args.repeat),
               "cgls_vs_sirt": bench_iterative(args.size // 2, args.repeat),
               "flat_drift": bench_drift(args.size, args.repeat)}
    figures["machine"]["load_1min_after"] = os.getloadavg()[0]
    p, o, i, d = (figures[k] for k in ("paganin", "offset_360", "cgls_vs_sirt", "flat_drift"))
    print(f"machine: {machine['cpus']} cpus, load {machine['load_1min']:.2f} before, "
          f"{figures['machine']['load_1min_after']:.2f} after")
    print(f"Paganin {p['frame'][0]}x{p['frame'][1]}: tomopipe "
          f"{p['tomopipe_s_per_projection'] * 1e3:.1f} ms/projection, TomoPy's algorithm "
          f"{p['tomopy_algorithm_s_per_projection'] * 1e3:.1f} ms: {p['speedup']:.2f}x "
          f"(largest relative difference {p['max_rel_difference']:.1e})")
    print(f"360 offset axis, {o['detector']} px detector -> {o['stitched_width']} px: axis search "
          f"{o['axis_search_s']:.2f} s; search + stitch + FBP {o['search_stitch_fbp_s']:.2f} s vs "
          f"FBP alone {o['fbp_of_stitched_s']:.2f} s: {o['overhead_ratio']:.2f}x")
    print(f"CGLS vs SIRT ({i['size']} px, 30 angles, {i['iterations']} iterations): time per "
          f"iteration {i['cgls_over_sirt_time']:.2f}x, error {i['cgls_over_sirt_error']:.2f}x")
    print(f"flat drift, slab {d['slab']}: interpolated {d['interpolated_flat_s']:.3f} s vs mean "
          f"flat {d['mean_flat_s']:.3f} s: {d['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
