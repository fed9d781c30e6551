import types

import numpy as np
import pandas as pd
import pytest

from analysis.mle import mle_subjective_model
from analysis.screening import bt500_screening, p913_bias_removal
from analysis.simulate import simulate_study
from analysis.validate import prepare_answers

FLAT = {scale: {scene: 3.0 for scene in ("vehicle", "street", "indoor", "mountainous")}
        for scale in ("ACR", "VAR", "SSDS", "PCR")}


@pytest.fixture(scope="module")
def biased_study():
    """32 participants with strong biases (SD 0.8) and unequal inconsistency, each rating half the stimuli."""
    study = simulate_study(n_participants=32, bias_sd=0.8, inconsistency=(0.2, 1.0), coverage=0.5,
                           scene_quality=FLAT, stimulus_sd=0.6, pose_rate_hz=0, seed=11)
    answers = prepare_answers(study.answers)
    return study, answers, mle_subjective_model(answers)


def _truth_vs_estimates(study, fit, answers):
    keys = ["stimulus", "scale", "item"]
    est = fit.presentations.astype({k: str for k in keys})
    mos = answers.groupby(keys, observed=True)["value"].mean().rename("mos").reset_index().astype({k: str for k in keys})
    return study.quality.merge(est, on=keys, suffixes=("_true", "")).merge(mos, on=keys)


def test_mle_recovers_biases_and_inconsistencies(biased_study):
    biased_study, answers, fit = biased_study
    assert fit.converged
    part = fit.participants.set_index("participant")
    true_b = biased_study.bias.loc[part.index]
    true_v = biased_study.inconsistency.loc[part.index]
    assert np.corrcoef(part["b_s"], true_b)[0, 1] >= 0.9
    assert np.corrcoef(part["v_s"], true_v)[0, 1] >= 0.7
    assert abs(part["b_s"].mean()) < 1e-9  # identifiability constraint


def test_mle_quality_is_closer_to_truth_than_mos_under_strong_biases(biased_study):
    biased_study, answers, fit = biased_study
    merged = _truth_vs_estimates(biased_study, fit, answers)
    rmse_mle = np.sqrt(np.mean((merged["x_e"] - merged["x_e_true"]) ** 2))
    rmse_mos = np.sqrt(np.mean((merged["mos"] - merged["x_e_true"]) ** 2))
    assert rmse_mle < 0.85 * rmse_mos
    # The Fisher-information CIs of x_e cover the truth at roughly their nominal rate.
    covered = (merged["x_e_ci_low"] <= merged["x_e_true"]) & (merged["x_e_true"] <= merged["x_e_ci_high"])
    assert covered.mean() >= 0.85


def test_mle_fit_is_a_local_maximum_of_the_likelihood(biased_study):
    _, answers, fit = biased_study
    from analysis.mle import mle_log_likelihood

    e_codes = answers.groupby(["stimulus", "scale", "item"], observed=True, sort=True).ngroup().to_numpy()
    s_codes = pd.Categorical(answers["participant"].astype("string")).codes
    u = np.full((e_codes.max() + 1, s_codes.max() + 1), np.nan)
    u[e_codes, s_codes] = answers["value"].to_numpy(float)
    x, b, v = fit.presentations["x_e"].to_numpy(), fit.participants["b_s"].to_numpy(), fit.participants["v_s"].to_numpy()
    a = fit.contents.set_index("content")["a_c"].loc[fit.presentations["stimulus"].astype(str)].to_numpy()
    best = mle_log_likelihood(u, x, b, v, a)
    assert best == pytest.approx(fit.log_likelihood)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert mle_log_likelihood(u, x + rng.normal(0, 0.02, x.size), b, v, a) < best
        assert mle_log_likelihood(u, x, b, v * (1 + rng.normal(0, 0.05, v.size)), a) < best


# --- cross-checks against Netflix sureal (installed with the 'test' extra) ---------------------------------------


