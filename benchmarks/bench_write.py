"""Write-path benchmark: where one slab's time goes, and what each codec costs and saves.

    .venv/bin/python benchmarks/bench_write.py [--n 512] [--rows 32] [--angles 720] [--repeat 3]
                     [--json PATH]

One slab of a phantom Data Exchange scan goes through the engine's stages one at a time, in
this process, on one thread (as on a Dask worker): read (HDF5 rows), preprocess (flat/dark,
-log, sinograms), reconstruct (the CPU Fourier backend), pyramid (2x2x2 means), then the
write of all levels into the engine's sharded layout, once per codec. Encoding alone (the
codec on the level-0 chunks, no file system) is timed apart from the whole write. Each figure
is the best of ``--repeat`` (the machine may be shared); ratios are against the default codec
(``tasks.storage.omezarr.DEFAULT_CODEC``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tomopipe.infra.datasets import make_phantom_scan, write_dxchange
from tomopipe.tasks.recon.backends import get_backend
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.recon.planning import level_layouts
from tomopipe.tasks.recon.slab import preprocess_slab
from tomopipe.tasks.sources import open_scan
from tomopipe.tasks.sources.hdf5io import read_slab
from tomopipe.tasks.storage import omezarr
from tomopipe.tasks.storage.pyramid import build_levels

CODECS = {
    "none": None,
    "lz4-5": {"cname": "lz4", "clevel": 5},
    "zstd-1": {"cname": "zstd", "clevel": 1},
    "zstd-3": {"cname": "zstd", "clevel": 3},
    "zstd-5": {"cname": "zstd", "clevel": 5},
}


def _best(fn, repeat: int):
    best, value = None, None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, value


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _encode_only(levels: list[np.ndarray], codec: dict | None, chunk: tuple) -> int:
    """Bytes after encoding level 0's chunks with ``codec`` (no files)."""
    if codec is None:
        return levels[0].nbytes
    from numcodecs import Blosc

    enc = Blosc(cname=codec["cname"], clevel=codec["clevel"], shuffle=Blosc.SHUFFLE)
    vol = levels[0]
    total = 0
    cz, cy, cx = chunk
    for z in range(0, vol.shape[0], cz):
        for y in range(0, vol.shape[1], cy):
            for x in range(0, vol.shape[2], cx):
                total += len(enc.encode(np.ascontiguousarray(vol[z:z + cz, y:y + cy, x:x + cx])))
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="detector columns (slice n x n)")
    ap.add_argument("--rows", type=int, default=32, help="rows in the slab")
    ap.add_argument("--angles", type=int, default=720)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_write_") as tmp:
        tmp = Path(tmp)
        d = make_phantom_scan(args.n, args.rows, args.angles, n_flats=10, n_darks=10,
                              with_truth=False)
        path = tmp / "scan.h5"
        write_dxchange(path, d["projections"], d["flats"], d["darks"], d["angles_deg"])
        del d
        spec = open_scan(path)
        params = ReconParams(center=args.n / 2)
        angles = np.deg2rad(np.asarray(spec.angles_deg))
        backend = get_backend("fourier", "fbp", nthreads=1)
        rows = (0, args.rows)
        n_levels = 4

        t_read, raw = _best(lambda: read_slab(spec, rows), args.repeat)
        t_pre, sinos = _best(lambda: preprocess_slab(*raw, params), args.repeat)
        backend.reconstruct(sinos, angles, params.center, algorithm="fbp",
                            filter_name=params.filter_name)  # plans
        t_rec, vol = _best(lambda: backend.reconstruct(
            sinos, angles, params.center, algorithm="fbp", filter_name=params.filter_name),
            args.repeat)
        vol = np.asarray(vol, dtype=np.float32)
        t_pyr, levels = _best(lambda: build_levels(vol, n_levels), args.repeat)
        layouts = level_layouts(args.rows, args.n, n_levels, shard_z=16)

        codecs = []
        for name, codec in CODECS.items():
            t_enc, size = _best(lambda codec=codec: _encode_only(levels, codec,
                                                                layouts[0].chunks), args.repeat)

            def write(name=name, codec=codec):
                out = tmp / f"{name}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                omezarr.create_volume(out, layouts, pixel_size_um=None, provenance={},
                                      codec=codec)
                t = time.perf_counter()
                omezarr.write_levels(out, 0, levels)
                return time.perf_counter() - t, _du(out)

            best = None
            for _ in range(args.repeat):
                dt, on_disk = write()
                best = dt if best is None else min(best, dt)
            codecs.append({"codec": name, "encode_s": t_enc, "write_s": best,
                           "level0_bytes": size, "on_disk_bytes": on_disk,
                           "default": codec == omezarr.DEFAULT_CODEC})

    default = next(c for c in codecs if c["default"])
    raw_bytes = sum(lv.nbytes for lv in levels)
    stages = {"read": t_read, "preprocess": t_pre, "reconstruct": t_rec, "pyramid": t_pyr,
              f"write ({default['codec']}, all levels)": default["write_s"],
              f"  of which encode level 0 ({default['codec']})": default["encode_s"]}
    total = t_read + t_pre + t_rec + t_pyr + default["write_s"]
    print(f"one slab: {args.rows} rows x {args.angles} angles x {args.n} wide, {n_levels} levels "
          f"({raw_bytes / 2**20:.1f} MiB of float32), best of {args.repeat}, one thread")
    print(f"{'stage':<36} {'s':>7} {'share':>6}")
    for k, v in stages.items():
        print(f"{k:<36} {v:>7.3f} {v / total:>6.0%}")
    print(f"\n{'codec':<8} {'write s':>8} {'x default':>9} {'encode s':>9} {'on disk MiB':>11} "
          f"{'ratio':>6} {'size x default':>14}")
    for c in codecs:
        print(f"{c['codec']:<8} {c['write_s']:>8.3f} {c['write_s'] / default['write_s']:>9.2f} "
              f"{c['encode_s']:>9.3f} {c['on_disk_bytes'] / 2**20:>11.1f} "
              f"{raw_bytes / c['on_disk_bytes']:>6.2f} "
              f"{c['on_disk_bytes'] / default['on_disk_bytes']:>14.2f}"
              f"{'  <- default' if c['default'] else ''}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({
            "dataset": {"n": args.n, "rows": args.rows, "angles": args.angles},
            "stages_s": stages, "codecs": codecs, "raw_bytes": raw_bytes,
            "load_average_1min": os.getloadavg()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
