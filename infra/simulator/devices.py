"""Simulated beamline hardware as small objects that speak the Bluesky device protocols.

- ``SimAxis``: a motor (rotation stage in degrees, sample translation in mm): set, read, describe.
- ``SimShutter``: "open" or "closed".
- ``SimStage``: where the sample sits: the pixels it was mounted off the rotation axis (the
  truth an alignment has to find) plus two translation motors under it (``stage_x``,
  ``stage_y``, in pixels); the camera renders the sample at mount + stage.
- ``SimCamera``: on each trigger renders what it would see given the shutter, the sample position
  and the rotation angle, appends the frame to an HDF5 file (SWMR, one frame per chunk) and queues
  StreamResource / StreamDatum documents for ``collect_asset_docs``. Frames of each kind (dark,
  flat, projection) go to their own file, with ONE StreamResource each: Tiled's TiledWriter files
  every frame of a StreamResource under the stream that first used it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
from ophyd.status import Status
from tomopipe.infra.simulator import optics

DATASET = "/entry/data/data"  # where area detectors' HDF5 plugins put frames
MIMETYPE = "application/x-hdf5"
KINDS = ("dark", "flat", "projection")


def _finished(obj, delay: float = 0.0) -> Status:
    status = Status(obj=obj)
    if delay > 0:
        threading.Timer(delay, status.set_finished).start()
    else:
        status.set_finished()
    return status


class SimAxis:
    """A motor that reaches its target at once (or after ``move_time`` s), read in ``units``."""

    def __init__(self, name: str, *, units: str, value: float = 0.0, move_time: float = 0.0):
        self.name, self.units, self.parent = name, units, None
        self.move_time = move_time
        self._value, self._stamp = float(value), time.time()

    @property
    def position(self) -> float:
        return self._value

    def set(self, value) -> Status:
        self._value, self._stamp = float(value), time.time()
        return _finished(self, self.move_time)

    def stop(self, *, success: bool = False) -> None:
        pass

    def read(self) -> dict:
        return {self.name: {"value": self._value, "timestamp": self._stamp}}

    def describe(self) -> dict:
        return {self.name: {"source": f"SIM:{self.name}", "dtype": "number", "shape": [],
                            "units": self.units, "precision": 4}}

    def read_configuration(self) -> dict:
        return {}

    def describe_configuration(self) -> dict:
        return {}

    @property
    def hints(self) -> dict:
        return {"fields": [self.name]}


class SimShutter:
    """The beam shutter: "open" or "closed"."""

    STATES = ("open", "closed")

    def __init__(self, name: str = "shutter", state: str = "open"):
        self.name, self.parent = name, None
        self.set(state)

    @property
    def position(self) -> str:
        return self._state

    def set(self, value) -> Status:
        if value not in self.STATES:
            raise ValueError(f"{self.name}: state must be one of {self.STATES}, not {value!r}")
        self._state, self._stamp = value, time.time()
        return _finished(self)

    def read(self) -> dict:
        return {self.name: {"value": self._state, "timestamp": self._stamp}}

    def describe(self) -> dict:
        return {self.name: {"source": f"SIM:{self.name}", "dtype": "string", "shape": []}}

    def read_configuration(self) -> dict:
        return {}

    def describe_configuration(self) -> dict:
        return {}


class SimStage:
    """The sample stage: ``mount`` (dx, dy) pixels off the axis where the sample was put, and
    the motors ``x``, ``y`` (SimAxis, pixels) that move it; ``offset()`` is where it is now."""

    def __init__(self, mount: tuple[float, float] = (0.0, 0.0)):
        self.mount = (float(mount[0]), float(mount[1]))
        self.x = SimAxis("stage_x", units="px")
        self.y = SimAxis("stage_y", units="px")

    def offset(self) -> tuple[float, float]:
        return self.mount[0] + self.x.position, self.mount[1] + self.y.position


class SimCamera:
    """A camera that sees the phantom through a simulated beam and writes HDF5 frames.

    ``render(angle_deg) -> (rows, cols)`` gives the line integrals through the sample at an angle.
    The sample is in the beam while ``sample_axis`` is within ``sample_in_range`` of 0.
    Set ``directory`` (a folder under a data root) before staging. ``roi`` (start, stop): read
    only those detector rows (the frames, flats and darks are cropped to them).
    """

    def __init__(self, name: str, *, rows: int, cols: int, render: Callable[[float], np.ndarray],
                 shutter: SimShutter, rotation: SimAxis, sample_axis: SimAxis,
                 sample_in_range: float = 1.0, fps: float | None = None, seed: int | None = None,
                 on_frame: Callable[[str, int, np.ndarray], None] | None = None,
                 roi: tuple[int, int] | None = None):
        self.name, self.parent = name, None
        self.rows, self.cols = int(rows), int(cols)
        r0, r1 = roi if roi is not None else (0, self.rows)
        if not 0 <= r0 < r1 <= self.rows:
            raise ValueError(f"{name}: rows {r0}:{r1} are not within the detector's 0:{self.rows}")
        self.roi = (int(r0), int(r1))
        self.render, self.shutter, self.rotation = render, shutter, rotation
        self.sample_axis, self.sample_in_range = sample_axis, sample_in_range
        self.fps = fps
        self.on_frame = on_frame  # observer (kind, index, frame): tests compare files with it
        self.directory: Path | None = None
        self.flat = optics.flat_field(self.rows, self.cols)[r0:r1]
        self.dark = optics.dark_offset(self.rows, self.cols)[r0:r1]
        self.rows = r1 - r0  # what the frames hold
        self._rng = np.random.default_rng(seed)
        self._files: dict[str, h5py.File] = {}
        self._resources: dict[str, str] = {}  # kind -> StreamResource uid
        self._pending: list[tuple[str, dict]] = []
        self._stamp = time.time()
        self._due: float | None = None  # when the last frame's exposure ends (monotonic)

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    # -- what the camera sees ---------------------------------------------------------------
    def current_kind(self) -> str:
        if self.shutter.position == "closed":
            return "dark"
        if abs(self.sample_axis.position) > self.sample_in_range:
            return "flat"
        return "projection"

    def _frame(self, kind: str) -> np.ndarray:
        if kind == "dark":
            integrals = None
        elif kind == "flat":
            integrals = np.zeros((self.rows, self.cols))
        else:
            integrals = self.render(self.rotation.position)[self.roi[0]:self.roi[1]]
        return optics.counts(integrals, self.flat, self.dark, self._rng)

    # -- Bluesky protocols ------------------------------------------------------------------
    def stage(self) -> list:
        if self.directory is None:
            raise RuntimeError(f"{self.name}: set the camera's directory before staging")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files.clear()
        self._resources.clear()
        self._pending.clear()
        self._due = None
        return [self]

    def unstage(self) -> list:
        for f in self._files.values():
            f.close()
        self._files.clear()
        return [self]

    def trigger(self) -> Status:
        began = time.monotonic()
        kind = self.current_kind()
        frame = self._frame(kind)
        index = self._append(kind, frame)
        self._stamp = time.time()
        sres = self._resources[kind]
        self._pending.append(("stream_datum", {
            "uid": f"{sres}/{index}",
            "stream_resource": sres,
            "descriptor": "",  # the RunEngine fills in the descriptor and seq_nums
            "indices": {"start": index, "stop": index + 1},
            "seq_nums": {"start": 0, "stop": 0},
        }))
        if self.on_frame:
            self.on_frame(kind, index, frame)
        return _finished(self, self._exposure_left(began))

    def _exposure_left(self, began: float) -> float:
        """--fps: frames come on the camera's own clock, one period after the last, whatever
        the RunEngine spends between triggers; a camera that fell behind starts the next
        exposure at once (no burst to catch up)."""
        if not self.fps:
            return 0.0
        now = time.monotonic()
        self._due = max((self._due if self._due is not None else began) + 1.0 / self.fps, now)
        return self._due - now

    def _append(self, kind: str, frame: np.ndarray) -> int:
        f = self._files.get(kind)
        if f is None:
            f = self._open(kind)
        data = f[DATASET]
        index = data.shape[0]
        data.resize(index + 1, axis=0)
        data[index] = frame
        data.flush()  # SWMR readers see each frame as soon as its event is out
        return index

    def _open(self, kind: str) -> h5py.File:
        path = self.directory / f"{self.name}_{kind}.h5"
        f = h5py.File(path, "w", libver="latest")
        f.create_dataset(DATASET, shape=(0, self.rows, self.cols),
                         maxshape=(None, self.rows, self.cols), chunks=(1, self.rows, self.cols),
                         dtype="uint16")
        f[DATASET].attrs["kind"] = kind
        f.swmr_mode = True  # all datasets exist: readers may open the file while it grows
        self._files[kind] = f
        uid = str(uuid.uuid4())
        self._resources[kind] = uid
        self._pending.append(("stream_resource", {
            "uid": uid,
            "data_key": self.image_key,
            "mimetype": MIMETYPE,
            "uri": path.resolve().as_uri(),
            "parameters": {"dataset": DATASET, "chunk_shape": [1, self.rows, self.cols],
                           "swmr": True},
            "run_start": "",  # filled in by the RunEngine
        }))
        return f

    def read(self) -> dict:
        return {}  # the image is external: its StreamDatum stands for it in the event

    def describe(self) -> dict:
        return {self.image_key: {
            "source": f"SIM:{self.name}",
            "dtype": "array",
            "dtype_numpy": np.dtype("uint16").str,
            "shape": [1, self.rows, self.cols],
            "external": "STREAM:",
        }}

    def read_configuration(self) -> dict:
        period = 1.0 / self.fps if self.fps else 0.0
        return {f"{self.name}_acquire_period": {"value": period, "timestamp": self._stamp}}

    def describe_configuration(self) -> dict:
        return {f"{self.name}_acquire_period": {"source": f"SIM:{self.name}", "dtype": "number",
                                                "shape": [], "units": "s"}}

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        pending, self._pending = self._pending, []
        yield from pending

    @property
    def hints(self) -> dict:
        return {"fields": [self.image_key]}