def _sureal_reader(u: np.ndarray, content_of_e: np.ndarray):
    from sureal.dataset_reader import RawDatasetReader

    dataset = types.SimpleNamespace(
        dataset_name="panostudy",
        ref_videos=[{"content_id": int(c), "content_name": f"c{c}", "path": f"c{c}"} for c in np.unique(content_of_e)],
        dis_videos=[{"content_id": int(c), "asset_id": e, "os": list(map(float, u[e])), "path": f"e{e}"}
                    for e, c in enumerate(content_of_e)],
    )
    return RawDatasetReader(dataset)


def _matrix_answers(u: np.ndarray, content_of_e: np.ndarray) -> pd.DataFrame:
    n_e, n_s = u.shape
    return pd.DataFrame({
        "participant": np.tile([f"S{s:02d}" for s in range(n_s)], n_e),
        "stimulus": np.repeat([f"c{c}" for c in content_of_e], n_s),
        "item": np.repeat([f"i{e:02d}" for e in range(n_e)], n_s),
        "scale": "ACR", "scene": "street", "value": u.ravel(),
    })


@pytest.fixture(scope="module")
def sureal_case():
    rng = np.random.default_rng(5)
    n_e, n_s = 30, 16
    content_of_e = np.repeat(np.arange(6), 5)
    x = rng.uniform(1.5, 4.5, n_e)
    b = rng.normal(0, 0.5, n_s)
    v = rng.uniform(0.2, 0.9, n_s)
    a = rng.uniform(0.1, 0.4, 6)
    u = np.clip(np.rint(x[:, None] + b[None, :] + rng.normal(0, 1, (n_e, n_s)) * np.hypot(v[None, :], a[content_of_e][:, None])), 1, 5)
    return u, content_of_e


def test_bt500_matches_sureal_subject_rejection(sureal_case):
    sureal_model = pytest.importorskip("sureal.subjective_model")
    u, content_of_e = sureal_case
    u = u.copy()
    u[:, 3] = np.where(np.arange(u.shape[0]) % 2 == 0, 1.0, 5.0)  # an erratic observer sureal should reject too
    ref = sureal_model.SubjrejMosModel(_sureal_reader(u, content_of_e)).run_modeling()
    ours = bt500_screening(_matrix_answers(u, content_of_e), std_ddof=0).participants
    np.testing.assert_array_equal(ours["rejected"].to_numpy(), np.asarray(ref["observer_rejected"]))
    np.testing.assert_allclose(ours["ratio_pq"], ref["observer_rejected_1st_stats"])


def test_p913_matches_sureal_bias_removed_mos(sureal_case):
    sureal_model = pytest.importorskip("sureal.subjective_model")
    u, content_of_e = sureal_case
    u = u.copy()
    u[np.random.default_rng(1).random(u.shape) < 0.3] = np.nan  # incomplete, so bias removal moves the MOS
    ref = sureal_model.BiasremvMosModel(_sureal_reader(u, content_of_e)).run_modeling()
    answers = _matrix_answers(u, content_of_e).dropna(subset=["value"])
    corrected = p913_bias_removal(answers).answers
    ours = corrected.groupby("item")["value"].mean().to_numpy()
    np.testing.assert_allclose(ours, ref["quality_scores"], atol=1e-10)
    assert not np.allclose(ours, answers.groupby("item")["value"].mean().to_numpy(), atol=1e-3)


def test_mle_matches_sureal(sureal_case, capfd):
    sureal_model = pytest.importorskip("sureal.subjective_model")
    u, content_of_e = sureal_case
    ref = sureal_model.MaximumLikelihoodEstimationModel(_sureal_reader(u, content_of_e)).run_modeling()
    fit = mle_subjective_model(_matrix_answers(u, content_of_e))
    order = np.argsort([f"i{e:02d}" for e in range(u.shape[0])])
    np.testing.assert_allclose(fit.presentations["x_e"], np.asarray(ref["quality_scores"])[order], atol=2e-3)
    np.testing.assert_allclose(fit.participants["b_s"], ref["observer_bias"], atol=2e-3)
    np.testing.assert_allclose(fit.participants["v_s"], ref["observer_inconsistency"], atol=5e-3)
    np.testing.assert_allclose(fit.contents["a_c"], ref["content_ambiguity"], atol=5e-3)
    np.testing.assert_allclose(fit.presentations["x_e_se"], np.asarray(ref["quality_scores_std"])[order], rtol=1e-2)
