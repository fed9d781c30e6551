"""The SOS hypothesis (Hoßfeld, Schatz & Egger 2011): how rating diversity depends on the MOS, one parameter a per scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.mle import PRESENTATION
from analysis.simulate import PAPER_SCALES
from analysis.table1 import ordered
from analysis.validate import require_finite


def sos_points(answers: pd.DataFrame, *, value: str = "value") -> pd.DataFrame:
    """MOS, SOS (SD over all ratings, N − 1) and N of every presentation (stimulus × scale × item)."""
    require_finite(answers, value, "sos_points")
    grouped = answers.groupby(list(PRESENTATION), observed=True)
    out = grouped[value].agg(mos="mean", sos="std", n="count").reset_index()
    limits = grouped.agg(scale_min=("scale_min", "min"), scale_max=("scale_max", "max")).reset_index(drop=True)
    return pd.concat([out, limits], axis=1)


def sos_hypothesis(answers: pd.DataFrame, *, value: str = "value", confidence: float = 0.95) -> pd.DataFrame:
    """The SOS parameter a of every scale, fitted by least squares over its presentations.

    Returns
    -------
    pandas.DataFrame
        ``scale, presentations, a, a_se, a_ci_low, a_ci_high, rmse, r2, note``.

    Notes
    -----
    On a scale L..H the SOS hypothesis is SOS² = a (MOS − L)(H − MOS), which is a (−MOS² + 6 MOS − 5) on 1..5;
    a = 0 means everyone agrees, and a = 1 is the largest spread possible at that MOS (ratings only at L and H).
    a minimises Σ_j (SOS_j − √(a g_j))² with g_j = (MOS_j − L)(H − MOS_j) (scipy ``curve_fit``); its SE comes
    from the fit's covariance, the CI uses the t quantile with J − 1 degrees of freedom, and
    R² = 1 − SS_res / SS_tot of the SOS. SOS is the SD over participants with N − 1, as in Table 1, so a may
    exceed 1 by up to N/(N − 1). Presentations rated by fewer than 2 participants are left out.

    References
    ----------
    T. Hoßfeld, R. Schatz, S. Egger, "SOS: The MOS is not enough!", QoMEX 2011; T. Hoßfeld, P. E. Heegaard,
    M. Varela, S. Möller, "QoE beyond the MOS", Quality and User Experience 1 (2016) 2.
    """
    points = sos_points(answers, value=value)
    points = points[points["n"] >= 2]
    rows = []
    for scale in ordered(points["scale"].astype("string").unique(), tuple(PAPER_SCALES)):
        p = points[points["scale"].astype("string") == scale]
        g = (p["mos"] - p["scale_min"]) * (p["scale_max"] - p["mos"])
        sos = p["sos"].to_numpy(float)
        g = np.maximum(g.to_numpy(float), 0.0)
        if len(p) < 2 or not (g > 0).any():
            rows.append((scale, len(p), np.nan, np.nan, np.nan, np.nan, np.nan, np.nan,
                         "needs at least 2 presentations with a MOS inside the scale"))
            continue
        (a,), cov = optimize.curve_fit(lambda gg, a: np.sqrt(a * gg), g, sos, p0=[0.2], bounds=(0.0, np.inf))
        se = float(np.sqrt(cov[0, 0])) if np.isfinite(cov[0, 0]) else np.nan
        half = stats.t.ppf(0.5 + confidence / 2.0, len(p) - 1) * se
        resid = sos - np.sqrt(a * g)
        total = np.sum((sos - sos.mean()) ** 2)
        r2 = 1.0 - np.sum(resid**2) / total if total > 0 else np.nan
        rows.append((scale, len(p), float(a), se, max(a - half, 0.0), a + half, float(np.sqrt(np.mean(resid**2))), r2, ""))
    return pd.DataFrame(rows, columns=["scale", "presentations", "a", "a_se", "a_ci_low", "a_ci_high", "rmse", "r2", "note"])
