"""Streaming: acquisition orders through the normal path, the streaming runner on a real Dask
cluster following a real simulated scan (RunEngine, SWMR HDF5 files), live views in OME-Zarr.

Nothing is mocked: the simulator's camera writes frames while the runner's workers read them.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from tomopipe.infra.simulator.run import simulate
from tomopipe.tasks.phantom import phantom_volume, scale_features, DEFAULT_FEATURES
from tomopipe.tasks.recon.engine import reconstruct
from tomopipe.tasks.recon.incremental import correlation
from tomopipe.tasks.recon.params import ReconParams
from tomopipe.tasks.sources.bluesky_run import scan_from_documents

from tomopipe.config import load_settings


class Docs:
    """A RunEngine callback that keeps the documents (name, doc)."""

    def __init__(self):
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.items.append((getattr(name, "value", name), doc))


def truth(size, rows):
    features = scale_features(DEFAULT_FEATURES, 512.0 / size)
    return phantom_volume(size, rows, features=features)


@pytest.mark.parametrize("order", ["interlaced", "golden"])
def test_every_angle_order_reconstructs_through_the_normal_path(tmp_path, order):
    """Centre finding and the one-shot reconstruction on a scan taken out of angle order."""
    settings = load_settings(tmp_path / "home")
    size, rows = 64, 4
    docs = Docs()
    simulate(settings, size=size, rows=rows, angles=180, fps=None, sample="s", callbacks=[docs],
             n_flats=4, n_darks=2, seed=5, angle_order=order)
    start = docs.items[0][1]
    assert start["tomo"]["angle_plan"]["order"] == order
    spec = scan_from_documents(docs.items, settings.data_roots)
    assert not np.all(np.diff(spec.angles_deg) > 0)  # really out of order
    result = reconstruct(spec, ReconParams(), tmp_path / f"{order}.zarr", workers=0)
    assert abs(result.center - size / 2) < 0.5, result.center_method
    volume = zarr.open_group(str(tmp_path / f"{order}.zarr"), mode="r")["0"][:]
    expected = truth(size, rows)
    assert correlation(volume[rows // 2], expected[rows // 2]) > 0.9
