import warnings

import numpy as np
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

from analysis.mixed import CONFOUNDED_NOTE, CROSSED, PARTICIPANT_ONLY, _fit, mixed_model_data, scene_effect
from analysis.simulate import simulate_study
from analysis.validate import prepare_answers


@pytest.fixture(scope="module")
def var_answers():
    study = simulate_study(n_participants=16, stimuli_per_scene=3, pose_rate_hz=0, seed=4)
    return prepare_answers(study.answers)


@pytest.fixture(scope="module")
def one_stimulus_per_scene():
    """The demo's design: every scene is one panorama."""
    study = simulate_study(n_participants=16, stimuli_per_scene=1, pose_rate_hz=0, seed=4)
    return prepare_answers(study.answers)


def _statsmodels(data, crossed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if crossed:
            model = smf.mixedlm("value ~ scene", data.assign(group=1), groups="group", re_formula="0",
                                vc_formula={"participant": "0 + C(participant)", "stimulus": "0 + C(stimulus)"})
        else:
            model = smf.mixedlm("value ~ scene", data, groups="participant")
        # A gradient optimiser that converges here (statsmodels' default BFGS stops early on the crossed design).
        return model.fit(reml=True, method=["lbfgs"])


def test_crossed_fit_matches_statsmodels(var_answers):
    effect = scene_effect(var_answers, "VAR")
    data, scenes = mixed_model_data(var_answers, "VAR")
    direct = _statsmodels(data, crossed=True)
    assert effect.model == CROSSED and effect.converged and effect.warnings == () and effect.design_note == ""
    np.testing.assert_allclose(effect.fixed["estimate"], direct.fe_params.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(effect.fixed["se"], direct.bse_fe.to_numpy(), rtol=1e-3)
    np.testing.assert_allclose([effect.variances["participant"], effect.variances["stimulus"]], direct.vcomp, rtol=1e-3)
    assert effect.variances["residual"] == pytest.approx(direct.scale, rel=1e-5)
    assert scenes[0] == "vehicle"


def test_one_stimulus_per_scene_fits_participants_only_and_says_so(one_stimulus_per_scene):
    answers = one_stimulus_per_scene
    effect = scene_effect(answers, "VAR")
    data, _ = mixed_model_data(answers, "VAR")
    direct = _statsmodels(data, crossed=False)
    assert effect.model == PARTICIPANT_ONLY and effect.design_note == CONFOUNDED_NOTE
    assert "not about the scenes in general" in effect.design_note
    np.testing.assert_allclose(effect.fixed["estimate"], direct.fe_params.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(effect.fixed["se"], direct.bse_fe.to_numpy(), rtol=1e-3)
    assert effect.variances["participant"] == pytest.approx(float(direct.cov_re.iloc[0, 0]), rel=1e-3)
    # The contrast's SE is that of a paired comparison of the participants' scene means, not the huge SE a
    # stimulus variance confounded with the scenes produced (issue 16: SE 3.29 against 0.12).
    means = answers[answers["scale"] == "VAR"].groupby(["participant", "scene"], observed=True)["value"].mean().unstack()
    paired = means["vehicle"] - means["street"]
    row = effect.contrasts.query("scene_a == 'vehicle' and scene_b == 'street'").iloc[0]
    assert row["estimate"] == pytest.approx(paired.mean(), abs=1e-9)
    assert row["se"] == pytest.approx(paired.std(ddof=1) / np.sqrt(len(paired)), rel=0.35)


def test_a_confounded_stimulus_variance_is_not_identifiable(one_stimulus_per_scene):
    """Fitting the crossed model anyway: the REML criterion is flat in the stimulus variance."""
    data, _ = mixed_model_data(one_stimulus_per_scene, "VAR")
    fit = _fit(data, ("participant", "stimulus"))
    assert not fit.hessian_pd or "stimulus" in fit.boundary


def test_boundary_fit_is_a_warning():
    # Stimuli of a scene that do not differ: the stimulus variance goes to 0.
    study = simulate_study(n_participants=12, stimuli_per_scene=3, stimulus_sd=0.0, ambiguity=(0.0, 0.0),
                           pose_rate_hz=0, seed=2)
    effect = scene_effect(prepare_answers(study.answers), "VAR")
    assert any("stimulus variance was estimated at 0 (a boundary fit)" in w for w in effect.warnings)


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


def test_nan_answers_are_refused(var_answers):
    from study.errors import AnalysisError

    broken = var_answers.assign(value=var_answers["value"].astype(float))
    broken.loc[0, "value"] = np.nan
    with pytest.raises(AnalysisError, match="scene_effect: column 'value'"):
        scene_effect(broken, "VAR")
