import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.ssq import ssq_pre_post, ssq_scores
from study.errors import AnalysisError


def questionnaire(participant, phase, values):
    return pd.DataFrame({"participant": participant, "session": 1, "phase": phase, "item": range(1, 17), "value": values})


def test_weighted_scores_by_hand():
    all_slight = questionnaire("a", "pre", [1] * 16)
    only_focus = questionnaire("b", "pre", [0, 0, 0, 0, 3] + [0] * 11)  # item 5 counts for O and D
    scores = ssq_scores(pd.concat([all_slight, only_focus])).set_index("participant")
    assert tuple(scores.loc["a", ["n_raw", "o_raw", "d_raw"]]) == (7, 7, 6)
    assert scores.loc["a", "nausea"] == pytest.approx(66.78)
    assert scores.loc["a", "oculomotor"] == pytest.approx(53.06)
    assert scores.loc["a", "disorientation"] == pytest.approx(83.52)
    assert scores.loc["a", "total"] == pytest.approx(74.80)
    assert scores.loc["b", "nausea"] == 0
    assert scores.loc["b", "oculomotor"] == pytest.approx(22.74)
    assert scores.loc["b", "disorientation"] == pytest.approx(41.76)
    assert scores.loc["b", "total"] == pytest.approx(22.44)


def test_pre_post_uses_wilcoxon_signed_rank():
    rng = np.random.default_rng(0)
    frames = []
    for p in range(12):
        pre = rng.choice(3, 16, p=[0.8, 0.15, 0.05])
        frames += [questionnaire(f"p{p}", "pre", pre), questionnaire(f"p{p}", "post", np.minimum(pre + rng.choice(2, 16), 3))]
    scores = ssq_scores(pd.concat(frames))
    result = ssq_pre_post(scores).set_index("score")
    pre = scores[scores["phase"] == "pre"].sort_values("participant")["total"].to_numpy()
    post = scores[scores["phase"] == "post"].sort_values("participant")["total"].to_numpy()
    # Tied differences: the tie-corrected normal approximation.
    assert result.loc["total", "p"] == pytest.approx(stats.wilcoxon(post, pre, method="approx").pvalue)
    assert "normal approx" in result.loc["total", "test"]
    assert result.loc["total", "n_pairs"] == 12
    assert "Wilcoxon signed-rank" in result.loc["total", "test"]
    assert result.loc["total", "rank_biserial"] == pytest.approx(1.0)  # every change is an increase


def test_no_change_is_reported_not_tested():
    same = pd.concat([questionnaire(f"p{i}", phase, [0] * 16) for i in range(3) for phase in ("pre", "post")])
    result = ssq_pre_post(ssq_scores(same))
    assert result["p"].isna().all() and result["note"].str.contains("zero").all()


@pytest.mark.parametrize("bad, message", [
    (questionnaire("a", "pre", [4] + [0] * 15), "not in 0..3"),
    (questionnaire("a", "pre", [0] * 16).iloc[:15], "16 distinct items"),
    (questionnaire("a", "during", [0] * 16), "neither 'pre' nor 'post'"),
])
def test_bad_ssq_input_raises_one_line(bad, message):
    with pytest.raises(AnalysisError, match=message) as info:
        ssq_scores(bad)
    assert "\n" not in str(info.value)
