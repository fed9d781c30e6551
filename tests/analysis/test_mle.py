import types

import numpy as np
import pandas as pd
import pytest

from analysis.mle import mle_subjective_model
from analysis.screening import bt500_screening, mle_screening, p913_bias_removal
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


# --- the maximum, against an independent optimiser (scipy's L-BFGS-B on a log-likelihood written here) ----------


def _draw(*, n_e=40, n_s=30, per_content=8, reps=1, missing=0.0, consensus=False, seed=0, ambiguity=(0.5, 0.8)):
    """Ratings from the model of P.910 Annex E, rounded and clipped to 1..5, as long-format answers.

    ``consensus``: participant S00 rates every presentation exactly the mean of the others' ratings in that
    repetition; ``missing``: each participant skips that share of the contents (as a participant who sees half
    the panoramas skips every item of the other half); ``reps``: ratings per cell.
    """
    rng = np.random.default_rng(seed)
    c = np.repeat(np.arange(n_e // per_content), per_content)
    x = rng.uniform(1.5, 4.5, n_e)
    b = rng.normal(0.0, 0.4, n_s)
    v = rng.uniform(0.2, 0.8, n_s)
    a = rng.uniform(*ambiguity, c.max() + 1)
    keep = (rng.random((c.max() + 1, n_s)) >= missing)[c]
    frames = []
    for _ in range(reps):
        u = np.clip(np.rint(x[:, None] + b[None, :] + rng.normal(0, 1, (n_e, n_s)) * np.hypot(v[None, :], a[c][:, None])), 1, 5)
        if consensus:
            u[:, 0] = np.nanmean(np.where(keep[:, 1:], u[:, 1:], np.nan), axis=1)
        e, s = np.nonzero(keep)
        frames.append(pd.DataFrame({"participant": [f"S{i:02d}" for i in s], "stimulus": [f"c{k}" for k in c[e]],
                                    "item": [f"i{k:02d}" for k in e], "value": u[e, s]}))
    return pd.concat(frames, ignore_index=True).assign(scale="ACR", scene="street")


def _likelihood(answers):
    """−log L over (x_e, b_s, v_s², a_c²) and its gradient, written here independently of analysis.mle."""
    keys = ["stimulus", "scale", "item"]
    e = answers.groupby(keys, sort=True).ngroup().to_numpy()
    s = pd.Categorical(answers["participant"]).codes
    c = pd.Categorical(answers.groupby(keys, sort=True)["stimulus"].first()).codes[e]
    u = answers["value"].to_numpy(float)
    n_e, n_s, n_c = e.max() + 1, s.max() + 1, c.max() + 1

    def negative_log_likelihood(p):
        x, b, v2, a2 = np.split(p, np.cumsum([n_e, n_s, n_s]))
        var = v2[s] + a2[c]
        r = u - x[e] - b[s]
        d = 0.5 * (r * r / var**2 - 1.0 / var)
        grad = np.concatenate([np.bincount(e, r / var, minlength=n_e), np.bincount(s, r / var, minlength=n_s),
                               np.bincount(s, d, minlength=n_s), np.bincount(c, d, minlength=n_c)])
        return 0.5 * np.sum(np.log(2 * np.pi * var) + r * r / var), -grad

    return negative_log_likelihood, (e, s, c, u), (n_e, n_s, n_c)


def _independent_fit(answers, start):
    """Maximises log L with scipy's L-BFGS-B from the MOS start or from a fit; returns the maximum."""
    from scipy import optimize

    negative_log_likelihood, (e, s, c, u), (n_e, n_s, n_c) = _likelihood(answers)
    if start == "mos":
        x0 = np.bincount(e, u) / np.bincount(e)
        r0 = u - x0[e]
        p0 = np.concatenate([x0, np.zeros(n_s), np.bincount(s, r0**2) / np.bincount(s), np.bincount(c, r0**2) / np.bincount(c)])
    else:
        fit = start
        p0 = np.concatenate([fit.presentations["x_e"], fit.participants["b_s"], fit.participants["v_s"] ** 2,
                             fit.contents["a_c"] ** 2])
    bounds = [(None, None)] * (n_e + n_s) + [(1e-12, None)] * (n_s + n_c)
    result = optimize.minimize(negative_log_likelihood, p0, jac=True, method="L-BFGS-B", bounds=bounds,
                               options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-10})
    return -result.fun, u.size, negative_log_likelihood


DESIGNS = {
    "consensus observer, 2 repetitions": {"consensus": True, "reps": 2},
    "2 repetitions": {"reps": 2},
    "half missing": {"missing": 0.5, "n_s": 32, "n_e": 90, "per_content": 9},
}


@pytest.mark.parametrize("design", DESIGNS)
def test_mle_reaches_the_maximum_an_independent_optimiser_finds(design):
    answers = _draw(**DESIGNS[design])
    fit = mle_subjective_model(answers)
    assert fit.converged and not fit.degenerate and fit.max_gradient < 1e-6
    for start in ("mos", fit):
        best, n, negative_log_likelihood = _independent_fit(answers, start)
        assert (best - fit.log_likelihood) / n <= 1e-6, start
        assert abs(best - fit.log_likelihood) / n <= 1e-6
    # A variance held at 0 is a maximum only where log L falls as it rises (the fit must not stall at 0).
    p = np.concatenate([fit.presentations["x_e"], fit.participants["b_s"], fit.participants["v_s"] ** 2,
                        fit.contents["a_c"] ** 2])
    slope = -negative_log_likelihood(p)[1]
    at_zero = np.flatnonzero(p == 0.0)
    assert (slope[at_zero] <= 1e-3).all()  # the stalled fit of issue 16 sat at v_s ≈ 0 with a slope of +4.67


def test_every_rating_and_repetition_enters_the_likelihood():
    answers = _draw(reps=2, n_s=20)
    fit = mle_subjective_model(answers)
    from analysis.mle import mle_log_likelihood

    e = answers.groupby(["stimulus", "scale", "item"], sort=True).ngroup().to_numpy()
    s = pd.Categorical(answers["participant"]).codes
    a_of_e = fit.contents.set_index("content")["a_c"].loc[fit.presentations["stimulus"].astype(str)].to_numpy()
    ll = mle_log_likelihood(answers["value"].to_numpy(float), e, s, fit.presentations["x_e"].to_numpy(),
                            fit.participants["b_s"].to_numpy(), fit.participants["v_s"].to_numpy(), a_of_e)
    assert ll == pytest.approx(fit.log_likelihood, abs=1e-8)
    assert fit.n_ratings == len(answers) and fit.repeated == len(answers) // 2
    assert (fit.presentations["n"] == 40).all()
    averaged = answers.groupby(["participant", "stimulus", "item", "scale", "scene"], as_index=False)["value"].mean()
    fit_averaged = mle_subjective_model(averaged)
    # Averaging repetitions first is another model (it hides each participant's spread between repetitions).
    assert np.abs(fit.presentations["x_e"] - fit_averaged.presentations["x_e"]).max() > 1e-3


def test_degenerate_corner_is_detected_and_is_real():
    """One rating per cell and an observer who rates exactly the consensus: no interior maximum exists."""
    answers = _draw(consensus=True, n_s=20)
    fit = mle_subjective_model(answers)
    assert not fit.converged and fit.degenerate
    assert "S00" in fit.degenerate[0] and "likelihood grows without bound" in fit.degenerate[0]
    assert fit.warnings == fit.degenerate
    screened = mle_screening(answers)
    assert screened.warnings == fit.degenerate
    # The independent optimiser confirms it: keep every v_s² ≥ ε and the maximum still rises as ε shrinks.
    from scipy import optimize

    negative_log_likelihood, _, (n_e, n_s, n_c) = _likelihood(answers)
    start = np.concatenate([fit.presentations["x_e"], fit.participants["b_s"], np.full(n_s, 0.3), np.full(n_c, 0.3)])
    maxima = []
    for eps in (1e-2, 1e-4, 1e-6):
        bounds = [(None, None)] * (n_e + n_s) + [(eps, None)] * n_s + [(0.0, None)] * n_c
        result = optimize.minimize(negative_log_likelihood, start, jac=True, method="L-BFGS-B", bounds=bounds,
                                   options={"maxiter": 3000, "ftol": 1e-12})
        maxima.append(-result.fun)
        start = result.x  # each smaller ε starts where the larger one ended
    assert maxima[0] + 10 < maxima[1] < maxima[2] - 10


def test_nan_ratings_are_refused_everywhere():
    from analysis.mle import mle_log_likelihood
    from analysis.mos import mean_opinion_score, summarise
    from analysis.reliability import reliability
    from study.errors import AnalysisError

    answers = _draw(n_s=6, n_e=16)
    answers.loc[3, "value"] = np.nan
    answers = answers.assign(scale_min=1, scale_max=5)
    calls = {
        "mle_subjective_model": lambda: mle_subjective_model(answers),
        "bt500_screening": lambda: bt500_screening(answers),
        "p913_bias_removal": lambda: p913_bias_removal(answers),
        "mean_opinion_score": lambda: mean_opinion_score(answers, ["stimulus"]),
        "participant_means": lambda: summarise(answers, ["scene"]),
        "reliability": lambda: reliability(answers),
    }
    for name, call in calls.items():
        with pytest.raises(AnalysisError, match=rf"{name}: column 'value' holds 1 missing"):
            call()
    with pytest.raises(AnalysisError, match="NaN"):
        mle_log_likelihood(np.array([np.nan]), np.array([0]), np.array([0]), np.zeros(1), np.zeros(1), np.ones(1), np.ones(1))


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


def test_mle_matches_sureal_where_sureal_converges():
    """On a design with an interior maximum: the same x_e, b_s, SE(x_e) and rating variances as sureal."""
    sureal_model = pytest.importorskip("sureal.subjective_model")
    rng = np.random.default_rng(0)
    n_e, n_s = 40, 30
    content_of_e = np.repeat(np.arange(5), 8)
    x, b = rng.uniform(1.5, 4.5, n_e), rng.normal(0, 0.4, n_s)
    v, a = rng.uniform(0.2, 0.8, n_s), rng.uniform(0.5, 0.8, 5)
    noise = rng.normal(0, 1, (n_e, n_s)) * np.hypot(v[None, :], a[content_of_e][:, None])
    u = np.clip(np.rint(x[:, None] + b[None, :] + noise), 1, 5)
    ref = sureal_model.MaximumLikelihoodEstimationModel(_sureal_reader(u, content_of_e)).run_modeling()
    fit = mle_subjective_model(_matrix_answers(u, content_of_e))
    order = np.argsort([f"i{e:02d}" for e in range(u.shape[0])])
    assert fit.converged
    np.testing.assert_allclose(fit.presentations["x_e"], np.asarray(ref["quality_scores"])[order], atol=1e-5)
    np.testing.assert_allclose(fit.participants["b_s"], ref["observer_bias"], atol=1e-5)
    np.testing.assert_allclose(fit.presentations["x_e_se"], np.asarray(ref["quality_scores_std"])[order], rtol=1e-5)
    # Only v_s² + a_c² is identified; sureal splits it elsewhere along the flat ridge.
    ours = fit.participants["v_s"].to_numpy()[None, :] ** 2 + fit.contents["a_c"].to_numpy()[:, None] ** 2
    theirs = np.asarray(ref["observer_inconsistency"])[None, :] ** 2 + np.asarray(ref["content_ambiguity"])[:, None] ** 2
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
