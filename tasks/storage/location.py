"""Where a volume is published and under which key: the one place that decides both.

The engine (the key it writes into the volume), the flows (where they publish) and backfill's
skip check (is this run done already, without reading the run) all call ``volume_location``
or ``volume_key``.

- The key hashes the source's identity (the run uid, or the file's checksum), every
  reconstruction parameter and the code version.
- The path is ``<output_root>/<folder>/<key>.zarr``: one folder per run (its uid) or file (its
  stem), one volume per key inside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from tomopipe.tasks.recon.params import ReconParams, output_key
from tomopipe.tasks.sources.spec import ScanSpec

from tomopipe import __version__


class VolumeLocation(NamedTuple):
    path: Path
    key: str


def _identity_and_folder(source: ScanSpec | str) -> tuple[str, str]:
    """A run uid names itself; a spec is named by its identity and its label."""
    if isinstance(source, str):
        return source, source
    identity = source.identity or os.path.abspath(source.label)
    if source.extra.get("source") == "bluesky" and source.identity:
        return identity, source.identity
    return identity, Path(source.label).stem


def volume_key(source: ScanSpec | str, params: ReconParams) -> str:
    """The key of the volume of ``source`` (a ScanSpec, or a run uid) with ``params``."""
    return output_key(_identity_and_folder(source)[0], params, __version__)


def volume_location(output_root: Path, source: ScanSpec | str,
                    params: ReconParams) -> VolumeLocation:
    """(path, key) of the volume of ``source`` (a ScanSpec, or a run uid) with ``params``."""
    identity, folder = _identity_and_folder(source)
    key = output_key(identity, params, __version__)
    return VolumeLocation(Path(output_root) / folder / f"{key}.zarr", key)
