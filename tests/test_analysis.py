"""The analysis science (tasks/analysis): the sample's box, offset from the axis and rows in
volumes of analytic phantoms (on the axis, off it, reconstructed from noisy projections), no
sample in noise, the agent's decisions (bad analysis never moves a motor), convergence, and the
analysis documents."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from tomopipe.infra.simulator.run import sample_features
from tomopipe.tasks import phantom
from tomopipe.tasks.analysis.convergence import assess, correlation
from tomopipe.tasks.analysis.decisions import align_decision, stop_decision
from tomopipe.tasks.analysis.documents import ANALYSIS_PLAN, analysis_documents, decision_documents
from tomopipe.tasks.analysis.measure import measurements
from tomopipe.tasks.analysis.sample import find_sample, scale_box

N, ROWS = 128, 16


def grain(dx: float = 0.0, dy: float = 0.0):
    """The simulator's small sample, moved (dx, dy) pixels off the axis."""
    return tuple(replace(f, cx=f.cx + dx / N, cy=f.cy + dy / N)
                 for f in sample_features(N, "grain"))


def reconstruct(features, n_angles: int = 45, noise: float = 0.02, seed: int = 0):
    from tomopipe.tasks.preprocess.center import auto_center
    from tomopipe.tasks.recon.backends import get_backend

    angles = np.linspace(0, math.pi, n_angles, endpoint=False)
    proj = phantom.phantom_projections(N, ROWS, angles, features=features)
    proj += np.random.default_rng(seed).normal(0, noise, proj.shape).astype(np.float32)
    sinos = proj.transpose(1, 0, 2)
    centre = auto_center(sinos, angles)
    return get_backend("fourier", nthreads=1).reconstruct(sinos, angles, centre.value), centre


def test_sample_on_the_axis_is_centred():
    found = find_sample(phantom.phantom_volume(N, ROWS, grain()))
    assert found.found, found.reason
    assert abs(found.offset_px[0]) <= 0.5 and abs(found.offset_px[1]) <= 0.5
    assert found.rows == (4, 12)  # the grain holds the middle half of the rows


@pytest.mark.parametrize("dx, dy", [(20, -10), (-15, 12), (7, 0)])
def test_off_axis_sample_offset_and_box(dx, dy):
    vol = phantom.phantom_volume(N, ROWS, grain(dx, dy))
    found = find_sample(vol)
    assert found.found, found.reason
    assert found.offset_px == pytest.approx((dx, dy), abs=1.0)
    z0, z1, y0, y1, x0, x1 = found.box
    truth = np.argwhere(vol > 0.5 * vol.max())  # the body's voxels, from the phantom itself
    assert x0 <= truth[:, 2].min() and truth[:, 2].max() < x1
    assert y0 <= truth[:, 1].min() and truth[:, 1].max() < y1


def test_off_axis_sample_found_in_a_noisy_quick_reconstruction():
    rec, centre = reconstruct(grain(18, -9))
    found = find_sample(rec)
    assert found.found, found.reason
    assert found.offset_px == pytest.approx((18, -9), abs=1.5)
    assert found.rows == (4, 12)
    assert centre.confidence >= 0.5


def test_noise_alone_is_no_sample():
    found = find_sample(np.random.default_rng(1).normal(0, 1, (ROWS, N, N)))
    assert not found.found
    assert "no sample" in found.reason
    assert not find_sample(np.zeros((4, 32, 32))).found


