"""Pose sampling at the protocol rate and the equirect viewing heat map."""

import numpy as np
import pytest

from study.errors import AnalysisError, ProtocolError
from viewer.camera import view_rotation
from analysis.heatmap import viewing_heatmap
from viewer.pose import PoseLogger


class RecordingEngine:
    def __init__(self):
        self.batches = []

    def record_poses(self, trial_index, samples):
        self.batches.append((trial_index, list(samples)))


@pytest.mark.parametrize("frame_hz, rate_hz", [(90, 30), (90, 90), (72, 30), (30, 30)])
def test_samples_follow_the_protocol_rate_whatever_the_frame_rate(frame_hz, rate_hz):
    logger = PoseLogger(rate_hz)
    rng = np.random.default_rng(1)
    t = 0.0
    while t < 2.0:
        logger.offer(t, view_rotation(40.0 * t, 10.0, 0.0))
        t += (1.0 / frame_hz) * rng.uniform(0.9, 1.1)      # jittery frames
    expected = 2.0 * rate_hz
    assert len(logger.samples) <= expected + 1
    # a frame can take only one sample: at the frame rate itself, late frames cost a few grid points
    assert len(logger.samples) >= (expected - 1 if frame_hz >= 2 * rate_hz else 0.85 * expected)
    times = np.array([s[0] for s in logger.samples])
    assert (np.diff(times) > 0).all()
    # each sample's angles are the head's at that time
    yaw, pitch, roll = np.array([s[1:4] for s in logger.samples]).T
    np.testing.assert_allclose(yaw, 40.0 * times, atol=1e-9)
    np.testing.assert_allclose(pitch, 10.0, atol=1e-9)
    np.testing.assert_allclose(roll, 0.0, atol=1e-9)


def test_samples_go_to_the_engine_in_one_batch_and_the_logger_restarts():
    logger, engine = PoseLogger(30), RecordingEngine()
    for frame in range(45):
        logger.offer(frame / 90, np.eye(3))
    assert logger.flush(engine, trial_index=7) == 15
    assert len(engine.batches) == 1 and engine.batches[0][0] == 7 and len(engine.batches[0][1]) == 15
    logger.reset()
    logger.offer(0.0, np.eye(3))
    assert logger.samples[0][0] == 0.0
    assert logger.flush(RecordingEngine(), 8) == 1


@pytest.mark.parametrize("rate", [0, -5, 91, float("nan")])
def test_rate_must_be_positive_and_at_most_90_hz(rate):
    with pytest.raises(ProtocolError, match="pose_rate_hz"):
        PoseLogger(rate)


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
