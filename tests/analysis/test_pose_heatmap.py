"""The pose rate's limits and the equirect viewing heat map (sampling itself: tests/viewer/test_pose_rate.py)."""

import numpy as np
import pytest

from study.errors import AnalysisError, ProtocolError
from analysis.heatmap import viewing_heatmap
from viewer.pose import check_rate


@pytest.mark.parametrize("rate", [0, -5, 91, float("nan")])
def test_rate_must_be_positive_and_at_most_90_hz(rate):
    with pytest.raises(ProtocolError, match="pose_rate_hz"):
        check_rate(rate)


def test_heatmap_peaks_where_people_looked_and_sums_to_one():
    heat = viewing_heatmap([30.0] * 50, [20.0] * 50, width=360, height=180, sigma_deg=5.0)
    assert heat.shape == (180, 360) and heat.sum() == pytest.approx(1.0) and (heat >= 0).all()
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    # pixel centres: longitude (col + 0.5) - 180, latitude 90 - (row + 0.5)
    assert (col + 0.5 - 180, 90 - (row + 0.5)) == (pytest.approx(30.0, abs=1), pytest.approx(20.0, abs=1))
    # looking at the front leaves the back of the sphere (almost) empty
    assert heat[:, :30].sum() + heat[:, -30:].sum() < 1e-6


def test_heatmap_wraps_across_the_seam_and_stays_round_near_the_pole():
    heat = viewing_heatmap([179.0], [0.0], width=360, height=180, sigma_deg=8.0)
    # mass on both sides of ±180°: column 359 (179.5°) and column 0 (-179.5°)
    assert heat[90, 0] > 0.5 * heat[90, 359]
    pole = viewing_heatmap([0.0], [90.0], width=360, height=180, sigma_deg=8.0)
    # at the pole every longitude of the top row is equally close
    assert np.ptp(pole[0]) < 1e-3 * pole[0].max()


def test_heatmap_refuses_bad_input():
    with pytest.raises(AnalysisError, match="non-empty"):
        viewing_heatmap([], [])
    with pytest.raises(AnalysisError, match="equal"):
        viewing_heatmap([1, 2], [1])
    with pytest.raises(AnalysisError, match="NaN"):
        viewing_heatmap([np.nan], [0])
    with pytest.raises(AnalysisError, match="sigma_deg"):
        viewing_heatmap([0], [0], sigma_deg=0)
