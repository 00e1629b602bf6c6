"""``tomopipe recon``: reconstruct an HDF5 scan into an OME-Zarr volume (or a centre search)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tomopipe.errors import ConfigError, InputError, PlanError

EPILOG = """\
examples:
  tomopipe recon scan.h5 --out scan.zarr
  tomopipe recon scan.h5 --out scan.zarr --center 1023.5 --rows 800:1200 --rings fw --workers 4
  tomopipe recon scan.h5 --out centres/ --center-search 1010:1030:0.5   # one TIFF per centre
  tomopipe recon scan.h5 --out scan.zarr --scheduler tcp://10.0.0.5:8786 --memory-limit 16GB --json
  tomopipe recon scan.h5 --out scan.zarr --phase paganin --energy 25 --distance 150 --delta-beta 300
  tomopipe recon scan.h5 --out scan.zarr --flats pre.h5:/flats --flats post.h5:/flats  # drift
  tomopipe recon scan.h5 --out scan.zarr --algorithm cgls --iterations 30

The output is published atomically: an interrupted run leaves OUT.partial, and the same command
resumes it; the same command after success does nothing (same key).
"""


def _center(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def _rows(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP (integers), got {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return a, b


def _search(text: str) -> tuple[float, float, float]:
    try:
        a, b, s = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP, got {text!r}") from None
    if s <= 0 or b < a:
        raise argparse.ArgumentTypeError(f"expected START <= STOP and STEP > 0, got {text!r}")
    if (b - a) / s > 1000:
        raise argparse.ArgumentTypeError(f"{text!r} gives more than 1000 candidates")
    return a, b, s


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return v
    return parse


def _workers(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return v


def add_parser(subparsers) -> argparse.ArgumentParser:
    from tomopipe.tasks.recon.params import ALGORITHMS, FILTERS, PHASE_METHODS, RING_METHODS

    p = subparsers.add_parser(
        "recon",
        help="reconstruct an HDF5 scan (Data Exchange, NeXus) into an OME-Zarr volume",
        description="Reconstruct a tomography scan, chunked across a Dask cluster, into a "
                    "multiscale OME-Zarr 0.5 volume published atomically.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="HDF5 scan file (Data Exchange or NeXus)")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="output volume (OUT.zarr); with --center-search, a folder for TIFFs")
    p.add_argument("--center", type=_center, default="auto", metavar="auto|FLOAT",
                   help="rotation centre in pixels (0-based column), or 'auto' (default)")
    p.add_argument("--center-search", type=_search, metavar="START:STOP:STEP",
                   help="write one slice per candidate centre as OUT/center_<c>.tif instead")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="fbp")
    p.add_argument("--backend", default="auto",
                   help="auto | fourier | astra | tomopy | gpu-fourier (default auto)")
    p.add_argument("--filter", dest="filter_name", choices=FILTERS, default="shepp",
                   help="FBP filter (default shepp)")
    p.add_argument("--iterations", type=_positive(int), default=100,
                   help="iterations of SIRT or CGLS (default 100)")
    p.add_argument("--rows", type=_rows, metavar="START:STOP",
                   help="detector rows to reconstruct (default all)")
    p.add_argument("--rings", choices=RING_METHODS, default="none", metavar="METHOD|none",
                   help=f"ring (stripe) removal: {', '.join(RING_METHODS)} (default none)")
    p.add_argument("--zingers", type=_positive(float), metavar="THRESHOLD",
                   help="remove zingers brighter than THRESHOLD (normalised intensity)")
    p.add_argument("--flat-method", choices=("mean", "median"), default="mean")
    p.add_argument("--pixel-size", type=_positive(float), metavar="UM",
                   help="pixel size in micrometres (overrides the file's); output in 1/cm")
    p.add_argument("--phase", choices=PHASE_METHODS, default="none",
                   help="phase retrieval: paganin (single distance) needs --energy, --distance, "
                        "--delta-beta and the pixel size (default none)")
    p.add_argument("--energy", dest="energy_kev", type=_positive(float), metavar="KEV",
                   help="photon energy in keV (--phase paganin)")
    p.add_argument("--distance", dest="distance_mm", type=_positive(float), metavar="MM",
                   help="sample-to-detector distance in mm (--phase paganin)")
    p.add_argument("--delta-beta", dest="delta_beta", type=_positive(float), metavar="RATIO",
                   help="delta/beta of the sample's material (--phase paganin)")
    p.add_argument("--flats", action="append", metavar="FILE[:DATASET]",
                   help="flat fields from another file (DATASET default /exchange/data_white, "
                        "or the file's only 3-D dataset); give twice for flats taken before "
                        "and after the projections: each projection then gets the flat "
                        "interpolated at its index")
    p.add_argument("--darks", action="append", metavar="FILE[:DATASET]",
                   help="dark fields from another file (DATASET default /exchange/data_dark)")
    p.add_argument("--data-path", metavar="P", help="HDF5 dataset of the frames")
    p.add_argument("--image-key-path", metavar="P", help="HDF5 dataset of the image keys")
    p.add_argument("--angles-path", metavar="P", help="HDF5 dataset of the angles (degrees)")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="start a local Dask cluster of N workers (0: one slab at a time in "
                        "this process); default: the standing cluster of `tomopipe up` when "
                        "it runs, else one slab thread per core in this process")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use a running Dask scheduler (default: the standing one, when up)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="memory per worker, e.g. 4GB (default: the cluster's limit)")
    p.add_argument("--slab-rows", type=_positive(int), metavar="N",
                   help="at most N detector rows per task (default: from the memory budget)")
    p.add_argument("--levels", type=_positive(int), metavar="N",
                   help="pyramid levels including full resolution (default: down to ~32 px)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing volume with a different key at OUT")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the result on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)
    return p


def _params(args):
    from tomopipe.tasks.recon.params import ReconParams

    return ReconParams(
        algorithm=args.algorithm, backend=args.backend, filter_name=args.filter_name,
        center=args.center, rows=args.rows, rings=args.rings, zingers=args.zingers,
        flat_method=args.flat_method, iterations=args.iterations,
        pixel_size_um=args.pixel_size, phase=args.phase, energy_kev=args.energy_kev,
        distance_mm=args.distance_mm, delta_beta=args.delta_beta,
        flats=tuple(args.flats) if args.flats else None,
        darks=tuple(args.darks) if args.darks else None,
    )


def _candidates(start: float, stop: float, step: float) -> list[float]:
    n = int(round((stop - start) / step + 1e-9))
    return [round(start + i * step, 6) for i in range(n + 1)]


def _standing_scheduler() -> tuple[str, str] | None:
    """(home, scheduler address) of the home's standing Dask cluster when it answers."""
    from tomopipe.config import home
    from tomopipe.infra.state import read_services

    if read_services(home()) is None:  # no services: nothing more to import or ask
        return None
    from tomopipe.context import run_context
    from tomopipe.infra.processes import tcp_listening

    ctx = run_context()
    address = ctx.services.dask_scheduler if ctx.running else None
    if address and tcp_listening(address):
        return str(ctx.home), address
    return None


