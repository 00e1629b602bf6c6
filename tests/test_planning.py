"""Chunk planning: memory budget, shard alignment at every level, work for every worker."""

from __future__ import annotations

import pytest
from tomopipe.tasks.recon.planning import ChunkPlan, align_rows, plan, slab_memory

from tomopipe.errors import PlanError

GiB = 2**30


@pytest.mark.parametrize("n_rows,n_cols,workers,budget", [
    (2048, 2048, 4, 16 * GiB), (2048, 2048, 16, 4 * GiB), (100, 64, 3, GiB),
    (7, 64, 2, GiB), (1, 32, 4, GiB), (999, 512, 8, GiB // 2),
])
def test_slabs_cover_rows_once_aligned_to_shards(n_rows, n_cols, workers, budget):
    p = plan(n_rows, 361, n_cols, raw_itemsize=2, bytes_per_row=n_cols * 361 * 8,
             memory_budget=budget, n_workers=workers)
    slabs = p.slabs()
    assert slabs[0][0] == 0 and slabs[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in zip(slabs, slabs[1:], strict=False))
    assert len(slabs) == p.n_slabs
    for start, _ in slabs:
        for k, lev in enumerate(p.levels):
            assert start % 2**k == 0
            assert (start >> k) % lev.shards[0] == 0, (start, k, lev)
            # inner chunks tile their shard exactly
            assert all(s % c == 0 for s, c in zip(lev.shards, lev.chunks, strict=True))
    assert p.est_bytes_per_slab <= budget
    assert p.slab_rows % p.align == 0


def test_every_worker_gets_a_slab_when_rows_allow():
    p = plan(256, 180, 128, raw_itemsize=2, bytes_per_row=10**5, memory_budget=8 * GiB,
             n_workers=4)
    assert p.n_slabs >= 4
    big = plan(256, 180, 128, raw_itemsize=2, bytes_per_row=10**5, memory_budget=8 * GiB,
               n_workers=1)
    assert big.n_slabs == 1  # memory is plentiful: one worker takes everything at once


def test_slab_height_follows_memory_budget():
    kw = dict(raw_itemsize=2, bytes_per_row=2048 * 1500 * 8, n_workers=1, levels=4)
    small = plan(2048, 1500, 2048, memory_budget=2 * GiB, **kw)
    large = plan(2048, 1500, 2048, memory_budget=16 * GiB, **kw)
    assert small.slab_rows < large.slab_rows
    assert small.est_bytes_per_slab <= 2 * GiB and large.est_bytes_per_slab <= 16 * GiB
    # one more aligned step would not fit
    step = small.slab_rows + small.align
    need = sum(slab_memory(step, 1500, 2048, raw_itemsize=2,
                           bytes_per_row=kw["bytes_per_row"]).values())
    assert need > 2 * GiB


def test_impossible_budget_is_refused_with_what_to_change():
    with pytest.raises(PlanError) as err:
        plan(2048, 1500, 2048, raw_itemsize=2, bytes_per_row=2048 * 1500 * 8,
             memory_budget=300 * 2**20, n_workers=8)
    msg = str(err.value)
    assert "needs" in msg and "300.0 MiB" in msg
    assert "--memory-limit" in msg and "--workers" in msg


def test_gpu_memory_limits_the_slab():
    kw = dict(raw_itemsize=2, bytes_per_row=2048 * 1500 * 8, memory_budget=64 * GiB,
              n_workers=1, levels=2)
    host = plan(2048, 1500, 2048, **kw)
    gpu = plan(2048, 1500, 2048, gpu_memory=2 * GiB, **kw)
    assert gpu.slab_rows < host.slab_rows
    with pytest.raises(PlanError, match="GPU memory"):
        plan(2048, 1500, 2048, gpu_memory=10 * 2**20, **kw)


def test_align_rows_and_plan_round_trip():
    assert align_rows(16, 4) == 16 and align_rows(2, 4) == 8 and align_rows(1, 1) == 1
    p = plan(100, 90, 64, raw_itemsize=4, bytes_per_row=1000, memory_budget=GiB, n_workers=2)
    assert ChunkPlan.from_dict(p.to_dict()) == p


def test_memory_sizes_parse_or_fail_clearly():
    from tomopipe.infra.cluster import parse_memory

    from tomopipe.errors import ConfigError

    assert parse_memory("4GB") == 4 * 10**9 and parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(None) is None and parse_memory(1234) == 1234
    with pytest.raises(ConfigError, match="^--memory-limit: .*'lots'"):
        parse_memory("lots")
