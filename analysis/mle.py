"""The maximum-likelihood subjective model of ITU-T P.910 Annex E / P.913 §12.6 (Netflix sureal's MLE model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from study.errors import AnalysisError

PRESENTATION = ("stimulus", "scale", "item")
_Z95 = stats.norm.ppf(0.975)
# Keeps w_es finite when a participant and a content both fit exactly (the likelihood is unbounded there).
_MIN_VARIANCE = 1e-6
# Share of each block update applied per sweep. The likelihood grows without bound as a participant's
# v_s and the a_c of everything they rated go to 0 (one participant then "explains" x_e exactly); full
# steps run into that degenerate corner, damped ones stay at the interior maximum that sureal (which
# damps by the same 0.1) reports.
_STEP = 0.1


@dataclass(frozen=True)
class MleFit:
    """Estimates of the P.910 Annex E model and their 95 % CIs from the Fisher information.

    Attributes
    ----------
    presentations : pandas.DataFrame
        ``stimulus, scale, item, scene, n, x_e, x_e_se, x_e_ci_low, x_e_ci_high`` (true quality per presentation).
    participants : pandas.DataFrame
        ``participant, n, b_s, b_s_se, b_s_ci_low, b_s_ci_high, v_s, v_s_se, v_s_ci_low, v_s_ci_high``.
    contents : pandas.DataFrame
        ``content, a_c, a_c_se, a_c_ci_low, a_c_ci_high`` (ambiguity of each content, here ``content_column``).
    content_column : str
        The answer column that defines a content c(e).
    log_likelihood : float
        Log-likelihood at the estimate.
    n_iter : int
        Iterations run; ``converged`` says whether max |Δx_e| fell below the tolerance.
    converged : bool
    """

    presentations: pd.DataFrame
    participants: pd.DataFrame
    contents: pd.DataFrame
    content_column: str
    log_likelihood: float
    n_iter: int
    converged: bool


def mle_log_likelihood(u_es: np.ndarray, x_e: np.ndarray, b_s: np.ndarray, v_s: np.ndarray,
                       a_c_of_e: np.ndarray) -> float:
    """Log-likelihood of the scores under the P.910 Annex E model.

    Parameters
    ----------
    u_es : (E, S) float
        Scores, NaN where participant s did not rate presentation e.
    x_e : (E,) float;  b_s, v_s : (S,) float;  a_c_of_e : (E,) float
        Parameters, with the content ambiguity already looked up per presentation.

    Notes
    -----
    U_es ~ N(x_e + b_s, v_s² + a_c(e)²), so
    log L = Σ_{observed e,s} −½ [log 2π(v_s² + a_c(e)²) + (u_es − x_e − b_s)² / (v_s² + a_c(e)²)].
    """
    s2 = np.maximum(v_s[None, :] ** 2 + a_c_of_e[:, None] ** 2, _MIN_VARIANCE)
    r2 = (u_es - x_e[:, None] - b_s[None, :]) ** 2
    return float(np.nansum(-0.5 * (np.log(2.0 * np.pi * s2) + r2 / s2) * np.isfinite(u_es)))


def _variance_newton_terms(r2: np.ndarray, s2: np.ndarray, mask: np.ndarray, sd: np.ndarray):
    """First and second derivatives of log L_es with respect to one standard deviation term σ of s² = v² + a².

    d/dσ = σ (r² − s²) / s⁴;  d²/dσ² = (r² − s²) / s⁴ − 2σ² / s⁴ − 4σ² (r² − s²) / s⁶.
    """
    excess = r2 - s2
    s4 = s2 * s2
    grad = mask * sd * excess / s4
    hess = mask * (excess / s4 - 2.0 * sd**2 / s4 - 4.0 * sd**2 * excess / (s4 * s2))
    return grad, hess


def _newton_step(grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """−g/H where the log-likelihood is locally concave (H < 0); no move elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hess < 0, -grad / hess, 0.0)


