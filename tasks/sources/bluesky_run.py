"""A Bluesky run's documents as a ScanSpec: which files, datasets, frames and angles make the scan.

Run conventions (any beamline's plan that follows them works; nothing here depends on the
simulator):

- A run is a tomography run when its start document carries a ``tomo`` mapping, or when its
  ``plan_name`` is one of the configured tomography plans (``Settings.tomo_plans``, default
  ``tomo_scan``).
- Projections are in the stream ``primary``, flat fields in ``flat``, dark fields in ``dark``
  (``start["tomo"]["streams"]`` = {"projections": ..., "flats": ..., "darks": ...} may rename
  them). Only the projections stream is required; flats and darks may be absent. Flats and
  darks may live in files of their own (each stream's StreamResources name them).
- Flats taken before and after the projections (their events' ``time`` before the first
  projection event and after the last) are told apart: each projection is then normalised with
  the flat interpolated at its place in the scan (``ScanSpec.flat_positions``).
- The detector image of a stream is its external data key (``external: "STREAM:"``, or a legacy
  ``FILESTORE:`` key); ``start["tomo"]["image_key"]`` picks one when a stream has several.
- The rotation angle is the ``primary`` data key named by ``start["tomo"]["rotation_key"]``;
  otherwise the one non-image key whose ``units`` are degrees (``*setpoint`` keys are ignored
  when that leaves exactly one). Its units come from ``tomo.angle_units``, else from the data
  key's ``units``, else degrees; radians are converted. ScanSpec angles are in degrees.
- Files are found from the documents only, never from file-name conventions:
  StreamResource ``uri`` (``file://...`` or a plain path) and ``parameters["dataset"]``
  (``parameters["path"]`` is accepted too); StreamDatum ``indices`` give the frames and
  ``seq_nums`` the events they belong to. Legacy Resource/Datum with spec ``AD_HDF5`` (and its
  SWMR variants) are understood: file ``root`` + ``resource_path``, dataset
  ``resource_kwargs["dataset"]`` or ``/entry/data/data``, frames ``point_number *
  frame_per_point`` onward, ``frame_per_point`` of them.
- Every file path from a document is resolved under the data roots with
  ``tasks.paths.resolve_data_path`` (a path outside them raises PathEscapeError).
- Image shape and dtype come from the descriptor (``shape``: last two entries are rows and
  columns; ``dtype_numpy``), else from the first file.

``scan_from_documents(docs, data_roots)`` takes any iterable of (name, doc) pairs: a list kept by
a callback, a Tiled run's ``documents()``, a JSON-lines file read back. Pages (event_page,
datum_page) are unpacked. Malformed or incomplete documents raise InputError naming the run
uid, the document and the fault.
"""

from __future__ import annotations

import bisect
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tomopipe.tasks.paths import resolve_data_path
from tomopipe.tasks.sources.spec import FrameSet, ScanSpec

from tomopipe.config import DEFAULT_TOMO_PLANS
from tomopipe.errors import InputError

DEFAULT_STREAMS = {"projections": "primary", "flats": "flat", "darks": "dark"}
AD_HDF5_SPECS = ("AD_HDF5", "AD_HDF5_SWMR", "AD_HDF5_SWMR_STREAM", "AD_HDF5_SWMR_SLICE")
AD_HDF5_DATASET = "/entry/data/data"
HDF5_MIMETYPES = ("application/x-hdf5", "application/x-hdf")
DEGREE_UNITS = {"deg", "degree", "degrees", "°"}
RADIAN_UNITS = {"rad", "radian", "radians"}

# Limits on what a run's documents may ask of this process. Real tomography runs stay far below
# them (thousands of documents, nesting depth under 10, a few kB each); a forged or corrupt run
# is refused with one line instead of exhausting memory or the interpreter's recursion limit.
MAX_DOCUMENT_DEPTH = 64  # the bus's limit too (deployments/bus.py)
MAX_DOCUMENT_BYTES = 64 * 2**20  # estimated in-memory size of one document
MAX_METADATA_BYTES = 64 * 2**10  # one start-document field carried into the ScanSpec
MAX_DOCUMENTS = 10_000_000
MAX_FRAMES = 10_000_000  # frames of one stream (a 2048-wide detector: 80 TB of uint16)


