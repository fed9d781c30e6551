"""Scene effect per scale: a linear mixed model with crossed random effects for participants and stimuli."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.simulate import PAPER_SCENES
from analysis.table1 import ordered


@dataclass(frozen=True)
class SceneEffect:
    """The mixed-model fit of one scale.

    Attributes
    ----------
    scale : str
    scenes : tuple of str
        Scene order; the first is the reference level of the fixed effect.
    fixed : pandas.DataFrame
        ``term, estimate, se, z, p`` of the fixed effects (intercept = reference scene mean).
    contrasts : pandas.DataFrame
        Every scene pair: ``scene_a, scene_b, estimate (a − b), se, z, p, p_holm, significant, d``.
    variances : dict
        ``participant``, ``stimulus`` and ``residual`` variance estimates.
    n : int
        Answers in the fit.
    converged : bool
    notes : tuple of str
    """

    scale: str
    scenes: tuple[str, ...]
    fixed: pd.DataFrame
    contrasts: pd.DataFrame
    variances: dict[str, float]
    n: int
    converged: bool
    notes: tuple[str, ...]


def mixed_model_data(answers: pd.DataFrame, scale: str, *, value: str = "value") -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The rows of one scale, with ``scene`` as a categorical in the paper's order (first = reference)."""
    rows = answers.loc[answers["scale"].astype("string") == scale, ["participant", "stimulus", "scene", value]]
    scenes = ordered(rows["scene"].astype("string").unique(), PAPER_SCENES)
    data = pd.DataFrame({
        "value": rows[value].to_numpy(float),
        "scene": pd.Categorical(rows["scene"].astype("string"), categories=list(scenes)),
        "participant": rows["participant"].astype("string").to_numpy(),
        "stimulus": rows["stimulus"].astype("string").to_numpy(),
        "group": 1,
    })
    return data, scenes


def fit_crossed_mixed_model(data: pd.DataFrame):
    """Fits ``value ~ scene + (1|participant) + (1|stimulus)`` by REML with statsmodels.

    Notes
    -----
    statsmodels' MixedLM has nested groups only; crossed random intercepts are written as variance
    components inside one group that holds every row (the documented formulation for crossed effects):
    ``groups = 1``, ``re_formula = "0"``, ``vc_formula = {participant: 0 + C(participant), stimulus: 0 + C(stimulus)}``.
    REML estimates; the optimiser is Powell, then L-BFGS if Powell does not converge.
    """
    import statsmodels.formula.api as smf

    model = smf.mixedlm(
        "value ~ scene", data, groups="group", re_formula="0",
        vc_formula={"participant": "0 + C(participant)", "stimulus": "0 + C(stimulus)"},
    )
    # Powell needs no gradient; MixedLM's analytic score is the slow part for a one-group design (a few
    # seconds per scale with BFGS). L-BFGS takes over only if Powell does not converge.
    return model.fit(reml=True, method=["powell", "lbfgs"])


def scene_effect(answers: pd.DataFrame, scale: str, *, value: str = "value", alpha: float = 0.05) -> SceneEffect:
    """Scene effect on one scale with pairwise contrasts (Holm-corrected) and standardised effect sizes.

    Parameters
    ----------
    answers : pandas.DataFrame
        Test answers (after screening) in long format.
    scale : str
        Which scale to model; all its items are pooled as replicate answers.
    alpha : float
        Family-wise error rate of the Holm procedure.

    Returns
    -------
    SceneEffect

    Notes
    -----
    Model: value_psi = μ + β_scene(s) + u_p + w_s + ε, u_p ~ N(0, σ²_participant), w_s ~ N(0, σ²_stimulus),
    ε ~ N(0, σ²). A contrast between scenes a and b is Lβ with Wald z = Lβ / sqrt(L Σ_β Lᵀ); the p values of
    all pairs are adjusted with Holm's step-down method. The effect size is the difference over the total
    standard deviation, d = Lβ / sqrt(σ²_participant + σ²_stimulus + σ²) (Westfall, Kenny & Judd 2014).

    References
    ----------
    J. Westfall, D. A. Kenny, C. M. Judd, "Statistical power and optimal design in experiments in which
    samples of participants respond to samples of stimuli", J. Exp. Psychol. Gen. 143 (2014) 2020–2045.
    S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6 (1979) 65–70.
    """
    from statsmodels.stats.multitest import multipletests
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    data, scenes = mixed_model_data(answers, scale, value=value)
    notes = []
    if data["participant"].nunique() < 2:
        notes.append("participant variance not estimable with a single participant")
    if data.groupby("scene", observed=True)["stimulus"].nunique().min() < 2:
        notes.append("one stimulus per scene: stimulus and scene effects are confounded")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_crossed_mixed_model(data)
    notes += sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, ConvergenceWarning)})

    fe_names = list(fit.fe_params.index)
    beta = fit.fe_params.to_numpy()
    cov = fit.cov_params().loc[fe_names, fe_names].to_numpy()
    se = np.sqrt(np.diag(cov))
    z = beta / se
    fixed = pd.DataFrame({"term": fe_names, "estimate": beta, "se": se, "z": z, "p": 2 * stats.norm.sf(np.abs(z))})

    vc_names = list(fit.model.exog_vc.names)
    variances = {name: float(v) for name, v in zip(vc_names, np.asarray(fit.vcomp))}
    variances["residual"] = float(fit.scale)
    total_sd = np.sqrt(sum(variances.values()))

    def level_vector(scene: str) -> np.ndarray:
        vec = np.zeros(len(fe_names))
        term = f"scene[T.{scene}]"
        if term in fe_names:
            vec[fe_names.index(term)] = 1.0
        return vec

    rows = []
    for a, b in itertools.combinations(scenes, 2):
        contrast = level_vector(a) - level_vector(b)
        est = float(contrast @ beta)
        est_se = float(np.sqrt(contrast @ cov @ contrast))
        rows.append((a, b, est, est_se, est / est_se, 2 * stats.norm.sf(abs(est / est_se)), est / total_sd))
    contrasts = pd.DataFrame(rows, columns=["scene_a", "scene_b", "estimate", "se", "z", "p", "d"])
    if len(contrasts):
        reject, p_holm, _, _ = multipletests(contrasts["p"].to_numpy(), alpha=alpha, method="holm")
        contrasts.insert(6, "p_holm", p_holm)
        contrasts.insert(7, "significant", reject)
    return SceneEffect(scale, scenes, fixed, contrasts, variances, len(data), bool(fit.converged), tuple(notes))