def test_bad_volume_is_one_clear_error():
    with pytest.raises(ValueError, match="volume: expected"):
        find_sample(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        find_sample(np.full((2, 8, 8), np.nan))


def test_box_on_a_coarser_level_scales_to_the_full_volume():
    vol = phantom.phantom_volume(N, ROWS, grain(20, 0))
    coarse = vol[:, ::2, ::2]
    scaled = scale_box(find_sample(coarse), 2, vol.shape)
    assert scaled.offset_px[0] == pytest.approx(20, abs=2.0)
    assert scaled.shape == vol.shape


def _analysis(**kw):
    vol = phantom.phantom_volume(N, ROWS, grain(12, -6))
    return {**measurements(vol, center=64.0, center_confidence=0.9, center_method="vo"),
            "raw_uid": "quick", **kw}


def test_align_decision_moves_the_sample_onto_the_axis_and_limits_rows():
    d = align_decision(_analysis(), detector_rows=ROWS)
    assert d.action == "align" and d.acts
    assert d.moves["stage_x"] == pytest.approx(-12, abs=1) and d.moves["stage_y"] == \
        pytest.approx(6, abs=1)
    assert d.scan == {"row_start": 3, "row_stop": 13}  # rows 4:12 and one either side
    assert d.inputs["raw_uid"] == "quick" and d.inputs["center_confidence"] == 0.9


def test_bad_analysis_never_moves_a_motor():
    no_sample = _analysis(sample_found=0, sample_reason="no sample: only noise")
    d = align_decision(no_sample, detector_rows=ROWS)
    assert d.action == "refuse" and not d.moves and not d.scan and not d.acts
    assert "only noise" in d.reason
    for conf in (0.1, None, float("nan")):
        d = align_decision(_analysis(center_confidence=conf), detector_rows=ROWS)
        assert d.action == "refuse" and not d.moves and "confidence" in d.reason


def test_convergence_needs_fraction_and_a_streak():
    assert not assess([]).converged
    assert not assess([(0.1, None), (0.15, 0.999), (0.18, 0.999)]).converged  # too few angles
    assert not assess([(0.3, 0.9), (0.4, 0.999), (0.5, 0.98)]).converged  # streak broken
    c = assess([(0.3, 0.9), (0.4, 0.996), (0.5, 0.999)])
    assert c.converged and c.streak == 2
    assert stop_decision(c.to_dict(), uid="u").action == "stop"
    assert stop_decision(assess([(0.5, 0.5)]).to_dict(), uid="u").action == "continue"
    assert correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_successive_golden_updates_converge_to_the_final_volume():
    """The stop figure against the truth: once successive partial reconstructions of a
    golden-ratio scan correlate at the threshold, the partial one correlates with the full
    scan's reconstruction nearly as well."""
    from tomopipe.tasks.recon.backends import get_backend
    from tomopipe.tasks.sources.angle_plan import angle_sequence

    n_angles = 240
    angles = np.deg2rad(angle_sequence(n_angles, "golden"))
    feats = grain()
    proj = phantom.phantom_projections(N, 1, angles, features=feats)[:, :1]
    proj += np.random.default_rng(3).normal(0, 0.02, proj.shape).astype(np.float32)
    sinos = proj.transpose(1, 0, 2)
    backend = get_backend("fourier", nthreads=1)
    full = backend.reconstruct(sinos, angles, N / 2)[0]
    updates, previous, stopped_at = [], None, None
    for k in range(24, n_angles + 1, 24):
        part = backend.reconstruct(sinos[:, :k], angles[:k], N / 2)[0]
        corr = correlation(part, previous) if previous is not None else None
        updates.append((k / n_angles, corr))
        previous = part
        if stopped_at is None and assess(updates, threshold=0.98).converged:
            stopped_at = (k, correlation(part, full))
    assert stopped_at is not None and stopped_at[0] < n_angles
    assert stopped_at[1] >= 0.95


def test_analysis_documents_name_the_raw_run():
    docs = analysis_documents("raw-1", _analysis(), sample="s", beamline="sim")
    assert [n for n, _ in docs] == ["start", "descriptor", "event", "stop"]
    start, desc, event, stop = (d for _, d in docs)
    assert start["plan_name"] == ANALYSIS_PLAN and start["analyzes"] == "raw-1"
    assert event["descriptor"] == desc["uid"] and stop["run_start"] == start["uid"]
    assert event["data"]["offset_x_px"] == pytest.approx(12, abs=1)
    assert set(event["data"]) == set(desc["data_keys"])
    d = align_decision(_analysis(sample_found=0), detector_rows=ROWS).to_dict()
    ddocs = decision_documents("raw-1", d, analysis_uid=start["uid"])
    assert ddocs[0][1]["decision"]["action"] == "refuse"
    assert ddocs[0][1]["analysis_uid"] == start["uid"]
