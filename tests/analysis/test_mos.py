import numpy as np
import pandas as pd
import pytest

from analysis.mos import SINGLE_OBSERVER_NOTE, mean_opinion_score, student_t_quantile, summarise


@pytest.mark.parametrize("n, t", [(15, 2.1448), (24, 2.0687), (28, 2.0518), (32, 2.0395)])
def test_t_quantiles_of_the_standards_notes(n, t):
    assert student_t_quantile(n) == pytest.approx(t, abs=5e-5)


def test_mos_sd_and_t_interval_by_hand():
    # Scores 1..5: mean 3, S = sqrt(10/4) = 1.58114, t(0.975, 4) = 2.77645, half width = 2.77645 * 1.58114 / sqrt(5).
    frame = pd.DataFrame({"stimulus": ["a"] * 5 + ["b"] * 4, "value": [1, 2, 3, 4, 5, 4, 4, 5, 3]})
    out = mean_opinion_score(frame, ["stimulus"]).set_index("stimulus")
    assert out.loc["a", "mos"] == 3.0
    assert out.loc["a", "sd"] == pytest.approx(1.5811388, abs=1e-6)
    assert out.loc["a", "n"] == 5
    assert out.loc["a", "half_width"] == pytest.approx(2.7764451 * 1.5811388 / np.sqrt(5), abs=1e-6)
    assert out.loc["a", "ci_low"] == pytest.approx(3.0 - 1.9632, abs=1e-4)
    # b: 4, 4, 5, 3 -> mean 4, S = sqrt(2/3), t(0.975, 3) = 3.18245.
    assert out.loc["b", "half_width"] == pytest.approx(3.1824463 * np.sqrt(2 / 3) / 2, abs=1e-6)


def test_n_32_uses_2_0395():
    values = np.tile([3, 4], 16)
    out = mean_opinion_score(pd.DataFrame({"g": 0, "value": values}), ["g"]).iloc[0]
    assert out["half_width"] == pytest.approx(2.0395 * values.std(ddof=1) / np.sqrt(32), abs=1e-4)


def test_single_participant_gives_nan_ci_and_a_note():
    out = mean_opinion_score(pd.DataFrame({"g": ["x"], "value": [4]}), ["g"]).iloc[0]
    assert out["mos"] == 4 and out["n"] == 1
    assert np.isnan(out["half_width"]) and np.isnan(out["ci_low"])
    assert out["note"] == SINGLE_OBSERVER_NOTE


def test_summaries_average_each_participant_first():
    # p1 rates two stimuli of the scene 2 and 4 (mean 3); p2 rates one stimulus 5: MOS = (3 + 5) / 2 with N = 2.
    frame = pd.DataFrame({
        "participant": ["p1", "p1", "p2"], "scale": "ACR", "scene": "street", "value": [2, 4, 5],
    })
    out = summarise(frame, ["scale", "scene"]).iloc[0]
    assert out["mos"] == 4.0 and out["n"] == 2
    assert out["sd"] == pytest.approx(np.sqrt(2.0))
