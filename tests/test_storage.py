"""OME-Zarr layout, pyramid, parallel shard writers and the atomic publish protocol."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05 import Image
from tomopipe.tasks.recon.planning import plan
from tomopipe.tasks.storage import publish
from tomopipe.tasks.storage.omezarr import (
    DEFAULT_CODEC,
    create_volume,
    is_complete,
    read_provenance,
    update_provenance,
    write_levels,
)
from tomopipe.tasks.storage.pyramid import build_levels, downsample_mean, level_shape

from tomopipe.errors import InputError


def validate_ome(path: Path) -> Image:
    """Validate with ome-zarr-models, the reference reader of OME-Zarr 0.5 metadata."""
    return Image.from_zarr(zarr.open_group(str(path), mode="r"))


def _reference_downsample(v: np.ndarray) -> np.ndarray:
    out = np.empty(level_shape(v.shape, 1), np.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                out[i, j, k] = v[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2].mean()
    return out


def test_downsample_matches_block_mean_even_shape():
    v = np.random.default_rng(0).random((4, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(downsample_mean(v), _reference_downsample(v), rtol=1e-6)


def test_downsample_odd_shape_repeats_last_plane():
    v = np.random.default_rng(1).random((3, 5, 7)).astype(np.float32)
    d = downsample_mean(v)
    assert d.shape == (2, 3, 4)
    padded = np.pad(v, [(0, 1), (0, 1), (0, 1)], mode="edge")
    np.testing.assert_allclose(d, _reference_downsample(padded), rtol=1e-6)


def test_slabwise_levels_equal_whole_volume_levels():
    """Each slab builds its own levels: aligned slabs must give the whole volume's pyramid."""
    v = np.random.default_rng(2).random((21, 10, 10)).astype(np.float32)  # odd tail slab
    whole = build_levels(v, 3)
    for k, lev in enumerate(whole):
        parts = [build_levels(v[z:z + 8], 3)[k] for z in range(0, 21, 8)]
        np.testing.assert_allclose(np.concatenate(parts), lev, rtol=1e-6)


def _make_volume(path: Path, n_rows=40, n=24, workers=4, pixel=None, budget=2**30):
    p = plan(n_rows, 8, n, raw_itemsize=2, bytes_per_row=1000, memory_budget=budget,
             n_workers=workers, levels=3, overhead=0)
    create_volume(path, p.levels, pixel_size_um=pixel, provenance={"key": "k1"})
    return p


def _pattern(z0: int, z1: int, n: int) -> np.ndarray:
    """Distinct, never-zero values: a lost shard (fill value 0) or a misplaced one shows."""
    z, y, x = np.meshgrid(np.arange(z0, z1), np.arange(n), np.arange(n), indexing="ij")
    return (1 + z * 10000 + y * 100 + x).astype(np.float32)


def _write_slab(args):
    path, z0, z1, n, levels = args
    write_levels(Path(path), z0, build_levels(_pattern(z0, z1, n), levels))
    return os.getpid()


def test_parallel_processes_lose_no_shard(tmp_path):
    """Several real processes write their slabs at once; every value at every level is checked."""
    out = tmp_path / "v.zarr"
    p = _make_volume(out, n_rows=64, n=24, workers=8, budget=2**20)
    slabs = p.slabs()
    assert len(slabs) >= 4
    for a, _ in slabs:  # every slab starts on a shard boundary at every level
        for k, lev in enumerate(p.levels):
            assert (a >> k) % lev.shards[0] == 0
    jobs = [(str(out), a, b, 24, p.n_levels) for a, b in slabs]
    with ProcessPoolExecutor(4) as pool:
        pids = set(pool.map(_write_slab, jobs))
    assert len(pids) >= 2
    expected = build_levels(_pattern(0, 64, 24), p.n_levels)
    group = zarr.open_group(str(out), mode="r")
    for k, exp in enumerate(expected):
        got = group[str(k)][:]
        assert got.shape == exp.shape
        np.testing.assert_array_equal(got, exp)


