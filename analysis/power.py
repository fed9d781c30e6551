"""How many participants: a-priori power of paired comparisons with a multiple-comparison correction, and the
smallest difference a study of N participants can detect.

The paired t-test is the one of the VQEG number-of-subjects tool (Brunnström & Barkowsky 2018): effect size
d = ΔMOS / SD, with SD the standard deviation of the participants' paired differences.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize, stats

from study.errors import AnalysisError

CORRECTIONS = ("none", "bonferroni", "holm")
# Monte Carlo draws for Holm's step-down procedure (fixed seed: the same question gives the same answer).
_HOLM_DRAWS = 20000
_MAX_N = 100000


def _check(delta: float | None, sd: float, comparisons: int, power: float, alpha: float) -> None:
    if delta is not None and not (np.isfinite(delta) and delta > 0):
        raise AnalysisError(f"--delta {delta}: the difference to detect must be a positive number of scale points")
    if not (np.isfinite(sd) and sd > 0):
        raise AnalysisError(f"--sd {sd}: the standard deviation of the paired differences must be positive")
    if int(comparisons) != comparisons or comparisons < 1:
        raise AnalysisError(f"--comparisons {comparisons}: give a whole number of comparisons, at least 1")
    if not 0 < power < 1:
        raise AnalysisError(f"--power {power}: give a probability between 0 and 1, e.g. 0.8")
    if not 0 < alpha < 1:
        raise AnalysisError(f"--alpha {alpha}: give a family-wise error rate between 0 and 1, e.g. 0.05")


def paired_t_power(n: int, d: float, alpha: float) -> float:
    """Power of a two-sided paired t-test of N participants at effect size d ≥ 0 and level α.

    P(|T| > t_{1−α/2, N−1}) for T ~ noncentral t(N − 1, d√N). scipy's noncentral t returns NaN for some
    far lower tails (statsmodels' power inherits it, e.g. N = 20, d = 1.25, α = 0.0005); that tail is then
    below 1e-15 and counts as 0.
    """
    df, nc = n - 1, d * np.sqrt(n)
    critical = stats.t.isf(alpha / 2.0, df)
    upper = float(stats.nct.sf(critical, df, nc))
    lower = float(stats.nct.cdf(-critical, df, nc))
    return upper + (lower if np.isfinite(lower) else 0.0)


@lru_cache(maxsize=64)
def _holm_draws(n: int, comparisons: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard normals and √(χ²_{N−1}/(N−1)) for :func:`holm_power`, drawn once per (N, m)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((_HOLM_DRAWS, comparisons))
    chi = np.sqrt(rng.chisquare(n - 1, (_HOLM_DRAWS, comparisons)) / (n - 1))
    return z, chi


def holm_power(n: int, d: float, comparisons: int, alpha: float, *, seed: int = 0) -> float:
    """Probability that Holm's procedure rejects a given one of m comparisons when all m differ by d.

    Notes
    -----
    The m paired t statistics are drawn independently, T = (Z + d√N) / √(χ²_{N−1} / (N − 1)); sorted by |T|
    (smallest p first), H_(k) is rejected while |T|_(k) exceeds the two-sided critical value at
    α / (m − k + 1) (Holm 1979). Monte Carlo with 20 000 draws of all m tests and a fixed seed, the same draws
    for every d, so the power rises smoothly with d.
    """
    z, chi = _holm_draws(int(n), int(comparisons), seed)
    t = np.sort(np.abs((z + d * np.sqrt(n)) / chi), axis=1)[:, ::-1]
    critical = stats.t.isf(alpha / (comparisons - np.arange(comparisons)) / 2.0, n - 1)
    # Step-down: the first k hypotheses are rejected while every one before them was.
    rejected = np.cumprod(t > critical, axis=1).sum(axis=1)
    return float(rejected.mean() / comparisons)


def _power(correction: str, n: int, d: float, comparisons: int, alpha: float) -> float:
    if correction == "none":
        return paired_t_power(n, d, alpha)
    if correction == "bonferroni":
        return paired_t_power(n, d, alpha / comparisons)
    return holm_power(n, d, comparisons, alpha)


def _smallest_n(correction: str, d: float, comparisons: int, power: float, alpha: float) -> int:
    low, high = 2, 4
    while _power(correction, high, d, comparisons, alpha) < power:
        low, high = high, high * 2
        if high > _MAX_N:
            raise AnalysisError(f"more than {_MAX_N} participants would be needed; is --delta or --sd mistyped?")
    while high - low > 1:
        mid = (low + high) // 2
        if _power(correction, mid, d, comparisons, alpha) >= power:
            high = mid
        else:
            low = mid
    return high if _power(correction, low, d, comparisons, alpha) < power else low


def participants_needed(delta: float, sd: float, comparisons: int, *, power: float = 0.8,
                        alpha: float = 0.05) -> pd.DataFrame:
    """The smallest number of participants for a paired t-test of every comparison, per correction.

    Returns
    -------
    pandas.DataFrame
        ``correction, alpha_per_test, n, power`` (the power reached at that n) for none, Bonferroni and Holm.

    Notes
    -----
    d = delta / sd. Uncorrected and Bonferroni (α / m per test) use statsmodels' exact noncentral-t power;
    Holm's step-down procedure (:func:`holm_power`) needs between the two when all m differences are delta,
    the comparisons independent. Raises :class:`AnalysisError` for bad arguments.
    """
    _check(delta, sd, comparisons, power, alpha)
    d = delta / sd
    rows = []
    for correction in CORRECTIONS:
        n = _smallest_n(correction, d, comparisons, power, alpha)
        per_test = {"none": alpha, "bonferroni": alpha / comparisons, "holm": alpha / comparisons}[correction]
        label = f"{per_test:.4g}" + (f" .. {alpha:g} (step-down)" if correction == "holm" and comparisons > 1 else "")
        rows.append((correction, label, n, _power(correction, n, d, comparisons, alpha)))
    return pd.DataFrame(rows, columns=["correction", "alpha_per_test", "n", "power"])


def smallest_detectable_difference(n: int, sd: float, comparisons: int, *, power: float = 0.8,
                                   alpha: float = 0.05, correction: str = "bonferroni") -> float:
    """The difference ΔMOS that N participants detect with the given power (the design's sensitivity).

    This is what the achieved N can show, computed from the design, not a "post-hoc power" of the observed
    effect (which only restates the p value). d solves power(N, d) = target; Δ = d · sd.
    """
    _check(None, sd, comparisons, power, alpha)
    if n < 2:
        return float("nan")
    f = lambda d: _power(correction, int(n), d, comparisons, alpha) - power  # noqa: E731
    high = 1.0
    while f(high) < 0:
        high *= 2
    d = optimize.brentq(f, 1e-6, high, xtol=1e-5)
    return float(d * sd)
