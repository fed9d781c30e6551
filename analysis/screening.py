"""Observer screening: ITU-R BT.500 β2 rejection, ITU-T P.913 bias removal, P.910 Annex E MLE.

Every method returns a :class:`ScreeningResult`: the decision (who is rejected, how scores change), the
statistics behind it and notes that say what was pooled. A presentation is one (stimulus, scale, item)
triple; all items of all scales are pooled as presentations, because the paper's design has only four
scenes per scale, too few for the 5 % rule of BT.500 (one flagged score would already be 25 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from analysis.mle import PRESENTATION, MleFit, mle_subjective_model
from analysis.validate import category_codes, require_finite
from study.errors import AnalysisError

Method = Literal["none", "bt500", "p913", "mle"]
METHODS: tuple[str, ...] = ("none", "bt500", "p913", "mle")


@dataclass(frozen=True)
class ScreeningResult:
    """What a screening method decided and why.

    Attributes
    ----------
    method : {"none", "bt500", "p913", "mle"}
    answers : pandas.DataFrame
        The answers to analyse after screening: rejected participants' rows removed (bt500) or ``value``
        replaced by the bias-corrected float score (p913, mle).
    rejected : tuple of str
        Participants removed (only bt500 removes anyone).
    participants : pandas.DataFrame
        One row per participant with the method's statistics (bt500: ``n, P, Q, ratio_pq, ratio_balance,
        rejected``; p913: ``n, bias``; mle: the :class:`~analysis.mle.MleFit` participant table).
    presentations : pandas.DataFrame
        One row per presentation (bt500: ``n, mean, sd, beta2, normal, threshold``; mle: x_e with CI).
    notes : tuple of str
        Human-readable statements of what was done and pooled.
    mle : MleFit or None
        The full MLE fit for ``method="mle"``.
    warnings : tuple of str
        What must be shown prominently: a degenerate or non-converged MLE fit.
    """

    method: str
    answers: pd.DataFrame
    rejected: tuple[str, ...]
    participants: pd.DataFrame
    presentations: pd.DataFrame
    notes: tuple[str, ...]
    mle: MleFit | None = field(default=None)
    warnings: tuple[str, ...] = ()


def _presentation_codes(answers: pd.DataFrame) -> np.ndarray:
    return answers.groupby(list(PRESENTATION), observed=True, sort=True).ngroup().to_numpy()


def _pooling_note(answers: pd.DataFrame, n_presentations: int, *, why: str = "") -> str:
    per_scale = answers.groupby("scale", observed=True)["item"].nunique()
    items = ", ".join(f"{scale} ×{n}" for scale, n in per_scale.items())
    return (
        f"pooled all items of all scales ({items}) over {answers['stimulus'].nunique()} stimuli as "
        f"{n_presentations} presentations" + (f", {why}" if why else "")
    )


def bt500_kurtosis(u_jkr: np.ndarray, codes: np.ndarray, n_presentations: int) -> tuple[np.ndarray, ...]:
    """Mean, second and fourth central moments and β2 = m4 / m2² of every presentation.

    Parameters
    ----------
    u_jkr : (n,) float
        Scores in long format.
    codes : (n,) int
        Presentation index 0..n_presentations−1 of each score.

    Returns
    -------
    mean, m2, m4, beta2 : (n_presentations,) float
        β2 is NaN where all scores are equal (m2 = 0).

    Notes
    -----
    m_x = Σ_i (u_i − ū)^x / N and β2 = m4 / (m2)² (ITU-R BT.500-14 §A1-2.3.1; scipy's ``kurtosis(...,
    fisher=False)``). Computed for all presentations at once with ``numpy.bincount``.
    """
    n = np.bincount(codes, minlength=n_presentations).astype(float)
    mean = np.bincount(codes, u_jkr, minlength=n_presentations) / n
    d = u_jkr - mean[codes]
    d2 = d * d
    m2 = np.bincount(codes, d2, minlength=n_presentations) / n
    m4 = np.bincount(codes, d2 * d2, minlength=n_presentations) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        beta2 = np.where(m2 > 0, m4 / (m2 * m2), np.nan)
    return mean, m2, m4, beta2


def bt500_screening(answers: pd.DataFrame, *, std_ddof: int = 1, value: str = "value") -> ScreeningResult:
    """ITU-R BT.500 β2 observer screening, all items of all scales pooled as presentations.

    Parameters
    ----------
    answers : pandas.DataFrame
        Test answers in long format (see :func:`analysis.validate.prepare_answers`).
    std_ddof : int
        Delta degrees of freedom of σ in the thresholds: 1 is BT.500's S_jkr (N − 1); sureal uses 0.

    Returns
    -------
    ScreeningResult

    Notes
    -----
    For each presentation: ū, σ and β2 (:func:`bt500_kurtosis`). If 2 ≤ β2 ≤ 4 the scores count as normal
    and the threshold is 2σ, otherwise √20·σ. Observer i gets P_i += 1 for every score u ≥ ū + threshold
    and Q_i += 1 for every u ≤ ū − threshold. Observer i is rejected if

        (P_i + Q_i) / (J·K·R) > 0.05  and  |P_i − Q_i| / (P_i + Q_i) < 0.3,

    i.e. if they are often far from the panel *on both sides*; an observer who is only harsher or only
    more lenient is kept. J·K·R is the number of scores of observer i (all presentations in a complete
    design). If every observer would be rejected, none is (sureal's safeguard).

    A presentation whose scores are all equal has no spread and an undefined β2: no observer deviates
    from it, so it adds no P or Q (the formula with σ = 0 would flag everyone).

    References
    ----------
    ITU-R BT.500-14 (10/2019) §A1-2.3.1; Netflix sureal ``SubjrejMosModel`` (``subject_rejection=True``).
    """
    require_finite(answers, value, "bt500_screening")
    codes = _presentation_codes(answers)
    n_pres = int(codes.max()) + 1
    u = answers[value].to_numpy(float)
    mean, m2, _, beta2 = bt500_kurtosis(u, codes, n_pres)
    n = np.bincount(codes, minlength=n_pres).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(m2 * n / np.maximum(n - std_ddof, 1.0))
    normal = (beta2 >= 2.0) & (beta2 <= 4.0)
    threshold = np.where(normal, 2.0, np.sqrt(20.0)) * sigma
    spread = m2 > 0
    mean_r, thr_r, spread_r = mean[codes], threshold[codes], spread[codes]
    p_row = spread_r & (u >= mean_r + thr_r)
    q_row = spread_r & (u <= mean_r - thr_r)

    obs_codes, observers = category_codes(answers["participant"])
    n_obs = len(observers)
    scores = np.bincount(obs_codes, minlength=n_obs)
    p = np.bincount(obs_codes, p_row, minlength=n_obs)
    q = np.bincount(obs_codes, q_row, minlength=n_obs)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_pq = (p + q) / scores
        ratio_balance = np.abs(p - q) / (p + q)
    rejected = (ratio_pq > 0.05) & (ratio_balance < 0.3)
    notes = [_pooling_note(answers, n_pres, why="J·K·R, because 4 scenes per scale are too few for BT.500's 5 % rule")]
    if rejected.all():
        notes.append(f"every one of the {n_obs} observers met the rejection rule, so none is rejected (sureal's safeguard)")
        rejected = np.zeros(n_obs, dtype=bool)
    rejected_ids = tuple(str(c) for c in observers[rejected])
    notes.append(
        f"BT.500 β2 screening (σ with N−{std_ddof}): {len(rejected_ids)} of {n_obs} observers rejected"
        + (f" ({', '.join(rejected_ids)})" if rejected_ids else "")
    )
    participants = pd.DataFrame({
        "participant": observers, "n": scores, "P": p.astype(int), "Q": q.astype(int),
        "ratio_pq": ratio_pq, "ratio_balance": ratio_balance, "rejected": rejected,
    })
    keys = answers.iloc[np.unique(codes, return_index=True)[1]][list(PRESENTATION)].reset_index(drop=True)
    presentations = keys.assign(n=n.astype(int), mean=mean, sd=sigma, beta2=beta2, normal=normal, threshold=threshold)
    kept = answers.loc[~rejected[obs_codes]]
    return ScreeningResult("bt500", kept.reset_index(drop=True), rejected_ids, participants, presentations, tuple(notes))


def p913_bias_removal(answers: pd.DataFrame, *, value: str = "value") -> ScreeningResult:
    """ITU-T P.913 §12.4 subject bias removal, all items of all scales pooled as presentations.

    Notes
    -----
    ψ_j = mean over observers of u_ij (the MOS of presentation j); the bias of observer i is
    b_i = mean over the presentations i rated of (u_ij − ψ_j); the corrected score is r_ij = u_ij − b_i.
    Nobody is removed; corrected scores are real numbers and may leave the scale's range slightly.

    References
    ----------
    ITU-T P.913 (06/2021) §12.4; sureal ``BiasremvMosModel`` (``bias_offset=True``).
    """
    require_finite(answers, value, "p913_bias_removal")
    codes = _presentation_codes(answers)
    u = answers[value].to_numpy(float)
    n_pres = int(codes.max()) + 1
    psi_j = np.bincount(codes, u, minlength=n_pres) / np.bincount(codes, minlength=n_pres)
    obs_codes, observers = category_codes(answers["participant"])
    n_obs = len(observers)
    count = np.bincount(obs_codes, minlength=n_obs)
    b_i = np.bincount(obs_codes, u - psi_j[codes], minlength=n_obs) / count
    corrected = answers.copy()
    corrected[value] = u - b_i[obs_codes]
    notes = (
        _pooling_note(answers, n_pres),
        f"P.913 §12.4 bias removal: each participant's mean offset from the presentation MOS subtracted "
        f"(bias range {b_i.min():+.2f} .. {b_i.max():+.2f}); nobody removed",
    )
    participants = pd.DataFrame({"participant": observers, "n": count, "bias": b_i})
    keys = answers.iloc[np.unique(codes, return_index=True)[1]][list(PRESENTATION)].reset_index(drop=True)
    return ScreeningResult("p913", corrected, (), participants, keys.assign(mos=psi_j), notes)


def mle_screening(answers: pd.DataFrame, *, content: str = "stimulus", value: str = "value") -> ScreeningResult:
    """Applies :func:`analysis.mle.mle_subjective_model`: scores corrected by the estimated bias b_s.

    Table 1 under this method averages the estimated true qualities x_e (see :func:`analysis.table1.table1`);
    the corrected answers u_es − b_s feed the other analyses. Nobody is removed; inconsistent participants
    are down-weighted by 1/(v_s² + a_c²) inside the model.
    """
    fit = mle_subjective_model(answers, content=content, value=value)
    bias = fit.participants.set_index("participant")["b_s"]
    corrected = answers.copy()
    corrected[value] = answers[value].to_numpy(float) - answers["participant"].astype("string").map(bias).to_numpy(float)
    n_pres = len(fit.presentations)
    state = (f"converged (largest derivative of log L {fit.max_gradient:.1g} in SE units)" if fit.converged
             else "NOT converged")
    repeats = f", {fit.repeated} of them repetitions" if fit.repeated else ""
    notes = [
        _pooling_note(answers, n_pres),
        f"P.910 Annex E MLE model (content = {content}) on all {fit.n_ratings} ratings{repeats}: {fit.n_iter} "
        f"sweeps, {state}; bias range {bias.min():+.2f} .. {bias.max():+.2f}, inconsistency "
        f"{fit.participants['v_s'].min():.2f} .. {fit.participants['v_s'].max():.2f}; nobody removed",
    ]
    notes.append("only v_s² + a_c² is identified: (v_s² + δ, a_c² − δ) fits equally well, so compare v_s between "
                 "participants and a_c between contents, not with each other")
    return ScreeningResult("mle", corrected, (), fit.participants, fit.presentations, tuple(notes), fit, fit.warnings)


def no_screening(answers: pd.DataFrame) -> ScreeningResult:
    """Keeps every test answer as recorded."""
    obs = answers.groupby("participant", observed=True).size().rename("n").reset_index()
    return ScreeningResult("none", answers, (), obs, pd.DataFrame(), ("no observer screening: all answers as recorded",))


def screen(answers: pd.DataFrame, method: str = "bt500") -> ScreeningResult:
    """Runs the screening ``method`` (one of :data:`METHODS`) on validated test answers."""
    if method == "none":
        return no_screening(answers)
    if method == "bt500":
        return bt500_screening(answers)
    if method == "p913":
        return p913_bias_removal(answers)
    if method == "mle":
        return mle_screening(answers)
    raise AnalysisError(f"--screening {method!r} is unknown; choose one of {', '.join(METHODS)}")