def mle_subjective_model(answers: pd.DataFrame, *, content: str = "stimulus", value: str = "value",
                         tol: float = 1e-8, max_iter: int = 20000) -> MleFit:
    """Fits x_e (true quality), b_s (bias), v_s (inconsistency) and a_c (content ambiguity) by maximum likelihood.

    Parameters
    ----------
    answers : pandas.DataFrame
        Test answers in long format; a presentation e is a (stimulus, scale, item) triple, all scales pooled.
    content : str
        Column defining the content c(e) that shares an ambiguity a_c; by default the panorama itself.
    tol, max_iter : float, int
        Stop when every x_e is within ``tol`` of its target or after ``max_iter`` sweeps.

    Returns
    -------
    MleFit

    Notes
    -----
    Model: u_es = x_e + b_s + ε_es, ε_es ~ N(0, v_s² + a_c(e)²), with Σ_s b_s = 0 for identifiability.
    Each sweep moves every block 10 % of its step, in the order b, v, a, x (as sureal), with
    w_es = 1 / (v_s² + a_c(e)²) and r_es = u_es − x_e − b_s:

    * b_s → Σ_e w_es (u_es − x_e) / Σ_e w_es and x_e → Σ_s w_es (u_es − b_s) / Σ_s w_es (the exact
      conditional maxima);
    * v_s and a_c take a Newton step on log L (derivatives in :func:`_variance_newton_terms`, summed over
      the participant's presentations, or over all answers to content c), kept ≥ 0.

    The damping matters: the likelihood is unbounded where some v_s and the a_c of everything that
    participant rated are 0, and undamped steps run into that corner. Finally b_s is centred and x_e
    shifted by the same amount.

    Standard errors are 1/√I from the Fisher information of each parameter given the others (as sureal):
    I(x_e) = Σ_s w_es, I(b_s) = Σ_e w_es, I(v_s) = Σ_e 2 v_s² w_es², I(a_c) = Σ_{e∈c, s} 2 a_c² w_es²;
    95 % CIs are ±1.96 SE (asymptotic normality of the MLE; lower ends of v_s, a_c clipped at 0).

    References
    ----------
    ITU-T P.910 (11/2021) Annex E; ITU-T P.913 (06/2021) §12.6; Z. Li and C. G. Bampis, "Recover subjective
    quality scores from noisy measurements", DCC 2017; Netflix sureal, ``MaximumLikelihoodEstimationModel``.
    """
    # 1. Scores as a presentations × participants matrix (NaN: not rated; repeated answers averaged).
    e_codes = answers.groupby(list(PRESENTATION), observed=True, sort=True).ngroup().to_numpy()
    s_cat = pd.Categorical(answers["participant"].astype("string"))
    s_codes = s_cat.codes
    n_e, n_s = e_codes.max() + 1, len(s_cat.categories)
    if n_s < 2:
        raise AnalysisError("the MLE subjective model needs at least 2 participants; use --screening none")
    sums = np.zeros((n_e, n_s))
    counts = np.zeros((n_e, n_s))
    np.add.at(sums, (e_codes, s_codes), answers[value].to_numpy(float))
    np.add.at(counts, (e_codes, s_codes), 1.0)
    observed = counts > 0
    u = np.where(observed, sums / np.maximum(counts, 1.0), np.nan)
    pres = (
        answers.assign(_e=e_codes)
        .groupby("_e", sort=True)
        .agg(stimulus=("stimulus", "first"), scale=("scale", "first"), item=("item", "first"),
             scene=("scene", "first"), c=(content, "first"))
    )
    c_cat = pd.Categorical(pres["c"].astype("string"))
    c_of_e = c_cat.codes
    n_c = len(c_cat.categories)
    mask = observed.astype(float)

    # 2. Start from the MOS and the residual spreads, as sureal does.
    x_e = np.nanmean(u, axis=1)
    b_s = np.zeros(n_s)
    resid = u - x_e[:, None]
    v2 = np.nanmean(resid**2, axis=0)
    a2 = np.array([np.nanmean(resid[c_of_e == c] ** 2) for c in range(n_c)])
    u0 = np.where(observed, u, 0.0)

    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        s2 = np.maximum(v2[None, :] + a2[c_of_e][:, None], _MIN_VARIANCE)
        w = mask / s2
        b_target = (w * (u0 - x_e[:, None])).sum(axis=0) / w.sum(axis=0)
        b_s = b_s + _STEP * (b_target - b_s)
        r2 = mask * (u0 - x_e[:, None] - b_s[None, :]) ** 2
        v_s = np.sqrt(v2)
        grad, hess = _variance_newton_terms(r2, s2, mask, v_s[None, :])
        v_s = np.maximum(v_s + _STEP * _newton_step(grad.sum(axis=0), hess.sum(axis=0)), 0.0)
        v2 = v_s**2
        s2 = np.maximum(v2[None, :] + a2[c_of_e][:, None], _MIN_VARIANCE)
        a_c = np.sqrt(a2)
        grad, hess = _variance_newton_terms(r2, s2, mask, a_c[c_of_e][:, None])
        step = _newton_step(np.bincount(c_of_e, grad.sum(axis=1), minlength=n_c),
                            np.bincount(c_of_e, hess.sum(axis=1), minlength=n_c))
        a2 = np.maximum(a_c + _STEP * step, 0.0) ** 2
        w = mask / np.maximum(v2[None, :] + a2[c_of_e][:, None], _MIN_VARIANCE)
        x_target = (w * (u0 - b_s[None, :])).sum(axis=1) / w.sum(axis=1)
        change = np.max(np.abs(x_target - x_e))
        x_e = x_e + _STEP * (x_target - x_e)
        if change < tol:
            converged = True
            break
    # Identifiability: Σ_s b_s = 0; the shift moves to x_e and leaves every prediction x_e + b_s unchanged.
    shift = b_s.mean()
    b_s = b_s - shift
    x_e = x_e + shift

    # 3. Fisher information of each parameter given the others.
    s2 = np.maximum(v2[None, :] + a2[c_of_e][:, None], _MIN_VARIANCE)
    w = mask / s2
    w2 = mask / s2**2
    v_s, a_c = np.sqrt(v2), np.sqrt(a2)
    x_se = 1.0 / np.sqrt(w.sum(axis=1))
    b_se = 1.0 / np.sqrt(w.sum(axis=0))
    with np.errstate(divide="ignore"):
        v_se = 1.0 / np.sqrt(2.0 * v2 * w2.sum(axis=0))
        a_se = 1.0 / np.sqrt(2.0 * a2 * np.bincount(c_of_e, w2.sum(axis=1), minlength=n_c))

    presentations = pres.drop(columns="c").reset_index(drop=True)
    presentations["n"] = observed.sum(axis=1)
    presentations["x_e"] = x_e
    presentations["x_e_se"] = x_se
    presentations["x_e_ci_low"] = x_e - _Z95 * x_se
    presentations["x_e_ci_high"] = x_e + _Z95 * x_se
    participants = pd.DataFrame({
        "participant": list(s_cat.categories), "n": observed.sum(axis=0),
        "b_s": b_s, "b_s_se": b_se, "b_s_ci_low": b_s - _Z95 * b_se, "b_s_ci_high": b_s + _Z95 * b_se,
        "v_s": v_s, "v_s_se": v_se, "v_s_ci_low": np.maximum(v_s - _Z95 * v_se, 0.0),
        "v_s_ci_high": v_s + _Z95 * v_se,
    })
    contents = pd.DataFrame({
        "content": list(c_cat.categories), "a_c": a_c, "a_c_se": a_se,
        "a_c_ci_low": np.maximum(a_c - _Z95 * a_se, 0.0), "a_c_ci_high": a_c + _Z95 * a_se,
    })
    return MleFit(
        presentations=presentations,
        participants=participants,
        contents=contents,
        content_column=content,
        log_likelihood=mle_log_likelihood(u, x_e, b_s, v_s, a_c[c_of_e]),
        n_iter=n_iter,
        converged=converged,
    )