def _compute(args) -> tuple[str | None, int | None]:
    """(scheduler, threads) for the engine: --scheduler or --workers as given; else the home's
    standing cluster while its services are up; else, for the default local kind on a machine
    without GPUs, one slab thread per core in this process (no cluster to start); else the
    cluster config.yaml describes (GPU workers, an address, SLURM), started for this run."""
    if args.scheduler or args.workers is not None:
        return args.scheduler, None
    standing = _standing_scheduler()
    if standing:
        print(f"using the standing Dask cluster of {standing[0]} at {standing[1]}",
              file=sys.stderr)
        return standing[1], None
    from tomopipe.infra.cluster import configured_cluster, default_workers, gpu_count

    cfg = configured_cluster()
    if cfg.kind == "local" and (cfg.gpus == 0 or (cfg.gpus is None and gpu_count() == 0)):
        return None, cfg.workers or default_workers()
    return None, None


def run(args) -> int:
    from tomopipe.tasks.paths import check_output_path
    from tomopipe.tasks.recon import engine
    from tomopipe.tasks.sources import open_scan

    if args.memory_limit is not None:
        from tomopipe.infra.cluster import parse_memory

        parse_memory(args.memory_limit)
    if args.scheduler and args.workers is not None:
        raise ConfigError("--scheduler and --workers: give one (a running cluster has its "
                          "own workers)")
    # Local Dask workers are processes that inherit this environment. A slab's error is logged
    # by its worker (a multi-line "Compute Failed") before it is raised here as the one line a
    # user sees, and a closing cluster may print heartbeat traces: only critical Dask logs.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    spec = open_scan(args.source, data_path=args.data_path, image_key_path=args.image_key_path,
                     angles_path=args.angles_path, pixel_size_um=args.pixel_size,
                     checksum=args.center_search is None, require_flats=not args.flats)
    check_output_path(args.out, inputs=[args.source, *(fs.path for fs in spec.projections
                                                        + spec.flats + spec.darks)])
    params = _params(args)

    if args.center_search:
        files = engine.center_search(spec, params, args.out, _candidates(*args.center_search))
        if args.json:
            print(json.dumps({"output": args.out, "files": [str(f) for f in files],
                              "centers": _candidates(*args.center_search)}))
        else:
            print(f"wrote {len(files)} slices to {args.out}", file=sys.stderr)
        return 0

    bar = None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        def progress(done, total):
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc="slabs", unit="slab", file=sys.stderr,
                           dynamic_ncols=True)
            bar.n = done
            bar.refresh()

    scheduler, threads = _compute(args)
    try:
        result = engine.reconstruct(spec, params, args.out, scheduler=scheduler,
                                    workers=args.workers, threads=threads,
                                    memory_limit=args.memory_limit,
                                    progress=progress, overwrite=args.overwrite,
                                    levels=args.levels, max_slab_rows=args.slab_rows)
    except PlanError as exc:  # name the scan whose declared shape does not fit
        raise PlanError(f"{args.source}: {spec.projections[0].dataset}: declared "
                        f"{spec.n_angles} x {spec.n_rows} x {spec.n_cols} {spec.dtype}: "
                        f"{exc}") from None
    except OSError as exc:  # the output could not be written: one line naming it
        raise InputError(args.out, f"cannot write the volume: {exc.strerror or exc}"
                         + (f" ({exc.filename})" if exc.filename else "")) from None
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        what = "already complete (same key), nothing to do" if result.skipped else "written"
        print(f"{result.output}: {what}; shape {list(result.shape)}, centre {result.center:.2f} "
              f"({result.center_method}), backend {result.backend}, {result.seconds:.1f} s",
              file=sys.stderr)
    return 0