def test_layout_is_sharded_with_the_default_codec_and_dimension_names(tmp_path):
    out = tmp_path / "v.zarr"
    _make_volume(out, pixel=0.65)
    meta = json.loads((out / "0" / "zarr.json").read_text())
    assert meta["dimension_names"] == ["z", "y", "x"]
    shard = meta["codecs"][0]
    assert shard["name"] == "sharding_indexed"
    inner = json.dumps(shard["configuration"]["codecs"])
    assert DEFAULT_CODEC["cname"] in inner and '"shuffle"' in inner
    img = validate_ome(out)
    ms = img.ome_attributes.multiscales[0]
    assert [a.name for a in ms.axes] == ["z", "y", "x"]
    assert all(a.unit == "micrometer" and a.type == "space" for a in ms.axes)
    scales = [d.coordinateTransformations[0].scale for d in ms.datasets]
    assert scales[0] == [0.65] * 3 and scales[2] == [2.6] * 3


def test_ome_validation_without_pixel_size(tmp_path):
    out = tmp_path / "v.zarr"
    _make_volume(out, pixel=None)
    ms = validate_ome(out).ome_attributes.multiscales[0]
    assert [d.path for d in ms.datasets] == ["0", "1", "2"]


def test_publish_fresh_then_skip_and_partial_never_complete(tmp_path):
    out = tmp_path / "v.zarr"
    pub = publish.begin(out, "k1")
    assert pub.state == "fresh" and pub.partial.name == "v.zarr.partial"
    p = _make_volume(pub.partial)
    publish.record_job(pub, {"plan": p.to_dict()})
    update_provenance(pub.partial, complete=True)  # even marked, a partial is not complete
    assert not is_complete(pub.partial)
    for a, b in p.slabs():
        publish.mark_slab_done(pub.partial, (a, b))
    publish.finish(pub, {"note": "x"})
    assert is_complete(out) and not pub.partial.exists()
    assert not (out / publish.MARKER_DIR).exists()
    prov = read_provenance(out)
    assert prov["complete"] is True and prov["key"] == "k1" and prov["note"] == "x"
    assert publish.begin(out, "k1").state == "skip"
    validate_ome(out)


def test_publish_resume_keeps_done_markers(tmp_path):
    out = tmp_path / "v.zarr"
    pub = publish.begin(out, "k1")
    p = _make_volume(pub.partial)
    publish.record_job(pub, {"plan": p.to_dict()})
    first = p.slabs()[0]
    publish.mark_slab_done(pub.partial, first)
    again = publish.begin(out, "k1")
    assert again.state == "resume" and again.job["plan"] == p.to_dict()
    assert publish.slab_done(again.partial, first)
    assert not publish.slab_done(again.partial, p.slabs()[1])
    # a different key discards the unfinished partial
    other = publish.begin(out, "k2")
    assert other.state == "fresh" and not other.partial.exists()


def test_publish_different_key_needs_overwrite(tmp_path):
    out = tmp_path / "v.zarr"
    pub = publish.begin(out, "k1")
    _make_volume(pub.partial)
    publish.finish(pub, {})
    with pytest.raises(InputError, match="--overwrite"):
        publish.begin(out, "k2")
    pub2 = publish.begin(out, "k2", overwrite=True)
    assert pub2.state == "fresh"
    assert is_complete(out)  # the old volume stays until the new one is whole
    _make_volume(pub2.partial)
    publish.finish(pub2, {})
    assert read_provenance(out)["key"] == "k2"
    assert not list(tmp_path.glob("*.old-*"))


def test_publish_refuses_foreign_folder(tmp_path):
    out = tmp_path / "v.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a tomopipe volume"):
        publish.begin(out, "k1")


def test_finished_partial_is_renamed_on_next_run(tmp_path):
    out = tmp_path / "v.zarr"
    pub = publish.begin(out, "k1")
    _make_volume(pub.partial)
    update_provenance(pub.partial, key="k1", complete=True)  # as if killed just before rename
    again = publish.begin(out, "k1")
    assert again.state == "skip" and is_complete(out)


def test_read_provenance_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        read_provenance(tmp_path)
    assert not is_complete(tmp_path / "missing.zarr")
