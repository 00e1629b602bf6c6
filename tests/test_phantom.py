"""The analytic phantom: exact line integrals, a matching raster, one geometry for both."""

import numpy as np
import pytest
from tomopipe.tasks.phantom import (
    BODY_MU,
    DEFAULT_FEATURES,
    MATERIALS,
    Feature,
    phantom_projections,
    phantom_volume,
    scale_features,
    unit_disk,
)


def test_projection_of_a_disk_is_its_chord_length():
    n, radius = 64, 0.3
    angles = np.linspace(0, np.pi, 7, endpoint=False)
    proj = phantom_projections(n, 1, angles, center=n / 2, features=unit_disk(radius), subrays=1)
    r = radius * n
    u = np.arange(n) - n / 2
    chord = 2 * np.sqrt(np.clip(r**2 - u**2, 0, None))
    for a in range(len(angles)):
        np.testing.assert_allclose(proj[a, 0], chord, atol=1e-3)


def test_projections_conserve_the_volume_mass():
    """Every view integrates to the slice's total attenuation (volume and projections agree)."""
    n, rows = 96, 6
    angles = np.linspace(0, 2 * np.pi, 13)
    proj = phantom_projections(n, rows, angles)
    vol = phantom_volume(n, rows)
    mass = vol.sum(axis=(1, 2))
    np.testing.assert_allclose(proj.sum(axis=2), np.broadcast_to(mass, (13, rows)), rtol=2e-3)


def test_off_centre_feature_lands_where_the_geometry_says():
    """x = ix - n//2, y = iy - n//2; u = x cos + y sin; column = center + u."""
    n, center = 80, 37.25
    blob = (Feature("blob", 1.0, cx=0.2, cy=-0.1, a=0.05, b=0.05),)
    vol = phantom_volume(n, 1, features=blob)[0]
    iy, ix = np.indices(vol.shape)
    assert (vol * ix).sum() / vol.sum() - n // 2 == pytest.approx(0.2 * n, abs=0.02)
    assert (vol * iy).sum() / vol.sum() - n // 2 == pytest.approx(-0.1 * n, abs=0.02)
    angles = np.array([0.0, 0.7, np.pi / 2, 2.0, 4.0])
    proj = phantom_projections(n, 1, angles, center=center, features=blob)[:, 0]
    cols = np.arange(n)
    centroid = (proj * cols).sum(axis=1) / proj.sum(axis=1)
    expected = center + 0.2 * n * np.cos(angles) - 0.1 * n * np.sin(angles)
    np.testing.assert_allclose(centroid, expected, atol=0.02)


def test_default_phantom_has_materials_slices_and_realistic_transmission():
    n, rows = 512, 8
    proj = phantom_projections(n, rows, np.linspace(0, np.pi, 90, endpoint=False))
    assert 1.5 < proj.max() < 2.5  # ~10-20 % transmission on the longest ray
    vol = phantom_volume(n, rows, supersample=1)
    # every material's value occurs in the raster, and rows differ along z
    for value in MATERIALS.values():
        assert np.isclose(vol, value, atol=1e-6).sum() > 50
    assert not np.allclose(vol[0], vol[-1])
    # nothing near the edge of the field of view (the inscribed circle)
    iy, ix = np.indices((n, n))
    outside = (iy - n // 2) ** 2 + (ix - n // 2) ** 2 > (0.45 * n) ** 2
    assert np.all(vol[:, outside] == 0)


def test_scale_and_custom_features():
    doubled = scale_features(DEFAULT_FEATURES, 2.0)
    assert doubled[0].value == pytest.approx(2 * BODY_MU)
    vol = phantom_volume(32, 2, features=unit_disk(0.25))
    assert vol.max() == pytest.approx(1.0)
    assert vol.sum() / 2 == pytest.approx(np.pi * 8**2, rel=0.01)


def test_ellipsoid_sections_shrink_towards_their_ends():
    ball = (Feature("ball", 1.0, a=0.3, b=0.3, z0=0.0, z1=1.0, shape="ellipsoid"),)
    vol = phantom_volume(64, 8, features=ball)
    areas = vol.sum(axis=(1, 2))
    assert areas[0] < areas[2] < areas[4]
    np.testing.assert_allclose(areas, areas[::-1], rtol=1e-6)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n_rows"):
        phantom_volume(32, 0)
    with pytest.raises(ValueError, match="phantom size"):
        phantom_projections(1, 2, [0.0])
