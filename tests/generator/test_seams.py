"""Seam and pole measures on images whose seams are known."""

import numpy as np
import pytest

from generator.seams import discontinuity_score, pole_spread, seam_scores, wrap_l1_ratio


def periodic_panorama(height=64, width=128):
    """A smooth image that is periodic in x: no seam anywhere."""
    x = np.linspace(0, 2 * np.pi, width, endpoint=False)[None]
    y = np.linspace(0, np.pi, height)[:, None]
    channels = [np.sin(2 * x) * np.sin(y), np.cos(3 * x) + 0 * y, np.sin(x + 1) * np.cos(y)]
    return (np.stack(channels, axis=-1) * 100 + 128).astype(np.uint8)


def test_a_periodic_image_has_no_seam_and_rolling_it_keeps_it_seamless():
    image = periodic_panorama()
    for shift in (0, 17, 64):
        rolled = np.roll(image, shift, axis=1)
        assert discontinuity_score(rolled) < 0.5
        assert wrap_l1_ratio(rolled) < 2.0


def test_a_cut_image_has_a_seam_that_both_scores_see():
    image = periodic_panorama()
    cut = np.ascontiguousarray(image[:, :100])  # columns 100..127 dropped: left and right edges no longer meet
    assert discontinuity_score(cut) > 4 * discontinuity_score(image)
    assert wrap_l1_ratio(cut) > 5


def test_discontinuity_strip_straddles_the_seam_only():
    grey = np.full((32, 64), 0.5)
    grey[:, 20:44] = 0.6  # a band whose edges are far from the seam: flat strip, score 0
    assert discontinuity_score(grey) == 0.0
    # Band edge exactly at the seam: |â(2)| = |â(3)| = 0.1 = c and flat neighbours, so each ratio is 1.
    assert discontinuity_score(np.roll(grey, -20, axis=1)) == pytest.approx(1.0)
    # Band edge three columns inside the image: outside the across-seam columns, only in â(4) → score 0.
    assert discontinuity_score(np.roll(grey, -17, axis=1)) == 0.0


def test_pole_spread_is_zero_for_constant_pole_rows_and_large_for_noise():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    assert pole_spread(image)["top"] == pytest.approx(1.0, abs=0.2)
    image[:2] = 90
    image[-2:] = 10
    spread = pole_spread(image)
    assert spread["top"] == pytest.approx(0.0, abs=1e-9) and spread["bottom"] == pytest.approx(0.0, abs=1e-9)


def test_seam_scores_bundle():
    scores = seam_scores(periodic_panorama())
    assert set(scores) == {"discontinuity", "wrap_l1_ratio", "pole_top", "pole_bottom"}
