"""Eye-tracker validation: a synthetic tracker of known bias, noise and losses is measured as it was made."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.errors import AnalysisError, ProtocolError
from study.gaze_validation import PER_TARGET_COLUMNS, validation_metrics
from study.scanpath import TrackerModel, validation_gaze
from study.validation_targets import grid_targets


def recorded(tracker: TrackerModel, seed: int = 0, targets=None) -> tuple[pd.DataFrame, tuple]:
    recording = validation_gaze(targets or grid_targets(), np.random.default_rng(seed), tracker=tracker)
    s = recording.samples
    frame = pd.DataFrame({"target": recording.target, "t": s.t, "yaw_deg": s.yaw_deg, "pitch_deg": s.pitch_deg,
                          "valid": s.valid})
    return frame, recording.targets


@pytest.mark.parametrize("bias", [(1.0, 0.0), (0.0, -1.0), (0.6, 0.8)])
def test_a_one_degree_bias_is_reported_as_one_degree(bias):
    frame, targets = recorded(TrackerModel(bias_deg=bias, noise_deg=0.1))
    result = validation_metrics(frame, targets)
    assert result.accuracy_deg == pytest.approx(1.0, abs=0.05)
    assert result.per_target["accuracy_deg"].between(0.95, 1.05).all()
    assert not result.needs_recalibration(1.5) and result.needs_recalibration(0.5)


def test_precision_matches_the_noise_it_was_made_with():
    sigma = 0.15
    frame, targets = recorded(TrackerModel(noise_deg=sigma, blinks_per_s=0, loss_probability=0), seed=3)
    result = validation_metrics(frame, targets)
    # white noise of σ per axis: successive samples differ by √2·σ per axis → RMS-S2S = 2σ; SD around the mean = √2·σ
    assert result.precision_rms_s2s_deg == pytest.approx(2 * sigma, rel=0.06)
    assert result.precision_sd_deg == pytest.approx(math.sqrt(2) * sigma, rel=0.06)
    assert result.accuracy_deg == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.08)  # Rayleigh mean
    assert result.data_loss_pct == 0.0


def test_data_loss_counts_invalid_samples_after_the_discarded_start():
    frame, targets = recorded(TrackerModel(noise_deg=0.0, blinks_per_s=0, loss_probability=0))
    late = frame["t"] >= 0.5
    lost_target = frame.index[late & (frame["target"] == 4)][:60]  # half of target 4's measured second
    frame.loc[lost_target, "valid"] = False
    frame.loc[lost_target, ["yaw_deg", "pitch_deg"]] = np.nan
    frame.loc[~late, "valid"] = False  # losses while the eye finds a target are not counted
    result = validation_metrics(frame, targets)
    table = result.per_target
    assert list(table.columns) == list(PER_TARGET_COLUMNS)
    assert table.loc[4, "data_loss_pct"] == pytest.approx(100 * 60 / table.loc[4, "n_samples"])
    assert table.drop(index=4)["data_loss_pct"].eq(0).all()
    assert result.data_loss_pct == pytest.approx(100 * 60 / table["n_samples"].sum())
    assert table["accuracy_deg"].max() < 1e-6
    assert table["n_samples"].between(118, 122).all()  # 1 s at 120 Hz per target


def test_a_target_never_seen_reports_full_loss_and_no_accuracy():
    frame, targets = recorded(TrackerModel(noise_deg=0.1))
    frame.loc[frame["target"] == 2, "valid"] = False
    result = validation_metrics(frame, targets)
    assert result.per_target.loc[2, "data_loss_pct"] == 100.0 and np.isnan(result.per_target.loc[2, "accuracy_deg"])
    assert np.isfinite(result.accuracy_deg)  # the mean over the targets that were seen


def test_bad_targets_and_samples_are_one_line_errors():
    frame, targets = recorded(TrackerModel())
    with pytest.raises(ProtocolError, match=r"validation targets\[8\] = \[0, 100\]: pitch 100° is outside ±90°"):
        validation_metrics(frame, [*targets[:8], (0, 100)])
    with pytest.raises(AnalysisError, match=r"lack the columns \['valid'\]"):
        validation_metrics(frame.drop(columns="valid"), targets)
    with pytest.raises(AnalysisError, match=r"name targets \[8\] but only 8 targets"):
        validation_metrics(frame, targets[:8])
