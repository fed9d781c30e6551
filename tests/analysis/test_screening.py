import numpy as np
import pytest
from scipy import stats

from analysis.screening import bt500_screening, p913_bias_removal
from _analysis_data import answers_from_matrix

NORMAL_COUNTS = [1, 4, 10, 4, 1]  # values 1..5 for 20 observers: mean 3, m2 0.8, m4 2, beta2 3.125


def normal_presentation(high_observer: int, low_observer: int, n_obs: int = 20) -> np.ndarray:
    """20 scores with beta2 = 3.125 (2 <= beta2 <= 4): only the single 5 and the single 1 lie beyond 2 sigma."""
    others = [o for o in range(n_obs) if o not in (high_observer, low_observer)]
    scores = np.empty(n_obs)
    scores[high_observer], scores[low_observer] = 5, 1
    scores[others] = np.repeat([2, 3, 4], [4, 10, 4])
    return scores


def test_beta2_of_the_normal_pattern_and_its_2_sigma_threshold():
    u = np.array([normal_presentation(0, 1)])
    result = bt500_screening(answers_from_matrix(u))
    pres = result.presentations.iloc[0]
    assert pres["beta2"] == pytest.approx(3.125)
    assert pres["beta2"] == pytest.approx(stats.kurtosis(u[0], fisher=False))
    assert pres["normal"]
    assert pres["threshold"] == pytest.approx(2 * np.sqrt(16 / 19))  # BT.500's S uses N - 1


def test_two_sided_observer_is_rejected_one_sided_observers_are_not():
    # 20 presentations. O00 is far above the panel 5 times and far below 5 times: P = Q = 5, rejected.
    # O01 is only far above (P = 10, Q = 0); O02 is far below 10 times and above 5 times (|P-Q|/(P+Q) = 1/3).
    u = np.array(
        [normal_presentation(0, 3) for _ in range(5)]
        + [normal_presentation(2, 0) for _ in range(5)]
        + [normal_presentation(1, 2) for _ in range(10)]
    )
    result = bt500_screening(answers_from_matrix(u))
    stats_ = result.participants.set_index("participant")
    assert result.rejected == ("O00",)
    assert (stats_.loc["O00", "P"], stats_.loc["O00", "Q"]) == (5, 5)
    assert (stats_.loc["O01", "P"], stats_.loc["O01", "Q"]) == (10, 0)
    assert (stats_.loc["O02", "P"], stats_.loc["O02", "Q"]) == (5, 10)
    assert (stats_.loc["O03", "P"], stats_.loc["O03", "Q"]) == (0, 5)
    assert stats_.loc["O01", "ratio_pq"] == pytest.approx(0.5) and not stats_.loc["O01", "rejected"]
    assert stats_.loc["O02", "ratio_balance"] == pytest.approx(1 / 3) and not stats_.loc["O02", "rejected"]
    assert stats_.loc["O03", "ratio_pq"] == pytest.approx(0.25) and not stats_.loc["O03", "rejected"]
    assert "O00" not in set(result.answers["participant"]) and len(result.answers) == 19 * 20
    assert any("pooled all items" in note for note in result.notes)


def test_heavy_tailed_presentation_uses_sqrt20_sigma():
    # 40 observers: 36 say 3, two say 5, two say 1 -> beta2 = 10. The 5s and 1s exceed 2 sigma (1.28)
    # but not sqrt(20) sigma (2.86), so nobody is flagged.
    scores = np.array([5, 5, 1, 1] + [3] * 36, dtype=float)
    result = bt500_screening(answers_from_matrix(np.array([scores] * 10)))
    pres = result.presentations.iloc[0]
    assert pres["beta2"] == pytest.approx(10.0) and not pres["normal"]
    assert pres["threshold"] == pytest.approx(np.sqrt(20) * np.sqrt(16 / 39))
    assert result.participants[["P", "Q"]].to_numpy().sum() == 0


