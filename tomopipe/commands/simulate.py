"""``tomopipe simulate``: run a simulated tomography scan and publish its documents.

Progress goes to stderr; the run uid is the last line on stdout (scripts take ``| tail -1``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from tomopipe.errors import ServiceError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run a simulated tomography scan (Bluesky RunEngine) and publish its documents",
        description="Run the tomo_scan plan on a simulated beamline: the camera writes HDF5 "
                    "frames of a phantom under the first data root and the documents go to "
                    "the document bus (the 0MQ proxy of `tomopipe up`, or --zmq).",
    )
    p.add_argument("--size", type=int, default=128, help="detector columns (default 128)")
    p.add_argument("--rows", type=int, default=16, help="detector rows (default 16)")
    p.add_argument("--angles", type=int, default=180, help="projections over 180 deg (default 180)")
    p.add_argument("--flats", type=int, default=10, help="flat fields (default 10)")
    p.add_argument("--darks", type=int, default=5, help="dark fields (default 5)")
    p.add_argument("--fps", type=float, default=0.0,
                   help="frames per second, so the scan takes real time (default 0: flat out)")
    p.add_argument("--angle-order", choices=("sequential", "interlaced", "golden"),
                   default="sequential",
                   help="order of the rotation angles: sequential sweep, interlaced (4 passes) "
                        "or golden-ratio (default sequential)")
    p.add_argument("--sample", default="phantom", help="sample name (default phantom)")
    p.add_argument("--zmq", metavar="ADDRESS",
                   help="0MQ proxy input address, e.g. localhost:5577 "
                        "(default: from `tomopipe up`)")
    p.add_argument("--serializer", choices=("msgpack", "json", "pickle"), default=None,
                   help="document serializer on the bus "
                        "(default: as `tomopipe up` says, else msgpack)")
    p.add_argument("--no-publish", action="store_true",
                   help="do not publish the documents (files only)")
    p.add_argument("--abort-after", type=int, metavar="K",
                   help="abort the run after K projections (its stop says exit_status abort)")
    p.add_argument("--seed", type=int, help="seed of the photon noise (default: random)")
    p.add_argument("--sample-offset", metavar="DX,DY",
                   help="put the sample DX,DY pixels off the rotation axis (the stage shifts "
                        "the phantom in the projections)")
    p.add_argument("--sample-shape", choices=("phantom", "grain"), default=None,
                   help="the simulated sample: the phantom filling the field (default), or a "
                        "grain half as wide in the middle half of the rows (default with "
                        "--steer)")
    p.add_argument("--steer", choices=("align", "stop"),
                   help="scan on the queue server (tomopipe up --with-queue), steered: align "
                        "= quick scan, the agent centres the sample and limits the rows, then "
                        "the full scan; stop = a golden-ratio scan the agent ends once its live "
                        "reconstruction has converged. The steered scan's uid is printed last")
    p.add_argument("--quick-angles", type=int, default=45,
                   help="angles of the quick low-dose scan of --steer align (default 45)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds --steer waits for each scan and analysis (default 900)")
    p.set_defaults(func=run)


def bus_address(args: argparse.Namespace, settings) -> tuple[str | None, str]:
    """(proxy input address, serializer) from the options or from the running services."""
    serializer = args.serializer
    if args.no_publish:
        return None, serializer or "msgpack"
    if args.zmq:
        return args.zmq, serializer or "msgpack"
    from tomopipe.context import run_context

    ctx = run_context(settings.home)
    address = ctx.services.zmq_in if ctx.running else None
    if not address:
        raise ServiceError(
            f"no document bus: `tomopipe up` is not running for {settings.home} (no zmq_in "
            f"address); pass --zmq ADDRESS or --no-publish")
    return address, serializer or settings.bus.serializer


def run(args: argparse.Namespace) -> int:
    from tomopipe.config import load_settings
    from tomopipe.infra.simulator.run import progress_printer, simulate

    settings = load_settings()
    if args.steer:
        from tomopipe.commands.steer import run_steered

        args.sample_shape = args.sample_shape or "grain"
        with contextlib.redirect_stdout(sys.stderr):
            uid = run_steered(args, settings)
        print(uid, flush=True)
        return 0
    # The RunEngine logs an expected abort with a traceback; failures still raise from simulate.
    logging.getLogger("bluesky").addHandler(logging.NullHandler())
    address, serializer = bus_address(args, settings)
    if address:
        print(f"publishing to {address} ({serializer})", file=sys.stderr, flush=True)
    # The RunEngine prints on stdout (e.g. when aborting): keep stdout for the uid alone.
    with contextlib.redirect_stdout(sys.stderr):
        uid = simulate(settings, size=args.size, rows=args.rows, angles=args.angles,
                       fps=args.fps or None, sample=args.sample, publish_to=address,
                       serializer=serializer, callbacks=(progress_printer(sys.stderr),),
                       n_flats=args.flats, n_darks=args.darks, abort_after=args.abort_after,
                       seed=args.seed, angle_order=args.angle_order,
                       sample_shape=args.sample_shape or "phantom",
                       sample_offset=_offset(args.sample_offset))
    print(uid, flush=True)
    return 0


def _offset(text: str | None) -> tuple[float, float] | None:
    from tomopipe.commands.steer import parse_offset

    return parse_offset(text) if text else None
