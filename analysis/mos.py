"""Mean opinion scores with Student-t confidence intervals (ITU-R BT.500 §A1-2.2, small-sample form)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.validate import require_finite

SINGLE_OBSERVER_NOTE = "CI undefined with a single participant (N = 1): no spread to estimate"


def student_t_quantile(n: np.ndarray | int, confidence: float = 0.95) -> np.ndarray:
    """The quantile t(1 − α/2, N − 1) used for a two-sided CI of a mean of N scores.

    Returns NaN where N < 2 (no degrees of freedom). For N = 32 and 95 % it is 2.0395.
    """
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(n >= 2, stats.t.ppf(0.5 + confidence / 2.0, np.maximum(n - 1.0, 1.0)), np.nan)


def mean_opinion_score(u_ij: pd.DataFrame, by: Sequence[str], *, value: str = "value",
                       confidence: float = 0.95) -> pd.DataFrame:
    """MOS, SD (SOS), N and the Student-t confidence interval of ``value`` within each group of ``by``.

    Parameters
    ----------
    u_ij : pandas.DataFrame
        One score per row: each observer's score (or an observer's mean score) for a group.
    by : sequence of str
        Grouping columns; one output row per group, in sorted order.
    value : str
        Column holding the scores.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    pandas.DataFrame
        ``by`` plus ``mos, sd, n, half_width, ci_low, ci_high`` and ``note`` (the reason a CI is NaN).

    Notes
    -----
    MOS_j = (1/N) Σ_i u_ij;  S_j = sqrt(Σ_i (u_ij − MOS_j)² / (N − 1));
    CI = MOS_j ± t(1 − α/2, N − 1) · S_j / √N.

    BT.500 writes 1.96 for the quantile; with the 15–40 observers of a laboratory study the normal value
    understates the interval, so the t quantile is used (2.0395 for N = 32).

    References
    ----------
    ITU-R BT.500-14 (2019), Annex 1 §A1-2.2.1; ITU-T P.913 (2021) §12.
    """
    require_finite(u_ij, value, "mean_opinion_score")
    grouped = u_ij.groupby(list(by), observed=True, sort=True)[value]
    out = grouped.agg(mos="mean", sd="std", n="count").reset_index()
    n = out["n"].to_numpy()
    half = student_t_quantile(n, confidence) * out["sd"].to_numpy() / np.sqrt(n)
    out["half_width"] = half
    out["ci_low"] = out["mos"] - half
    out["ci_high"] = out["mos"] + half
    out["note"] = np.where(n < 2, SINGLE_OBSERVER_NOTE, "")
    return out


def participant_means(answers: pd.DataFrame, by: Sequence[str], *, value: str = "value") -> pd.DataFrame:
    """Each participant's mean score within each group of ``by`` (the observer is the sampling unit).

    Items of a scale and stimuli of a scene rated by the same participant are not independent samples, so
    summaries over scenes or scales first average each participant's answers and then take the MOS over
    participants; N is then the number of participants. For a single presentation (stimulus × scale ×
    item) each participant has one answer and this is the plain MOS of BT.500.
    """
    require_finite(answers, value, "participant_means")
    keys = list(by) + ["participant"]
    return answers.groupby(keys, observed=True, sort=False)[value].mean().reset_index()


def summarise(answers: pd.DataFrame, by: Sequence[str], *, value: str = "value",
              confidence: float = 0.95) -> pd.DataFrame:
    """MOS/SD/N/CI over participants within each group of ``by`` (see :func:`participant_means`)."""
    return mean_opinion_score(participant_means(answers, by, value=value), by, value=value, confidence=confidence)


def all_summaries(answers: pd.DataFrame, *, value: str = "value") -> dict[str, pd.DataFrame]:
    """The summaries the report lists: per scale, per scene × scale, per item × scene, per stimulus × scale
    and per presentation (stimulus × scale × item)."""
    return {
        "scale": summarise(answers, ["scale"], value=value),
        "scene": summarise(answers, ["scale", "scene"], value=value),
        "item": summarise(answers, ["scale", "item", "scene"], value=value),
        "stimulus": summarise(answers, ["scale", "scene", "stimulus"], value=value),
        "presentation": summarise(answers, ["scale", "item", "scene", "stimulus"], value=value),
    }
