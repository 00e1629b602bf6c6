"""Scan sources: resolve a file into a ScanSpec without reading its frames.

``open_scan`` recognises APS Data Exchange and NeXus NXtomo files; other HDF5 layouts are
read through explicit dataset paths. Workers then read their own rows with
``tasks.sources.hdf5io.read_slab``.
"""

from __future__ import annotations

import dataclasses
import os

from tomopipe.tasks.sources.dxchange import DATA, THETA, is_dxchange, scan_from_dxchange
from tomopipe.tasks.sources.hdf5io import open_h5, read_frames, read_slab
from tomopipe.tasks.sources.identity import combined_checksum, file_checksum
from tomopipe.tasks.sources.nexus import find_nxtomo_entry, scan_from_nexus, scan_from_paths
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

from tomopipe.errors import InputError

__all__ = ["FrameSet", "ScanSpec", "file_checksum", "open_scan", "read_frames", "read_slab"]


def open_scan(path: str | os.PathLike, *, data_path: str | None = None,
              image_key_path: str | None = None, angles_path: str | None = None,
              pixel_size_um: float | None = None, checksum: bool = True,
              require_flats: bool = True) -> ScanSpec:
    """Describe the scan in an HDF5 file: its frame sets, angles (degrees) and shape.

    The format is detected (NeXus NXtomo entry, else Data Exchange); ``data_path``,
    ``image_key_path`` and ``angles_path`` override what detection finds, or describe any other
    layout. Only metadata, angles, image keys and the last row of each frame set are read.

    Darks are optional: a scan without darks is accepted, its darks are treated as zeros by
    ``read_slab``, and ``extra["darks"]`` records that. Flats are required, unless
    ``require_flats=False`` (they come from other files: ``flatfield_files.with_field_files``).

    ``identity`` is the file's BLAKE3 checksum (``checksum=False`` skips reading the whole
    file); when frames lie in other files reached through external links, it covers those files
    too.
    """
    label = os.fspath(path)
    with open_h5(label) as f:
        entry = find_nxtomo_entry(f)
        if entry is not None:
            spec = scan_from_nexus(f, entry, label=label, data_path=data_path,
                                   image_key_path=image_key_path, angles_path=angles_path,
                                   pixel_size=pixel_size_um, require_flats=require_flats)
        elif is_dxchange(f) and image_key_path is None:
            spec = scan_from_dxchange(f, label=label, data_path=data_path,
                                      angles_path=angles_path, pixel_size=pixel_size_um,
                                      require_flats=require_flats)
        elif data_path is not None or is_dxchange(f):
            # A Data Exchange file with an image key, or any layout named by its paths.
            default_dx = is_dxchange(f)
            spec = scan_from_paths(f, label=label, data_path=data_path or DATA,
                                   image_key_path=image_key_path,
                                   angles_path=angles_path or (THETA if default_dx else None),
                                   pixel_size=pixel_size_um, require_flats=require_flats)
        else:
            raise InputError(label, "not a Data Exchange or NeXus NXtomo file (no /exchange/data "
                             "and no NXentry with definition NXtomo): give data_path, "
                             "image_key_path and angles_path for other layouts", where="/")
    main = os.path.abspath(label)
    files = sorted({fs.path for fs in spec.projections + spec.flats + spec.darks} - {main})
    if files:
        spec.extra["frame_files"] = files
    if not checksum:
        return spec
    identity = file_checksum(label)
    if files:
        identity = combined_checksum([identity] + [file_checksum(p) for p in files])
    return dataclasses.replace(spec, identity=identity)