def test_heavy_tailed_extreme_two_sided_observer_is_rejected():
    # 40 observers; in 5 presentations everyone says 1 but O00 says 5, in 5 others everyone says 5 but O00 says 1.
    up = np.array([5] + [1] * 39, dtype=float)
    down = np.array([1] + [5] * 39, dtype=float)
    result = bt500_screening(answers_from_matrix(np.array([up] * 5 + [down] * 5)))
    assert not result.presentations["normal"].any()
    o00 = result.participants.set_index("participant").loc["O00"]
    assert (o00["P"], o00["Q"]) == (5, 5)
    assert result.rejected == ("O00",)


def test_all_rejected_guard_keeps_everyone():
    # Every observer is far above twice and far below twice in 40 presentations: all would be rejected.
    u = np.array([normal_presentation(j % 20, (j + 10) % 20) for j in range(40)])
    result = bt500_screening(answers_from_matrix(u))
    assert result.participants["P"].eq(2).all() and result.participants["Q"].eq(2).all()
    assert result.rejected == ()
    assert len(result.answers) == 40 * 20
    assert any("none is rejected" in note for note in result.notes)


def test_unanimous_presentation_flags_nobody():
    result = bt500_screening(answers_from_matrix(np.full((3, 5), 4.0)))
    assert np.isnan(result.presentations["beta2"]).all()
    assert result.participants[["P", "Q"]].to_numpy().sum() == 0


def _reference_bt500(u: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop transcription of BT.500 §A1-2.3.1 over a complete (presentations, observers) matrix."""
    p = np.zeros(u.shape[1])
    q = np.zeros(u.shape[1])
    for scores in u:
        mu, sigma = scores.mean(), scores.std(ddof=ddof)
        if sigma == 0:
            continue
        beta2 = stats.kurtosis(scores, fisher=False)
        threshold = (2.0 if 2 <= beta2 <= 4 else np.sqrt(20.0)) * sigma
        p += scores >= mu + threshold
        q += scores <= mu - threshold
    return p, q


@pytest.mark.parametrize("ddof", [0, 1])
def test_vectorised_counts_match_a_loop_transcription(ddof):
    rng = np.random.default_rng(3)
    u = np.clip(np.rint(rng.normal(3, 1, (60, 24)) + rng.normal(0, 0.6, 24)), 1, 5)
    u[:, 5] = np.where(rng.random(60) < 0.5, 1, 5)  # an erratic observer
    p, q = _reference_bt500(u, ddof)
    result = bt500_screening(answers_from_matrix(u), std_ddof=ddof).participants
    np.testing.assert_array_equal(result["P"], p)
    np.testing.assert_array_equal(result["Q"], q)


def test_p913_bias_removal_by_hand():
    # Observers rate two presentations: O00 (1, 3), O01 (2, 4), O02 (3, 5). MOS = (2, 4); biases -1, 0, +1.
    u = np.array([[1, 2, 3], [3, 4, 5]], dtype=float)
    result = p913_bias_removal(answers_from_matrix(u))
    np.testing.assert_allclose(result.participants.set_index("participant")["bias"], [-1.0, 0.0, 1.0])
    corrected = result.answers.pivot(index="stimulus", columns="participant", values="value")
    np.testing.assert_allclose(corrected.to_numpy(), [[2, 2, 2], [4, 4, 4]])
    assert result.rejected == ()


def test_p913_bias_with_missing_answers():
    # O01 skipped s01: its bias uses only s00. MOS = (2, 4); O00 = ((1-2)+(3-4))/2 = -1, O01 = 0, O02 = +1.
    u = np.array([[1, 2, 3], [3, np.nan, 5]], dtype=float)
    bias = p913_bias_removal(answers_from_matrix(u)).participants.set_index("participant")["bias"]
    np.testing.assert_allclose(bias, [-1.0, 0.0, 1.0])
