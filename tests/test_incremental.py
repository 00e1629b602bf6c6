"""Incremental FBP (tasks/recon/incremental.py) and acquisition orders (angle_plan.py).

Plain arrays: exact line integrals of the analytic phantom, no mocks. The final running sum is
compared with the one-shot CPU Fourier backend on the same angles with the same weights.
"""

import numpy as np
import pytest
from tomopipe.tasks.phantom import phantom_projections
from tomopipe.tasks.recon.fourier import FourierBackend, angle_weights
from tomopipe.tasks.recon.incremental import (
    FBPAccumulator,
    correlation,
    frame_weights,
)
from tomopipe.tasks.sources.angle_plan import (
    ORDERS,
    angle_plan_metadata,
    angle_sequence,
    planned_angles_deg,
)

N, ROWS, N_ANGLES = 96, 3, 240
CENTER = N / 2 + 0.7  # off the middle, so the centre's phase ramp is exercised


def sinograms(angles_deg):
    proj = phantom_projections(N, ROWS, np.deg2rad(angles_deg), center=CENTER)
    return np.ascontiguousarray(np.swapaxes(proj, 0, 1))  # (rows, angles, cols)


def accumulate(sinos, angles_deg, weights, batches, **options):
    acc = FBPAccumulator(ROWS, N, CENTER, weights, filter_name="shepp", **options)
    start = 0
    for size in batches:
        idx = np.arange(start, min(start + size, len(angles_deg)))
        acc.add(sinos[:, idx], np.deg2rad(angles_deg[idx]), idx)
        start += size
    return acc


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("order", ORDERS)
def test_running_sum_equals_one_shot_for_every_order(order):
    angles = angle_sequence(N_ANGLES, order)
    sinos = sinograms(angles)
    # irregular batches, as a stream that sometimes falls behind delivers them
    batches = [1, 7, 30, 2, 64, 13, 100, 40]
    acc = accumulate(sinos, angles, frame_weights(N_ANGLES, np.deg2rad(angles)), batches,
                     eps=1e-6)
    one_shot = FourierBackend(nthreads=1, eps=1e-6).reconstruct(
        sinos, np.deg2rad(angles), CENTER, filter_name="shepp")
    assert acc.frames_in == N_ANGLES and acc.fraction == pytest.approx(1.0)
    assert relative_error(acc.sum, one_shot) < 2e-4
    assert np.array_equal(acc.partial_view(), acc.sum)


def test_default_tolerance_matches_the_engine_backend():
    """At the engine's NUFFT tolerance (1e-3) each batch adds its own small error."""
    angles = angle_sequence(N_ANGLES, "golden")
    sinos = sinograms(angles)
    acc = accumulate(sinos, angles, frame_weights(N_ANGLES, np.deg2rad(angles)), [24] * 10)
    one_shot = FourierBackend(nthreads=1).reconstruct(sinos, np.deg2rad(angles), CENTER,
                                                      filter_name="shepp")
    assert relative_error(acc.sum, one_shot) < 1e-2
    assert correlation(acc.sum[1], one_shot[1]) > 0.9999


def test_uniform_weights_without_a_plan_equal_one_shot_on_even_angles():
    angles = angle_sequence(N_ANGLES, "interlaced")
    weights = frame_weights(N_ANGLES)  # no planned angles: pi / n each
    assert np.allclose(weights, angle_weights(np.deg2rad(angles)))
    sinos = sinograms(angles)
    acc = accumulate(sinos, angles, weights, [50] * 5, eps=1e-6)
    one_shot = FourierBackend(nthreads=1, eps=1e-6).reconstruct(
        sinos, np.deg2rad(angles), CENTER, filter_name="shepp")
    assert relative_error(acc.sum, one_shot) < 2e-4


def test_golden_partial_view_at_a_quarter_resembles_the_final_slice():
    angles = angle_sequence(N_ANGLES, "golden")
    sinos = sinograms(angles)
    weights = frame_weights(N_ANGLES, np.deg2rad(angles))
    acc = accumulate(sinos, angles, weights, [N_ANGLES // 4])
    quarter = acc.partial_view()[1].copy()
    assert acc.fraction == pytest.approx(0.25, abs=0.02)
    rest = np.arange(N_ANGLES // 4, N_ANGLES)
    acc.add(sinos[:, rest], np.deg2rad(angles[rest]), rest)
    final = acc.partial_view()[1]
    assert correlation(quarter, final) >= 0.9
    # the rescaled partial keeps the attenuation level of the final slice
    assert quarter.mean() == pytest.approx(final.mean(), rel=0.05)
    # while a sequential quarter (45 degrees) does not look like the slice
    seq = angle_sequence(N_ANGLES, "sequential")
    sinos_seq = sinograms(seq)
    acc_seq = accumulate(sinos_seq, seq, frame_weights(N_ANGLES), [N_ANGLES // 4])
    assert correlation(acc_seq.partial_view()[1], final) < correlation(quarter, final)


def test_frames_are_added_once_and_shapes_checked():
    angles = angle_sequence(8, "sequential")
    sinos = sinograms(angles)
    acc = FBPAccumulator(ROWS, N, CENTER, frame_weights(8))
    acc.add(sinos[:, :2], np.deg2rad(angles[:2]), [0, 1])
    with pytest.raises(ValueError, match="added twice"):
        acc.add(sinos[:, 1:3], np.deg2rad(angles[1:3]), [1, 2])
    with pytest.raises(ValueError, match="outside"):
        acc.add(sinos[:, :1], np.deg2rad(angles[:1]), [8])
    with pytest.raises(ValueError, match="does not match"):
        acc.add(sinos[:2, 2:3], np.deg2rad(angles[2:3]), [2])
    assert acc.frames_in == 2
    assert 0 < acc.fraction < 1


def test_correlation_figure():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 16))
    assert correlation(a, 3 * a + 1) == pytest.approx(1.0)
    assert correlation(a, -a) == pytest.approx(-1.0)
    assert correlation(a, np.zeros_like(a)) == 0.0


@pytest.mark.parametrize("order", ORDERS)
def test_angle_orders(order):
    angles = angle_sequence(180, order)
    assert angles.shape == (180,)
    assert np.all((angles >= 0) & (angles < 180))
    if order == "golden":
        # any prefix spreads over the half-turn: the largest gap of the first 20 is small
        first = np.sort(angles[:20])
        gaps = np.diff(np.concatenate([first, [first[0] + 180]]))
        assert gaps.max() < 3 * 180 / 20
        assert np.unique(np.round(angles, 6)).size == 180
    else:
        assert np.allclose(np.sort(angles), np.arange(180))  # every 1-degree step once
    if order == "interlaced":
        assert np.allclose(angles[:4], [0, 4, 8, 12])
        assert angles[45] == pytest.approx(2.0)  # the second pass is offset by half a step
    md = {"angle_plan": angle_plan_metadata(180, order)}
    assert np.allclose(planned_angles_deg(md), angles)


def test_planned_angles_from_metadata():
    assert planned_angles_deg({"planned_angles_deg": [0, 1.5, 3]}).tolist() == [0, 1.5, 3]
    assert planned_angles_deg({"angle_plan": {"order": "spiral", "n_angles": 3}}) is None
    assert planned_angles_deg({"angle_plan": {"order": "golden"}}) is None
    assert planned_angles_deg({"planned_angles_deg": ["a"]}) is None
    assert planned_angles_deg(None) is None
    with pytest.raises(ValueError, match="unknown angle order"):
        angle_sequence(4, "spiral")
