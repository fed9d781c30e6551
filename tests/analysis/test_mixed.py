import numpy as np
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

from analysis.mixed import mixed_model_data, scene_effect
from analysis.simulate import simulate_study
from analysis.validate import prepare_answers


@pytest.fixture(scope="module")
def var_answers():
    study = simulate_study(n_participants=16, stimuli_per_scene=3, pose_rate_hz=0, seed=4)
    return prepare_answers(study.answers)


def test_scene_effect_matches_a_direct_statsmodels_fit(var_answers):
    effect = scene_effect(var_answers, "VAR")
    data, scenes = mixed_model_data(var_answers, "VAR")
    model = smf.mixedlm("value ~ scene", data, groups="group", re_formula="0",
                        vc_formula={"participant": "0 + C(participant)", "stimulus": "0 + C(stimulus)"})
    # A gradient optimiser that converges here (statsmodels' default BFGS stops early on this design).
    direct = model.fit(reml=True, method=["lbfgs"])
    assert direct.converged
    np.testing.assert_allclose(effect.fixed["estimate"], direct.fe_params.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(effect.fixed["se"], direct.bse_fe.to_numpy(), rtol=1e-2)
    np.testing.assert_allclose([effect.variances["participant"], effect.variances["stimulus"]], direct.vcomp,
                               rtol=2e-2, atol=1e-4)
    assert effect.variances["residual"] == pytest.approx(direct.scale, rel=1e-3)
    assert scenes[0] == "vehicle" and effect.converged


def test_contrasts_are_holm_corrected_differences(var_answers):
    effect = scene_effect(var_answers, "VAR")
    c = effect.contrasts
    assert len(c) == 6
    fe = dict(zip(effect.fixed["term"], effect.fixed["estimate"]))
    street_minus_vehicle = fe["scene[T.street]"]
    row = c[(c["scene_a"] == "vehicle") & (c["scene_b"] == "street")].iloc[0]
    assert row["estimate"] == pytest.approx(-street_minus_vehicle)
    np.testing.assert_allclose(c["p_holm"], multipletests(c["p"], method="holm")[1])
    total_sd = np.sqrt(sum(effect.variances.values()))
    np.testing.assert_allclose(c["d"], c["estimate"] / total_sd)
    # The simulated VAR truth puts vehicle 0.6-0.7 below the other scenes.
    assert row["significant"] and row["estimate"] < -0.3
