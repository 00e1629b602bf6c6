"""The ``tomopipe`` command. Each subcommand lives in its own module under tomopipe.commands.

A command module provides ``add_parser(subparsers)`` (which sets ``func`` on its parser) and is
imported lazily, so ``tomopipe recon`` does not pay for importing Prefect or Tiled.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tomopipe import __version__
from tomopipe.errors import TomopipeError

# subcommand -> module under tomopipe.commands
COMMANDS = {
    "recon": "recon",
    "simulate": "simulate",
    "up": "services",
    "down": "services",
    "status": "services",
    "backfill": "backfill",
    "runs": "runs",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomopipe",
        description="Tomography reconstruction from Bluesky runs and HDF5 files to OME-Zarr "
        "volumes.",
    )
    parser.add_argument("--version", action="version", version=f"tomopipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):  # each module once, in order
        if only and COMMANDS[only] != module:
            continue
        importlib.import_module(f"tomopipe.commands.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TomopipeError as exc:
        print(f"tomopipe {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tomopipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
