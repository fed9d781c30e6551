"""Inter-rater reliability per scale: ICC(2,k) with pingouin and Krippendorff's ordinal α."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.mle import PRESENTATION
from analysis.validate import require_finite

# pingouin ≥ 0.6 labels the forms as McGraw & Wong (1996); older versions used Shrout & Fleiss's names.
_MCGRAW_WONG_TO_SHROUT_FLEISS = {
    "ICC(1,1)": "ICC1", "ICC(A,1)": "ICC2", "ICC(C,1)": "ICC3",
    "ICC(1,k)": "ICC1k", "ICC(A,k)": "ICC2k", "ICC(C,k)": "ICC3k",
}


def intraclass_correlation(data: pd.DataFrame, *, targets: str, raters: str, ratings: str) -> pd.DataFrame:
    """All six Shrout & Fleiss (1979) ICC forms for long-format ratings, via ``pingouin.intraclass_corr``.

    Parameters
    ----------
    data : pandas.DataFrame
        One rating per row.
    targets, raters, ratings : str
        Column names; targets rated incompletely are dropped (pingouin's ``nan_policy="omit"``).

    Returns
    -------
    pandas.DataFrame
        pingouin's table, indexed by the Shrout & Fleiss name (ICC1, ICC2, ICC3, ICC1k, ICC2k, ICC3k) with ``ICC, F, df1,
        df2, pval, CI95``.

    Notes
    -----
    ICC(2,k), the two-way random-effects, average-measures, absolute-agreement form, is
    (MS_R − MS_E) / (MS_R + (MS_C − MS_E)/n), with MS_R the targets', MS_C the raters' and MS_E the residual
    mean square of n targets. It is the one to report for a MOS: the raters are a sample of possible
    participants and the score used is their mean.

    References
    ----------
    P. E. Shrout and J. L. Fleiss, "Intraclass correlations: uses in assessing rater reliability",
    Psychol. Bull. 86 (1979) 420–428; K. O. McGraw and S. P. Wong, Psychol. Methods 1 (1996) 30–46.
    """
    import pingouin

    table = pingouin.intraclass_corr(data=data, targets=targets, raters=raters, ratings=ratings, nan_policy="omit")
    return table.assign(Type=table["Type"].replace(_MCGRAW_WONG_TO_SHROUT_FLEISS)).set_index("Type")


def krippendorff_alpha_ordinal(matrix: np.ndarray, value_domain: list[int]) -> float:
    """Krippendorff's α for ordinal data with the ``krippendorff`` package.

    Parameters
    ----------
    matrix : (raters, units) float
        Ratings, NaN where a rater did not rate a unit.
    value_domain : list of int
        The ordered scale values (e.g. ``[1, 2, 3, 4, 5]``); ordinal distances count every value in between.

    References
    ----------
    K. Krippendorff, Content Analysis: An Introduction to Its Methodology, 4th ed., Sage 2018, ch. 12.
    """
    import krippendorff

    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=value_domain))


def reliability(answers: pd.DataFrame, *, value: str = "value") -> pd.DataFrame:
    """ICC(2,k) with its 95 % CI and Krippendorff's ordinal α for every scale.

    A target (unit) is one presentation, a stimulus × item of the scale; raters are participants. Repeated
    answers of a participant to a presentation are averaged for the ICC (the α uses the rounded mean).

    Returns
    -------
    pandas.DataFrame
        ``scale, targets, raters, icc2k, icc2k_ci_low, icc2k_ci_high, icc2k_p, alpha_ordinal, note``.
    """
    require_finite(answers, value, "reliability")
    rows = []
    for scale, frame in answers.groupby("scale", observed=True, sort=False):
        scale = str(scale)
        low, high = int(frame["scale_min"].min()), int(frame["scale_max"].max())
        target = frame.groupby(list(PRESENTATION), observed=True, sort=False).ngroup()
        data = pd.DataFrame({"target": target.to_numpy(), "rater": frame["participant"].astype("string").to_numpy(),
                             "rating": frame[value].to_numpy(float)})
        data = data.groupby(["target", "rater"], as_index=False)["rating"].mean()
        n_targets, n_raters = data["target"].nunique(), data["rater"].nunique()
        icc = (np.nan, np.nan, np.nan, np.nan)
        note = ""
        if n_raters < 2:
            note = "reliability undefined with a single participant"
        elif n_targets < 5:
            note = f"ICC needs at least 5 rated presentations, this scale has {n_targets}"
        else:
            try:
                row = intraclass_correlation(data, targets="target", raters="rater", ratings="rating").loc["ICC2k"]
                icc = (float(row["ICC"]), float(row["CI95"][0]), float(row["CI95"][1]), float(row["pval"]))
            except (AssertionError, ValueError) as exc:
                note = f"ICC not computable: {exc}"
        alpha = np.nan
        if n_raters >= 2:
            matrix = data.pivot(index="rater", columns="target", values="rating").round().to_numpy(float)
            if np.unique(matrix[np.isfinite(matrix)]).size > 1:
                alpha = krippendorff_alpha_ordinal(matrix, list(range(low, high + 1)))
            else:
                note = (note + "; " if note else "") + "α undefined: every rating is the same value"
        rows.append((scale, n_targets, n_raters, *icc, alpha, note))
    return pd.DataFrame(rows, columns=["scale", "targets", "raters", "icc2k", "icc2k_ci_low", "icc2k_ci_high",
                                       "icc2k_p", "alpha_ordinal", "note"])
