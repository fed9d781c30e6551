import numpy as np
import pandas as pd
import pytest

from analysis.reliability import intraclass_correlation, krippendorff_alpha_ordinal, reliability
from analysis.simulate import simulate_study
from analysis.validate import prepare_answers

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_matches_shrout_fleiss_table_2():
    long = pd.DataFrame(SHROUT_FLEISS).stack().rename("rating").reset_index()
    long.columns = ["target", "judge", "rating"]
    icc = intraclass_correlation(long, targets="target", raters="judge", ratings="rating")["ICC"]
    published = {"ICC1": 0.17, "ICC2": 0.29, "ICC3": 0.71, "ICC1k": 0.44, "ICC2k": 0.62, "ICC3k": 0.91}
    for form, value in published.items():
        assert round(icc[form], 2) == value, form


def test_krippendorff_ordinal_matches_krippendorffs_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units: ordinal alpha 0.815.
    nan = np.nan
    data = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ])
    assert krippendorff_alpha_ordinal(data, [1, 2, 3, 4, 5]) == pytest.approx(0.815, abs=5e-4)


def test_reliability_per_scale_rises_with_agreement():
    consistent = simulate_study(n_participants=12, stimuli_per_scene=3, inconsistency=(0.1, 0.2), ambiguity=(0.05, 0.1),
                                stimulus_sd=0.8, pose_rate_hz=0, seed=3)
    noisy = simulate_study(n_participants=12, stimuli_per_scene=3, inconsistency=(1.0, 1.5), ambiguity=(0.5, 0.6),
                           stimulus_sd=0.8, pose_rate_hz=0, seed=3)
    good = reliability(prepare_answers(consistent.answers)).set_index("scale")
    bad = reliability(prepare_answers(noisy.answers)).set_index("scale")
    assert list(good.index) == ["ACR", "VAR", "SSDS", "PCR"]
    assert (good["icc2k"] > bad["icc2k"]).all()
    assert (good["alpha_ordinal"] > bad["alpha_ordinal"]).all()
    assert (good["icc2k_ci_low"] <= good["icc2k"]).all() and (good["icc2k"] <= good["icc2k_ci_high"]).all()
    assert (good["raters"] == 12).all() and good.loc["VAR", "targets"] == 12 * 3
