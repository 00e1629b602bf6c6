"""Bad scan files and hostile run documents, built for real on disk.

Shared by tests/faults/test_bad_files.py, tests/faults/test_hostile_documents.py and
benchmarks/faults_input.py, so the benchmark's matrix and the tests run the same cases.

``BAD_FILES``: case name -> ``(build(folder) -> (source, extra CLI args), fault regex)``. Each
build writes a small real HDF5 file; the fault regex is what the one line on stderr must say
(besides naming the input). ``hostile_documents`` turns a real run's documents into variants that
name files outside the data roots.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

SIZE, ROWS, ANGLES = 48, 4, 60


def _scan() -> dict:
    from tomopipe.infra.datasets import make_phantom_scan

    return make_phantom_scan(SIZE, ROWS, ANGLES, n_flats=4, n_darks=4, with_truth=False)


def _write(path: Path, **change) -> Path:
    from tomopipe.infra.datasets import write_dxchange

    s = {**_scan(), **change}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dxchange(path, s["projections"], s["flats"], s["darks"], s["angles_deg"])


def good(folder: Path) -> tuple[Path, list[str]]:
    return _write(folder / "good.h5"), []


def truncated(folder: Path):
    path = _write(folder / "truncated.h5")
    os.truncate(path, os.path.getsize(path) * 2 // 3)  # a copy that stopped part way
    return path, []


def nan_frames(folder: Path):
    s = _scan()
    proj = s["projections"].astype(np.float32)
    proj[7, 1, :] = np.nan  # one row of one frame: a detector read-out glitch
    return _write(folder / "nan.h5", projections=proj, flats=s["flats"].astype(np.float32),
                  darks=s["darks"].astype(np.float32)), []


def nan_frames_in_a_slab(folder: Path):
    """The NaN found by a slab (the centre is given, so nothing reads it before)."""
    path, _ = nan_frames(folder)
    return path, ["--center", str(SIZE / 2)]


def flats_equal_darks(folder: Path):
    s = _scan()
    return _write(folder / "flats_are_darks.h5", flats=s["darks"]), []


def zero_angles(folder: Path):
    return _write(folder / "zero_angles.h5", angles_deg=np.empty(0)), []


def mismatched_angles(folder: Path):
    return _write(folder / "mismatched_angles.h5", angles_deg=_scan()["angles_deg"][:-7]), []


def angles_never_move(folder: Path):
    return _write(folder / "one_angle.h5", angles_deg=np.zeros(ANGLES)), []


def huge_declared_shape(folder: Path):
    """4 million angles of 16384 columns, declared but never written (HDF5 allocates chunks
    lazily): the file holds little more than its angles (32 MB), one sinogram row is 131 GB.
    The volume (4 x 16384 x 16384) fits on an ordinary disk, so the memory check speaks."""
    path = folder / "huge.h5"
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = 4_000_000, 4, 16384
    with h5py.File(path, "w") as f:
        ex = f.create_group("exchange")
        kw = dict(dtype="uint16", chunks=(1, 1, 16384))
        ex.create_dataset("data", shape=(n, rows, cols), fillvalue=500, **kw)
        ex.create_dataset("data_white", shape=(4, rows, cols), fillvalue=1000, **kw)
        ex.create_dataset("data_dark", shape=(4, rows, cols), fillvalue=100, **kw)
        ex.create_dataset("theta", data=np.linspace(0, 180, n, endpoint=False))
    return path, []


def huge_declared_shape_given_centre(folder: Path):
    path, _ = huge_declared_shape(folder)
    return path, ["--center", "8192"]


# case -> (build, what the message must say)
BAD_FILES: dict[str, tuple[Callable, str]] = {
    "truncated": (truncated, r"truncated"),
    "NaN frames": (nan_frames, r"non-finite value \(nan\) in frame 7, row 1"),
    "NaN frames, found by a slab": (nan_frames_in_a_slab, r"non-finite value \(nan\) in frame 7"),
    "flats equal darks": (flats_equal_darks, r"flat fields hold no beam"),
    "zero angles": (zero_angles, r"0 angles for 60 projections"),
    "mismatched angles": (mismatched_angles, r"53 angles for 60 projections"),
    "angles never move": (angles_never_move, r"all 60 angles are 0 degrees"),
    "declared shape > memory": (
        huge_declared_shape,
        r"declared shape \(4000000, 4, 16384\) uint16: reading .* needs [\d.]+ [GT]iB but "
        r"only [\d.]+ GiB of memory is available"),
    "declared shape > memory, centre given": (
        huge_declared_shape_given_centre,
        r"declared 4000000 x 4 x 16384 uint16: the smallest slab .* needs [\d.]+ [GT]iB per "
        r"worker"),
}

# Output paths that cannot be written: case -> (out relative to the folder, fault regex).
BAD_OUTPUTS = {
    "output is a file": ("a_file", r"is a file, not a volume folder"),
    "output inside a file": ("a_file/vol.zarr", r"cannot be created: .*a_file is a file"),
    "output is the input": ("good.h5", r"is the input file"),
    "output read-only": ("read_only/vol.zarr", r"read-only"),
}

# Inputs that must WORK: a path with spaces and non-ASCII characters, a scan of one row.
def spaced_unicode(folder: Path):
    return _write(folder / "beam time 2026 – Müller" / "scan №1 (ü).h5"), []


def one_row(folder: Path):
    from tomopipe.infra.datasets import write_dxchange

    s = _scan()
    path = folder / "one_row.h5"
    folder.mkdir(parents=True, exist_ok=True)
    write_dxchange(path, s["projections"][:, :1], s["flats"][:, :1], s["darks"][:, :1],
                   s["angles_deg"])
    return path, []


GOOD_FILES = {"spaces and non-ASCII in the path": spaced_unicode, "one row": one_row}


# -- hostile documents ----------------------------------------------------------------------

def outside_target(outside: Path) -> Path:
    """A readable HDF5 file outside the data roots, shaped like the run's frames: reading it
    would succeed, so only the refusal keeps it unread."""
    outside.mkdir(parents=True, exist_ok=True)
    path = outside / "secret.h5"
    if not path.exists():
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = np.full((64, 8, 32), 7, np.uint16)
    return path


def hostile_uris(root: Path, outside: Path) -> dict[str, str]:
    """case -> the uri a StreamResource gives, each naming ``outside/secret.h5`` some way."""
    target = outside_target(outside)
    link = root / "innocent_link.h5"
    if not link.is_symlink():
        os.symlink(target, link)
    folder_link = root / "innocent_folder"
    if not folder_link.is_symlink():
        os.symlink(outside, folder_link)
    depth = len(root.resolve().parts) - 1
    return {
        "'..' escape": str(root / ("../" * depth).rstrip("/")) + str(target),
        "'..' escape in a file URI": root.resolve().as_uri() + "/" + os.path.relpath(target,
                                                                                  root),
        "relative '..' escape": os.path.relpath(target, root),
        "symbolic link to a file outside": str(link),
        "symbolic link to a folder outside": str(folder_link / target.name),
        "absolute path elsewhere": str(target),
        "file URI elsewhere": target.as_uri(),
        "file URI to another host": f"file://otherhost{target}",
        "percent-encoded '..'": root.resolve().as_uri() + "/%2e%2e/" * depth + str(target)[1:],
    }


def with_uri(docs: list[tuple[str, dict]], uri: str, which: str = "stream_resource"
             ) -> list[tuple[str, dict]]:
    """The documents with every StreamResource (or Resource) pointed at ``uri``."""
    out = []
    for name, doc in docs:
        doc = copy.deepcopy(doc)
        if name == which == "stream_resource":
            doc["uri"] = uri
        elif name == which == "resource":
            doc["root"], doc["resource_path"] = "", uri
        out.append((name, doc))
    return out


def deeply_nested(depth: int) -> dict:
    node: dict = {}
    top = node
    for _ in range(depth):
        node["x"] = {}
        node = node["x"]
    return top


def with_start(docs: list[tuple[str, dict]], **fields) -> list[tuple[str, dict]]:
    return [(n, {**d, **fields} if n == "start" else d) for n, d in docs]


def with_datum_indices(docs: list[tuple[str, dict]], stop: int) -> list[tuple[str, dict]]:
    """The first StreamDatum claims frames 0..stop (a forged or corrupt count)."""
    out, done = [], False
    for name, doc in docs:
        if name == "stream_datum" and not done:
            doc = {**doc, "indices": {"start": 0, "stop": stop}}
            done = True
        out.append((name, doc))
    return out
