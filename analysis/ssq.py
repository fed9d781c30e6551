"""Simulator Sickness Questionnaire scores (Kennedy et al. 1993) and the pre/post comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.validate import prepare_ssq

# Items (1-based, Kennedy et al. 1993 order) that load on each subscale; some count on two subscales.
SSQ_ITEMS = {
    "nausea": (1, 6, 7, 8, 9, 15, 16),
    "oculomotor": (1, 2, 3, 4, 5, 9, 11),
    "disorientation": (5, 10, 11, 12, 13, 14),
}
SSQ_WEIGHTS = {"nausea": 9.54, "oculomotor": 7.58, "disorientation": 13.92, "total": 3.74}
SUBSCALES = ("nausea", "oculomotor", "disorientation", "total")


def ssq_scores(ssq: pd.DataFrame) -> pd.DataFrame:
    """Weighted SSQ scores of every questionnaire.

    Parameters
    ----------
    ssq : pandas.DataFrame
        ``participant, session, phase, item (1..16), value (0..3)``.

    Returns
    -------
    pandas.DataFrame
        ``participant, session, phase``, the raw sums ``n_raw, o_raw, d_raw`` and the scores
        ``nausea, oculomotor, disorientation, total``.

    Notes
    -----
    With raw sums N, O, D over the items in :data:`SSQ_ITEMS`:
    Nausea = 9.54 N, Oculomotor = 7.58 O, Disorientation = 13.92 D, Total = 3.74 (N + O + D).

    References
    ----------
    R. S. Kennedy, N. E. Lane, K. S. Berbaum, M. G. Lilienthal, "Simulator Sickness Questionnaire: an
    enhanced method for quantifying simulator sickness", Int. J. Aviat. Psychol. 3 (1993) 203–220.
    """
    frame = prepare_ssq(ssq)
    wide = frame.pivot_table(index=["participant", "session", "phase"], columns="item", values="value",
                             aggfunc="first", observed=True)
    out = pd.DataFrame(index=wide.index)
    for short, name in (("n_raw", "nausea"), ("o_raw", "oculomotor"), ("d_raw", "disorientation")):
        out[short] = wide[list(SSQ_ITEMS[name])].sum(axis=1).astype(int)
    out["nausea"] = SSQ_WEIGHTS["nausea"] * out["n_raw"]
    out["oculomotor"] = SSQ_WEIGHTS["oculomotor"] * out["o_raw"]
    out["disorientation"] = SSQ_WEIGHTS["disorientation"] * out["d_raw"]
    out["total"] = SSQ_WEIGHTS["total"] * (out["n_raw"] + out["o_raw"] + out["d_raw"])
    return out.reset_index()


def ssq_pre_post(scores: pd.DataFrame) -> pd.DataFrame:
    """Pre vs. post comparison of every SSQ score with the Wilcoxon signed-rank test.

    Parameters
    ----------
    scores : pandas.DataFrame
        Output of :func:`ssq_scores`.

    Returns
    -------
    pandas.DataFrame
        ``score, n_pairs, pre_mean, post_mean, pre_median, post_median, diff_median, test, statistic, p,
        rank_biserial, note``.

    Notes
    -----
    SSQ scores are discrete and skewed (most people report few symptoms), so the paired test is the
    two-sided Wilcoxon signed-rank test on post − pre (zero differences dropped, ``zero_method="wilcox"``;
    exact p without tied differences and n ≤ 50, else the tie-corrected normal approximation).
    Effect size: matched-pairs rank-biserial r = (T⁺ − T⁻) / (T⁺ + T⁻), in −1..1, positive when
    symptoms increased.

    References
    ----------
    F. Wilcoxon, Biometrics Bull. 1 (1945) 80–83; D. S. Kerby, Compr. Psychol. 3 (2014) 11.IT.3.1.
    """
    keys = ["participant", "session"]
    pre = scores[scores["phase"] == "pre"].set_index(keys)
    post = scores[scores["phase"] == "post"].set_index(keys)
    both = pre.index.intersection(post.index)
    rows = []
    for score in SUBSCALES:
        a = pre.loc[both, score].to_numpy(float)
        b = post.loc[both, score].to_numpy(float)
        diff = b - a
        nonzero = diff[diff != 0]
        statistic = p = r = np.nan
        note = ""
        exact = False
        if len(both) == 0:
            note = "no participant answered the SSQ both before and after"
        elif nonzero.size == 0:
            note = "all pre/post differences are zero: no change to test"
        else:
            # Exact null distribution while it is cheap and valid (no tied |d|); otherwise the normal
            # approximation with tie correction (scipy's "auto" falls back to a slow permutation test).
            exact = nonzero.size <= 50 and np.unique(np.abs(nonzero)).size == nonzero.size
            result = stats.wilcoxon(b, a, zero_method="wilcox", alternative="two-sided",
                                    method="exact" if exact else "approx")
            statistic, p = float(result.statistic), float(result.pvalue)
            ranks = stats.rankdata(np.abs(nonzero))
            t_plus, t_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
            r = (t_plus - t_minus) / (t_plus + t_minus)
        rows.append((score, len(both), a.mean() if a.size else np.nan, b.mean() if b.size else np.nan,
                     np.median(a) if a.size else np.nan, np.median(b) if b.size else np.nan,
                     np.median(diff) if diff.size else np.nan, "Wilcoxon signed-rank (two-sided, paired" + (", exact)" if exact else ", normal approx.)"),
                     statistic, p, r, note))
    return pd.DataFrame(rows, columns=["score", "n_pairs", "pre_mean", "post_mean", "pre_median", "post_median",
                                       "diff_median", "test", "statistic", "p", "rank_biserial", "note"])