def is_tomo_run(start: Mapping, tomo_plans: Iterable[str] = DEFAULT_TOMO_PLANS) -> bool:
    """True when the start document marks a tomography run (``tomo`` mapping or plan name)."""
    if not isinstance(start, Mapping):
        return False
    if isinstance(start.get("tomo"), Mapping):
        return True
    return start.get("plan_name") in tuple(tomo_plans)


@dataclass
class _Run:
    """The documents of one run, indexed."""

    start: dict | None = None
    stop: dict | None = None
    descriptors: dict[str, dict] = field(default_factory=dict)  # uid -> descriptor
    events: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    stream_resources: dict[str, dict] = field(default_factory=dict)
    stream_datums: list[dict] = field(default_factory=list)
    resources: dict[str, dict] = field(default_factory=dict)
    datums: dict[str, dict] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.start.get("uid", "<run without uid>")) if self.start else "<run>"

    def fault(self, fault: str, where: str | None = None) -> InputError:
        return InputError(self.uid, fault, where)


def document_size(doc, *, max_depth: int = MAX_DOCUMENT_DEPTH,
                  max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[int, int] | str:
    """(estimated bytes, depth) of a document, or what is wrong with it when it exceeds
    ``max_depth`` or ``max_bytes``. Walked without recursion (a hostile document may be nested
    deeper than Python's recursion limit, or contain itself), and stopped at the first excess."""
    stack = [(doc, 1)]
    size = deepest = 0
    while stack:
        obj, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > max_depth:
            return f"nested more than {max_depth} levels deep"
        if isinstance(obj, Mapping):
            size += 64 + 16 * len(obj)
            for key, value in obj.items():
                size += len(key) if isinstance(key, str | bytes) else 8
                stack.append((value, depth + 1))
        elif isinstance(obj, list | tuple):
            size += 56 + 8 * len(obj)
            stack.extend((v, depth + 1) for v in obj)
        elif isinstance(obj, str | bytes | bytearray):
            size += 49 + len(obj)
        else:
            size += int(getattr(obj, "nbytes", 24))
        if size > max_bytes:
            unit, scale = ("MiB", 2**20) if max_bytes >= 2**20 else ("KiB", 2**10)
            return f"larger than {max_bytes // scale} {unit}"
    return size, deepest


def _collect(docs: Iterable) -> _Run:
    import event_model

    run = _Run()
    for count, item in enumerate(docs, 1):
        if count > MAX_DOCUMENTS:
            raise run.fault(f"more than {MAX_DOCUMENTS} documents in one run", "documents")
        try:
            name, doc = item
        except (TypeError, ValueError):
            raise run.fault(f"expected (name, document) pairs, got {type(item).__name__}",
                            "documents") from None
        name = getattr(name, "value", name)  # DocumentNames members
        if not isinstance(doc, Mapping):
            raise run.fault(f"{name} document is a {type(doc).__name__}, not a mapping", name)
        size = document_size(doc)
        if isinstance(size, str):
            uid = str(doc.get("uid"))[:64] if isinstance(doc.get("uid"), str) else "?"
            if name == "start" or run.start is None:  # the run is known by this start's uid
                raise InputError(uid if name == "start" else run.uid,
                                 f"the {name} document is {size}", name)
            raise run.fault(f"{name} document {uid} is {size}", name)
        if name == "start":
            if run.start is not None and doc.get("uid") != run.start.get("uid"):
                raise run.fault(f"documents of two runs mixed: also {doc.get('uid')}", "start")
            run.start = dict(doc)
        elif name == "stop":
            run.stop = dict(doc)
        elif name == "descriptor":
            run.descriptors[_uid(run, name, doc)] = dict(doc)
        elif name == "event":
            run.events[_field(run, name, doc, "descriptor")].append(doc)
        elif name == "event_page":
            for event in event_model.unpack_event_page(doc):
                run.events[_field(run, "event", event, "descriptor")].append(event)
        elif name == "stream_resource":
            run.stream_resources[_uid(run, name, doc)] = dict(doc)
        elif name == "stream_datum":
            run.stream_datums.append(dict(doc))
        elif name == "resource":
            run.resources[_uid(run, name, doc)] = dict(doc)
        elif name == "datum":
            run.datums[_field(run, name, doc, "datum_id")] = dict(doc)
        elif name == "datum_page":
            for datum in event_model.unpack_datum_page(doc):
                run.datums[_field(run, "datum", datum, "datum_id")] = dict(datum)
        # other documents (bulk_events, ...) carry nothing a scan needs
    if run.start is None:
        raise InputError("<documents>", "no start document among the documents", "start")
    if not run.start.get("uid"):
        raise InputError("<documents>", "the start document has no uid", "start")
    return run


def _uid(run: _Run, name: str, doc: Mapping) -> str:
    return _field(run, name, doc, "uid")


def _field(run: _Run, name: str, doc: Mapping, key: str):
    try:
        value = doc[key]
    except KeyError:
        raise run.fault(f"{name} document lacks {key!r}", name) from None
    if not isinstance(value, str) or not value:
        raise run.fault(f"{name} document has an invalid {key!r}: {value!r}", name)
    return value


def _tomo_md(run: _Run) -> dict:
    tomo = run.start.get("tomo", {})
    if tomo is None:
        tomo = {}
    if not isinstance(tomo, Mapping):
        raise run.fault(f"'tomo' must be a mapping, not {type(tomo).__name__}", "start.tomo")
    return dict(tomo)


def _stream_descriptors(run: _Run, stream: str) -> list[dict]:
    return [d for d in run.descriptors.values() if d.get("name") == stream]


def _image_key(run: _Run, stream: str, descriptors: list[dict], wanted: str | None) -> str:
    keys: dict[str, dict] = {}
    for d in descriptors:
        data_keys = d.get("data_keys")
        if not isinstance(data_keys, Mapping):
            raise run.fault("descriptor lacks data_keys", f"descriptor {stream!r}")
        keys.update(data_keys)
    external = [k for k, v in keys.items() if isinstance(v, Mapping) and v.get("external")]
    if wanted:
        if wanted not in keys:
            raise run.fault(f"tomo.image_key {wanted!r} is not a data key of stream {stream!r} "
                            f"(keys: {sorted(keys)})", f"descriptor {stream!r}")
        return wanted
    if len(external) == 1:
        return external[0]
    if not external:
        raise run.fault(f"stream {stream!r} has no external (STREAM:) image data key "
                        f"(keys: {sorted(keys)})", f"descriptor {stream!r}")
    raise run.fault(f"stream {stream!r} has several external data keys {sorted(external)}; "
                    "name the image with start['tomo']['image_key']", f"descriptor {stream!r}")


@dataclass(frozen=True)
class _Frame:
    seq_num: int  # event sequence number within the stream (order of acquisition)
    path: str
    dataset: str
    index: int


def _int(run: _Run, value, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise run.fault(f"{what} must be an integer, got {value!r}", where)
    return int(value)


def _range(run: _Run, doc: Mapping, key: str, where: str) -> tuple[int, int]:
    rng = doc.get(key)
    if not isinstance(rng, Mapping) or "start" not in rng or "stop" not in rng:
        raise run.fault(f"{key} must be a mapping with start and stop, got {rng!r}", where)
    start = _int(run, rng["start"], where, f"{key}.start")
    stop = _int(run, rng["stop"], where, f"{key}.stop")
    if start < 0 or stop < start:
        raise run.fault(f"{key} {start}..{stop} is not a valid range", where)
    return start, stop


def _resolve(run: _Run, path: str, data_roots, where: str) -> str:
    return str(resolve_data_path(path, data_roots, source=run.uid))


def _stream_frames(run: _Run, stream: str, desc_uids: set[str], image_key: str,
                   data_roots) -> list[_Frame]:
    """Frames of the image key in this stream, in acquisition order, from StreamDatum or Datum."""
    frames: list[_Frame] = []
    resolved: dict[str, tuple[str, str]] = {}
    datums = [d for d in run.stream_datums if d.get("descriptor") in desc_uids]
    for datum in datums:
        where = f"stream_datum {datum.get('uid', '?')}"
        sres_uid = datum.get("stream_resource")
        sres = run.stream_resources.get(sres_uid)
        if sres is None:
            raise run.fault(f"refers to stream_resource {sres_uid!r}, which is not among the "
                            "documents", where)
        if sres.get("data_key") != image_key:
            continue  # another external key (a second detector) in the same stream
        if sres_uid not in resolved:
            resolved[sres_uid] = _stream_resource_file(run, sres, data_roots)
        path, dataset = resolved[sres_uid]
        i0, i1 = _range(run, datum, "indices", where)
        if len(frames) + (i1 - i0) > MAX_FRAMES:
            raise run.fault(f"indices {i0}..{i1} make stream {stream!r} more than "
                            f"{MAX_FRAMES} frames", where)
        s0, s1 = _range(run, datum, "seq_nums", where) if "seq_nums" in datum else (0, 0)
        counted = s1 - s0 == i1 - i0 and s1 > s0
        for k, index in enumerate(range(i0, i1)):
            # seq_nums tie each frame to its event; without them keep the order received
            seq = s0 + k if counted else -1
            frames.append(_Frame(seq, path, dataset, index))
    if not datums:
        frames = _legacy_frames(run, stream, desc_uids, image_key, data_roots)
    if frames and all(f.seq_num >= 0 for f in frames):
        frames.sort(key=lambda f: f.seq_num)
    return frames


def _stream_resource_file(run: _Run, sres: Mapping, data_roots) -> tuple[str, str]:
    where = f"stream_resource {sres.get('uid', '?')}"
    mimetype = sres.get("mimetype")
    if mimetype not in HDF5_MIMETYPES:
        raise run.fault(f"unsupported mimetype {mimetype!r} (HDF5 only: {HDF5_MIMETYPES})", where)
    uri = sres.get("uri")
    if not isinstance(uri, str) or not uri:
        raise run.fault(f"uri must be a non-empty string, got {uri!r}", where)
    params = sres.get("parameters")
    if not isinstance(params, Mapping):
        raise run.fault("parameters must be a mapping", where)
    dataset = params.get("dataset", params.get("path"))
    if not isinstance(dataset, str) or not dataset:
        raise run.fault("parameters lack 'dataset' (the HDF5 dataset path)", where)
    return _resolve(run, uri, data_roots, where), dataset


def _legacy_frames(run: _Run, stream: str, desc_uids: set[str], image_key: str,
                   data_roots) -> list[_Frame]:
    frames: list[_Frame] = []
    events = [e for uid in desc_uids for e in run.events.get(uid, [])]
    events.sort(key=lambda e: e.get("seq_num", 0))
    for event in events:
        where = f"event {event.get('uid', '?')} ({stream!r} seq_num {event.get('seq_num')})"
        datum_id = event.get("data", {}).get(image_key)
        if datum_id is None:
            continue
        datum = run.datums.get(datum_id)
        if datum is None:
            raise run.fault(f"{image_key!r} refers to datum {datum_id!r}, which is not among "
                            "the documents", where)
        dwhere = f"datum {datum_id}"
        resource = run.resources.get(datum.get("resource"))
        if resource is None:
            raise run.fault(f"refers to resource {datum.get('resource')!r}, which is not among "
                            "the documents", dwhere)
        rwhere = f"resource {resource.get('uid', '?')}"
        spec = resource.get("spec")
        if spec not in AD_HDF5_SPECS:
            raise run.fault(f"unsupported resource spec {spec!r} (understood: {AD_HDF5_SPECS})",
                            rwhere)
        rpath = resource.get("resource_path")
        if not isinstance(rpath, str) or not rpath:
            raise run.fault("resource_path must be a non-empty string", rwhere)
        root = resource.get("root") or ""
        path = _resolve(run, os.path.join(root, rpath) if root else rpath, data_roots, rwhere)
        rkw = resource.get("resource_kwargs") or {}
        dkw = datum.get("datum_kwargs") or {}
        dataset = rkw.get("dataset") or AD_HDF5_DATASET
        per_point = _int(run, rkw.get("frame_per_point", 1), rwhere, "frame_per_point")
        point = _int(run, dkw.get("point_number", 0), dwhere, "point_number")
        if per_point < 1 or point < 0:
            raise run.fault(f"frame_per_point {per_point} / point_number {point} out of range",
                            dwhere)
        if len(frames) + per_point > MAX_FRAMES:
            raise run.fault(f"frame_per_point {per_point} makes stream {stream!r} more than "
                            f"{MAX_FRAMES} frames", dwhere)
        seq = _int(run, event.get("seq_num", len(frames) + 1), where, "seq_num")
        for index in range(point * per_point, (point + 1) * per_point):
            frames.append(_Frame(seq, path, dataset, index))
    return frames


def _frame_sets(frames: list[_Frame]) -> tuple[FrameSet, ...]:
    """Consecutive frames of one dataset, in increasing order, as one FrameSet each."""
    sets: list[FrameSet] = []
    current: list[int] = []
    key = None
    for f in frames:
        if key != (f.path, f.dataset) or (current and f.index <= current[-1]):
            if current:
                sets.append(FrameSet(key[0], key[1], tuple(current)))
            key, current = (f.path, f.dataset), []
        current.append(f.index)
    if current:
        sets.append(FrameSet(key[0], key[1], tuple(current)))
    return tuple(sets)


def _rotation_key(run: _Run, tomo: Mapping, data_keys: Mapping, image_key: str) -> str:
    wanted = tomo.get("rotation_key")
    if wanted:
        if wanted not in data_keys:
            raise run.fault(f"tomo.rotation_key {wanted!r} is not a data key of the projections "
                            f"stream (keys: {sorted(data_keys)})", "start.tomo.rotation_key")
        return wanted
    degrees = [k for k, v in data_keys.items()
               if k != image_key and isinstance(v, Mapping) and not v.get("external")
               and str(v.get("units", "")).strip().lower() in DEGREE_UNITS]
    if len(degrees) > 1:
        readbacks = [k for k in degrees if not k.lower().endswith("setpoint")]
        degrees = readbacks if len(readbacks) == 1 else degrees
    if len(degrees) == 1:
        return degrees[0]
    if not degrees:
        raise run.fault("no angle key: no data key of the projections stream has units of "
                        "degrees; set start['tomo']['rotation_key']", "descriptor")
    raise run.fault(f"no angle key: several data keys in degrees {sorted(degrees)}; set "
                    "start['tomo']['rotation_key']", "descriptor")


def _angle_factor(run: _Run, tomo: Mapping, key_info: Mapping) -> float:
    units = tomo.get("angle_units") or key_info.get("units") or "deg"
    u = str(units).strip().lower()
    if u in DEGREE_UNITS:
        return 1.0
    if u in RADIAN_UNITS:
        return 180.0 / math.pi
    raise run.fault(f"angle units {units!r} not understood (degrees or radians)",
                    "start.tomo.angle_units")


def _angles_for(run: _Run, stream: str, desc_uids: set[str], key: str, factor: float,
                frames: list[_Frame], planned_deg=None) -> tuple[float, ...]:
    by_seq: dict[int, float] = {}
    ordered: list[float] = []
    events = sorted((e for u in desc_uids for e in run.events.get(u, [])),
                    key=lambda e: e.get("seq_num", 0))
    if not events and planned_deg is not None:  # the run's layout, read before its events
        if len(frames) > len(planned_deg):
            raise run.fault(f"{len(frames)} frames but {len(planned_deg)} angles planned",
                            f"stream {stream!r}")
        return tuple(float(a) for a in planned_deg[:len(frames)])
    for event in events:
        data = event.get("data")
        where = f"event {event.get('uid', '?')} ({stream!r} seq_num {event.get('seq_num')})"
        if not isinstance(data, Mapping) or key not in data:
            raise run.fault(f"lacks the angle {key!r}", where)
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise run.fault(f"angle {key!r} is not a finite number: {value!r}", where)
        angle = float(value) * factor
        by_seq[event.get("seq_num", len(ordered) + 1)] = angle
        ordered.append(angle)
    if frames and all(f.seq_num >= 0 for f in frames):
        missing = sorted({f.seq_num for f in frames} - set(by_seq))
        if missing:
            raise run.fault(f"angles count != frames: {len(frames)} frames but no event (angle) "
                            f"for seq_num {missing[:5]}", f"stream {stream!r}")
        return tuple(by_seq[f.seq_num] for f in frames)
    if len(ordered) != len(frames):
        raise run.fault(f"angles count != frames: {len(ordered)} angles, {len(frames)} frames",
                        f"stream {stream!r}")
    return tuple(ordered)


def _event_times(run: _Run, stream: str) -> list[tuple[int, float]]:
    """(seq_num, time) of the stream's events, in seq_num order; [] when a time is missing."""
    uids = {d["uid"] for d in _stream_descriptors(run, stream) if "uid" in d}
    events = sorted((e for u in uids for e in run.events.get(u, [])),
                    key=lambda e: e.get("seq_num", 0))
    out = []
    for e in events:
        t = e.get("time")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            return []
        out.append((e.get("seq_num", len(out) + 1), float(t)))
    return out


def _frame_rate(run: _Run, stream: str, n_frames: int) -> float | None:
    """Projections a second, from the first and last projection events' times (None when
    they cannot say): a live run's reconstruction is sized to keep up with it."""
    times = [t for _, t in _event_times(run, stream)]
    if len(times) < 2 or not max(times) > min(times):
        return None
    # events one period apart, each with n_frames / len(times) frames
    return n_frames / len(times) * (len(times) - 1) / (max(times) - min(times))


def _flat_positions(run: _Run, streams: Mapping, flats: list[_Frame]) -> tuple[float, ...] | None:
    """When each flat frame was taken, in projection indices (ScanSpec.flat_positions), from the
    event times of the flat and projection streams; None when they cannot say."""
    if not flats:
        return None
    flat_events = _event_times(run, streams["flats"])
    proj_times = sorted(t for _, t in _event_times(run, streams["projections"]))
    if not flat_events or not proj_times:
        return None
    if all(f.seq_num >= 0 for f in flats):
        by_seq = dict(flat_events)
        if any(f.seq_num not in by_seq for f in flats):
            return None
        times = [by_seq[f.seq_num] for f in flats]
    elif len(flat_events) == len(flats):  # one frame per event, in order
        times = [t for _, t in flat_events]
    else:
        return None
    return tuple(bisect.bisect_left(proj_times, t) - 0.5 for t in times)


def _image_shape(run: _Run, info: Mapping, frames: list[_Frame], stream: str):
    shape = info.get("shape")
    dtype = info.get("dtype_numpy")
    rows = cols = None
    if isinstance(shape, list | tuple) and len(shape) >= 2 and all(
            isinstance(s, int) and s > 0 for s in shape[-2:]):
        rows, cols = int(shape[-2]), int(shape[-1])
    if rows is None or not dtype:
        # the descriptor does not say: ask the first file (it must exist by now)
        import h5py

        first = frames[0]
        try:
            with h5py.File(first.path, "r", swmr=True) as f:
                ds = f[first.dataset]
                rows, cols = rows or int(ds.shape[-2]), cols or int(ds.shape[-1])
                dtype = dtype or ds.dtype.str
        except (OSError, KeyError, IndexError) as exc:
            raise run.fault(f"image shape/dtype not in the descriptor and not readable from "
                            f"{first.path}:{first.dataset}: {exc}",
                            f"descriptor {stream!r}") from exc
    import numpy as np

    try:
        dtype_name = np.dtype(dtype).name
    except TypeError as exc:
        raise run.fault(f"dtype_numpy {dtype!r} is not a NumPy dtype", f"descriptor {stream!r}"
                        ) from exc
    return rows, cols, dtype_name


def scan_from_documents(docs: Iterable, data_roots: Iterable[str | Path], *,
                        tomo_plans: Iterable[str] = DEFAULT_TOMO_PLANS,
                        planned_angles_deg=None) -> ScanSpec:
    """The ScanSpec of one tomography run from its documents ((name, doc) pairs).

    ``label`` and ``identity`` are the run uid; ``angles_deg`` has one angle per projection
    frame; each FrameSet holds consecutive frames of one StreamResource (or Resource).
    ``planned_angles_deg``: the angles the run declared before the scan (acquisition order),
    taken for the projections when the documents carry no events (a running scan's layout,
    ``catalog.run_layout``); recorded angles always win.
    """
    data_roots, tomo_plans = list(data_roots), tuple(tomo_plans)
    run = _collect(docs)
    start = run.start
    if not is_tomo_run(start, tomo_plans):
        raise run.fault(f"not a tomography run: plan {start.get('plan_name')!r} is not one of "
                        f"{sorted(tomo_plans)} and the start document has no 'tomo' mapping",
                        "start")
    tomo = _tomo_md(run)
    streams = dict(DEFAULT_STREAMS)
    if isinstance(tomo.get("streams"), Mapping):
        streams.update({k: v for k, v in tomo["streams"].items() if k in DEFAULT_STREAMS})

    proj_stream = streams["projections"]
    proj_desc = _stream_descriptors(run, proj_stream)
    if not proj_desc:
        present = sorted({d.get("name") for d in run.descriptors.values()})
        raise run.fault(f"no tomography streams: no {proj_stream!r} (projections) stream among "
                        f"the run's streams {present}", "descriptor")
    wanted_image = tomo.get("image_key")
    parts: dict[str, list[_Frame]] = {}
    image_info: dict | None = None
    angle_key = None
    angles: tuple[float, ...] = ()
    for role in ("projections", "flats", "darks"):
        stream = streams[role]
        descs = proj_desc if role == "projections" else _stream_descriptors(run, stream)
        if not descs:
            parts[role] = []
            continue
        image_key = _image_key(run, stream, descs, wanted_image)
        desc_uids = {d["uid"] for d in descs if "uid" in d}
        frames = _stream_frames(run, stream, desc_uids, image_key, data_roots)
        if role == "projections":
            if not frames:
                raise run.fault(f"no frames: stream {proj_stream!r} has no stream_datum or datum "
                                f"for {image_key!r}", f"stream {proj_stream!r}")
            data_keys = {k: v for d in descs for k, v in d["data_keys"].items()}
            image_info = dict(data_keys[image_key])
            angle_key = _rotation_key(run, tomo, data_keys, image_key)
            factor = _angle_factor(run, tomo, data_keys[angle_key])
            angles = _angles_for(run, stream, desc_uids, angle_key, factor, frames,
                                  planned_angles_deg)
        parts[role] = frames

    rows, cols, dtype = _image_shape(run, image_info, parts["projections"], proj_stream)
    flat_positions = _flat_positions(run, streams, parts["flats"])
    pixel = tomo.get("pixel_size_um")
    stop = run.stop or {}
    for key in ("sample", "plan_name", "scan_id", "beamline", "beamline_id", "time"):
        size = document_size(start.get(key), max_bytes=MAX_METADATA_BYTES)
        if isinstance(size, str):
            raise run.fault(f"start document field {key!r} is {size} (it is carried into the "
                            f"reconstruction's parameters and provenance)", f"start.{key}")
    return ScanSpec(
        label=run.uid,
        projections=_frame_sets(parts["projections"]),
        flats=_frame_sets(parts["flats"]),
        darks=_frame_sets(parts["darks"]),
        angles_deg=angles,
        n_rows=rows,
        n_cols=cols,
        dtype=dtype,
        identity=run.uid,
        pixel_size_um=float(pixel) if isinstance(pixel, int | float) else None,
        flat_positions=flat_positions,
        extra={
            "source": "bluesky",
            "plan_name": start.get("plan_name"),
            "scan_id": start.get("scan_id"),
            "sample": start.get("sample"),
            "beamline": start.get("beamline", start.get("beamline_id")),
            "time": start.get("time"),
            "exit_status": stop.get("exit_status"),  # None while the run is still open
            "streams": streams,
            "rotation_key": angle_key,
            "center": tomo.get("center"),
            "frames_per_s": _frame_rate(run, proj_stream, len(angles)),
        },
    )
