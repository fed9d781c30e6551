"""The maximum-likelihood subjective model of ITU-T P.910 Annex E / P.913 §12.6 (Netflix sureal's MLE model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.threads import single_threaded_blas
from analysis.validate import require_finite
from study.errors import AnalysisError

PRESENTATION = ("stimulus", "scale", "item")
_Z95 = stats.norm.ppf(0.975)
#: A rating whose model variance v_s² + a_c² falls below this share of the ratings' own variance is "explained
#: exactly": the fit is in the degenerate corner where the likelihood grows without bound.
DEGENERATE_SHARE = 1e-6
# Step halvings per variance update before the variances are left where they are for this sweep.
_MAX_HALVINGS = 40
_MAX_SHRINK = 2.0
# A variance below this share of the ratings' variance whose step points below 0 is set to 0 (the boundary).
_ZERO_SHARE = 1e-9


@dataclass(frozen=True)
class MleFit:
    """Estimates of the P.910 Annex E model and their 95 % CIs from the Fisher information.

    Attributes
    ----------
    presentations : pandas.DataFrame
        ``stimulus, scale, item, scene, n, x_e, x_e_se, x_e_ci_low, x_e_ci_high`` (true quality per presentation;
        ``n`` counts ratings, repetitions included).
    participants : pandas.DataFrame
        ``participant, n, b_s, b_s_se, b_s_ci_low, b_s_ci_high, v_s, v_s_se, v_s_ci_low, v_s_ci_high``.
    contents : pandas.DataFrame
        ``content, a_c, a_c_se, a_c_ci_low, a_c_ci_high`` (ambiguity of each content, here ``content_column``).
    content_column : str
        The answer column that defines a content c(e).
    log_likelihood : float
        Log-likelihood at the estimate (every rating, repetitions included).
    n_iter : int
        Sweeps run.
    converged : bool
        Every partial derivative of the log-likelihood (projected at v_s² = 0 or a_c² = 0) is below the
        tolerance; ``max_gradient`` is the largest.
    max_gradient : float
    n_ratings : int
        Ratings in the likelihood; ``repeated`` of them are second or later ratings of the same presentation by
        the same participant.
    repeated : int
    degenerate : tuple of str
        Empty for an interior fit; otherwise what went to the degenerate corner and what that means.
    """

    presentations: pd.DataFrame
    participants: pd.DataFrame
    contents: pd.DataFrame
    content_column: str
    log_likelihood: float
    n_iter: int
    converged: bool
    max_gradient: float
    n_ratings: int
    repeated: int
    degenerate: tuple[str, ...] = ()

    @property
    def warnings(self) -> tuple[str, ...]:
        """What a reader must be told before trusting the estimates (empty for a good fit)."""
        out = list(self.degenerate)
        if not self.converged and not self.degenerate:
            out.append(f"the MLE did NOT converge in {self.n_iter} sweeps (largest partial derivative of log L "
                       f"{self.max_gradient:.2g}); treat its estimates with care")
        return tuple(out)


def mle_log_likelihood(u: np.ndarray, e: np.ndarray, s: np.ndarray, x_e: np.ndarray, b_s: np.ndarray,
                       v_s: np.ndarray, a_c_of_e: np.ndarray) -> float:
    """Log-likelihood of the ratings under the P.910 Annex E model, one term per rating.

    Parameters
    ----------
    u : (n,) float
        Every rating, repetitions included.
    e, s : (n,) int
        Presentation and participant index of each rating.
    x_e : (E,) float;  b_s, v_s : (S,) float;  a_c_of_e : (E,) float
        Parameters, with the content ambiguity already looked up per presentation.

    Notes
    -----
    U_esr ~ N(x_e + b_s, v_s² + a_c(e)²) independently for every rating r, so
    log L = Σ_{e,s,r} −½ [log 2π(v_s² + a_c(e)²) + (u_esr − x_e − b_s)² / (v_s² + a_c(e)²)].
    """
    arrays = {"u": u, "x_e": x_e, "b_s": b_s, "v_s": v_s, "a_c_of_e": a_c_of_e}
    for name, array in arrays.items():
        if not np.isfinite(np.asarray(array, dtype=float)).all():
            raise AnalysisError(f"mle_log_likelihood: {name} holds NaN or infinite values; pass finite numbers")
    var = np.asarray(v_s, float)[s] ** 2 + np.asarray(a_c_of_e, float)[e] ** 2
    r = np.asarray(u, float) - np.asarray(x_e, float)[e] - np.asarray(b_s, float)[s]
    with np.errstate(divide="ignore"):
        return float(np.sum(-0.5 * (np.log(2.0 * np.pi * var) + r * r / var)))


@dataclass
class _Grid:
    """Sufficient statistics of the ratings on the presentations × participants grid."""

    n: np.ndarray       # (E, S) ratings per cell
    s1: np.ndarray      # Σ u
    s2: np.ndarray      # Σ u²
    observed: np.ndarray
    c_of_e: np.ndarray  # (E,) content index
    n_c: int

    def residual_ss(self, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        """R_es = Σ_r (u_esr − x_e − b_s)², from the sums (exact algebra, clipped at 0 against rounding)."""
        mu = x[:, None] + b[None, :]
        return np.where(self.observed, np.maximum(self.s2 - 2.0 * mu * self.s1 + self.n * mu * mu, 0.0), 0.0)

    def variance(self, v2: np.ndarray, a2: np.ndarray) -> np.ndarray:
        return np.where(self.observed, v2[None, :] + a2[self.c_of_e][:, None], 1.0)

    def cell_loglik(self, rss: np.ndarray, var: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            term = -0.5 * (self.n * np.log(2.0 * np.pi * var) + rss / var)
        return np.where(self.observed, term, 0.0)

    def by_content(self, per_e: np.ndarray) -> np.ndarray:
        return np.bincount(self.c_of_e, per_e, minlength=self.n_c)


def _solve_quality_and_bias(g: _Grid, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact joint maximum over x_e and b_s (Σ b_s = 0) for fixed variances: weighted least squares.

    With W_es = n_es / var_es and Y_es = Σ_r u_esr / var_es, x_e = (Σ_s Y_es − Σ_s W_es b_s) / Σ_s W_es; putting
    this into the b_s equations leaves the S × S system (D_b − Wᵀ D_x⁻¹ W) b = Σ_e Y − Wᵀ D_x⁻¹ Σ_s Y, whose
    matrix has the null space 1 (a shift of every b_s into x_e); adding λ11ᵀ picks Σ b_s = 0.
    """
    w = np.where(g.observed, g.n / var, 0.0)
    y = np.where(g.observed, g.s1 / var, 0.0)
    wx, wb = w.sum(axis=1), w.sum(axis=0)
    yx = y.sum(axis=1)
    scaled = w / wx[:, None]
    m = np.diag(wb) - w.T @ scaled
    rhs = y.sum(axis=0) - scaled.T @ yx
    m += wb.mean() / wb.size
    try:
        b = np.linalg.solve(m, rhs)
    except np.linalg.LinAlgError:
        b = np.linalg.lstsq(m, rhs, rcond=None)[0]
    b -= b.mean()
    x = (yx - w @ b) / wx
    return x, b


def _variance_scoring_step(g: _Grid, rss: np.ndarray, v2: np.ndarray, a2: np.ndarray, zero: float):
    """One Fisher-scoring step on all variances (v_s², a_c²) together, projected onto σ² ≥ 0.

    The expected information of the variances, J = ½ Σ n w² ∂var ∂varᵀ (w = 1/var), is positive semi-definite
    everywhere (singular only along the ridge of :func:`_canonical_split`), so the step J⁻¹g points uphill even
    where log L is convex in a variance; components at 0 whose derivative points below 0 stay there. The
    step is halved until log L does not fall.
    """
    var = g.variance(v2, a2)
    w = np.where(g.observed, 1.0 / var, 0.0)
    dvar = np.where(g.observed, 0.5 * (rss * w * w - g.n * w), 0.0)
    info = np.where(g.observed, 0.5 * g.n * w * w, 0.0)
    grad = np.concatenate([dvar.sum(axis=0), g.by_content(dvar.sum(axis=1))])
    n_s = v2.size
    j_va = np.zeros((n_s, g.n_c))
    np.add.at(j_va.T, g.c_of_e, info)
    jac = np.block([[np.diag(info.sum(axis=0)), j_va], [j_va.T, np.diag(g.by_content(info.sum(axis=1)))]])
    value = np.concatenate([v2, a2])
    free = (value > 0) | (grad > 0)
    step = np.zeros_like(value)
    if free.any():
        sub = jac[np.ix_(free, free)]
        # J is singular along the ridge (v² + δ, a² − δ) of _canonical_split; a relative 1e-10 on the
        # diagonal makes it solvable and leaves the step along that flat direction at ~0.
        sub = sub + np.diag(1e-10 * np.diag(sub) + 1e-300)
        step[free] = np.linalg.solve(sub, grad[free])
    # A variance falls at most to 1/_MAX_SHRINK of its value per sweep, so one long step cannot leap from
    # the interior maximum's basin into the degenerate corner's; one already below ``zero`` goes to 0 at once.
    snap = free & (value < zero) & (value + step <= 0.0)
    shrinking = free & ~snap & (step < 0.0)
    t = 1.0
    if shrinking.any():
        t = min(1.0, float(np.min((1.0 - 1.0 / _MAX_SHRINK) * value[shrinking] / -step[shrinking])))
    current = g.cell_loglik(rss, var).sum()
    for _ in range(_MAX_HALVINGS):
        trial = np.where(snap, 0.0, np.maximum(value + t * step, 0.0))
        if g.cell_loglik(rss, g.variance(trial[:n_s], trial[n_s:])).sum() >= current:
            return trial[:n_s], trial[n_s:]
        t /= 2.0
    return v2, a2


def _gradients(g: _Grid, rss: np.ndarray, var: np.ndarray, x: np.ndarray, b: np.ndarray):
    w = np.where(g.observed, 1.0 / var, 0.0)
    resid_sum = np.where(g.observed, g.s1 - g.n * (x[:, None] + b[None, :]), 0.0) * w
    dvar = np.where(g.observed, 0.5 * (rss * w * w - g.n * w), 0.0)
    info = np.where(g.observed, 0.5 * g.n * w * w, 0.0)
    return resid_sum.sum(axis=1), resid_sum.sum(axis=0), dvar, info


def _projected(grad: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.where((value <= 0.0) & (grad < 0.0), 0.0, grad)


def mle_subjective_model(answers: pd.DataFrame, *, content: str = "stimulus", value: str = "value",
                         tol: float = 1e-6, max_iter: int = 5000) -> MleFit:
    """Fits x_e (true quality), b_s (bias), v_s (inconsistency) and a_c (content ambiguity) by maximum likelihood.

    Parameters
    ----------
    answers : pandas.DataFrame
        Test answers in long format; a presentation e is a (stimulus, scale, item) triple, all scales pooled.
        Every row is one rating; repeated ratings of a presentation by a participant all enter the likelihood.
    content : str
        Column defining the content c(e) that shares an ambiguity a_c; by default the panorama itself.
    tol, max_iter : float, int
        Converged when every partial derivative of log L, in units of its parameter's SE, is below ``tol``;
        give up after ``max_iter`` sweeps.

    Returns
    -------
    MleFit

    Raises
    ------
    AnalysisError
        Fewer than 2 participants, or a NaN / infinite rating.

    Notes
    -----
    Model: u_esr = x_e + b_s + ε_esr, ε_esr ~ N(0, v_s² + a_c(e)²), with Σ_s b_s = 0 for identifiability; r
    runs over the repetitions (as in sureal, where each repetition is one more observation).

    The parameters are x_e, b_s and the *variances* v_s², a_c² ≥ 0. Block coordinate ascent, each sweep:

    1. x_e and b_s jointly to their exact maximum given the variances (weighted least squares,
       :func:`_solve_quality_and_bias`);
    2. all variances together, one Fisher-scoring step σ² ← max(0, σ² + t J⁻¹g) with
       g = ∂ log L/∂σ² = ½ Σ (R/var² − n/var) (R: residual sum of squares of a cell, var = v_s² + a_c²) and
       J = ½ Σ n/var² ∂var ∂varᵀ the expected information (:func:`_variance_scoring_step`); t ≤ 1 keeps every
       variance above half its value and is halved until log L does not fall.

    On the variances the slope at σ² = 0 is ½ Σ (R/a⁴ − n/a²), generally not 0, so a component can leave 0
    (on the standard deviations the slope there is always 0 and such a fit stalls). Every sweep raises log L.
    Converged means every partial derivative, in units of its parameter's standard error (|g| / √I, the
    Newton step in SEs), is below ``tol``, with those of variances held at 0 by a negative slope excepted.

    Only the sums v_s² + a_c² enter the likelihood, so the split between participants and contents is not
    identified: (v_s² + δ, a_c² − δ) fits exactly as well for every δ that keeps both ≥ 0. The fit reports
    the split closest to the starting spreads (:func:`_canonical_split`); differences between participants'
    v_s², and between contents' a_c², are what the data determine.

    The likelihood has no global maximum: where a participant's v_s and the a_c of a content are 0 and
    x_e + b_s reproduce that participant's ratings of it exactly, log L → ∞. The fit reported is the interior
    maximum the ascent reaches from the MOS start. Where there is none in reach (typically one rating per
    presentation and participant with few observers per presentation, or an observer who rates exactly the
    consensus), the variance of some rating falls below :data:`DEGENERATE_SHARE` of the ratings' variance: the
    fit stops there and ``degenerate`` says who and what it means.

    Standard errors are 1/√I from the Fisher information of each parameter given the others (as sureal):
    I(x_e) = Σ_s n_es w_es, I(b_s) = Σ_e n_es w_es, I(v_s²) = ½ Σ_e n_es w_es², I(a_c²) = ½ Σ_{e∈c,s} n_es w_es²,
    w = 1/(v_s² + a_c²). CIs are ±1.96 SE (asymptotic normality); those of v_s and a_c come from the CI of the
    variance, clipped at 0, and SE(v_s) = SE(v_s²) / (2 v_s) (infinite on the boundary v_s = 0).

    References
    ----------
    ITU-T P.910 (11/2021) Annex E; ITU-T P.913 (06/2021) §12.6; Z. Li and C. G. Bampis, "Recover subjective
    quality scores from noisy measurements", DCC 2017; Netflix sureal, ``MaximumLikelihoodEstimationModel``.
    """
    with single_threaded_blas():
        return _mle_subjective_model(answers, content=content, value=value, tol=tol, max_iter=max_iter)


def _mle_subjective_model(answers: pd.DataFrame, *, content: str, value: str, tol: float, max_iter: int) -> MleFit:
    require_finite(answers, value, "mle_subjective_model")
    # 1. Sufficient statistics of every rating on the presentations × participants grid.
    e_codes = answers.groupby(list(PRESENTATION), observed=True, sort=True).ngroup().to_numpy()
    s_cat = pd.Categorical(answers["participant"].astype("string"))
    s_codes = s_cat.codes.astype(np.int64)
    n_e, n_s = int(e_codes.max()) + 1, len(s_cat.categories)
    if n_s < 2:
        raise AnalysisError("the MLE subjective model needs at least 2 participants; use --screening none")
    u = answers[value].to_numpy(float)
    cell = e_codes * n_s + s_codes
    n = np.bincount(cell, minlength=n_e * n_s).reshape(n_e, n_s).astype(float)
    s1 = np.bincount(cell, u, minlength=n_e * n_s).reshape(n_e, n_s)
    s2 = np.bincount(cell, u * u, minlength=n_e * n_s).reshape(n_e, n_s)
    observed = n > 0
    pres = (
        answers.assign(_e=e_codes)
        .groupby("_e", sort=True)
        .agg(stimulus=("stimulus", "first"), scale=("scale", "first"), item=("item", "first"),
             scene=("scene", "first"), c=(content, "first"))
    )
    c_cat = pd.Categorical(pres["c"].astype("string"))
    g = _Grid(n, s1, s2, observed, c_cat.codes.astype(np.int64), len(c_cat.categories))
    spread = float(np.var(u)) if np.var(u) > 0 else 1.0
    floor = DEGENERATE_SHARE * spread
    zero = _ZERO_SHARE * spread

    # 2. Start from the MOS and the residual spreads, as sureal does.
    x = s1.sum(axis=1) / n.sum(axis=1)
    b = np.zeros(n_s)
    rss = g.residual_ss(x, b)
    v2 = rss.sum(axis=0) / n.sum(axis=0)
    a2 = g.by_content(rss.sum(axis=1)) / g.by_content(n.sum(axis=1))
    v2_start, a2_start = v2.copy(), a2.copy()

    converged = False
    max_grad = np.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        x, b = _solve_quality_and_bias(g, g.variance(v2, a2))
        rss = g.residual_ss(x, b)
        v2, a2 = _variance_scoring_step(g, rss, v2, a2, zero)
        var = g.variance(v2, a2)
        gx, gb, dvar, info = _gradients(g, rss, var, x, b)
        gv = _projected(dvar.sum(axis=0), v2)
        ga = _projected(g.by_content(dvar.sum(axis=1)), a2)
        gb = gb - gb.mean()  # the constraint Σ b_s = 0 removes the common shift
        w = np.where(observed, g.n / var, 0.0)
        # Each derivative in units of its parameter's standard error: |g| / √I is the Newton step in SEs.
        scaled = np.concatenate([gx / np.sqrt(w.sum(axis=1)), gb / np.sqrt(w.sum(axis=0)),
                                 gv / np.sqrt(info.sum(axis=0)), ga / np.sqrt(g.by_content(info.sum(axis=1)))])
        max_grad = float(np.abs(scaled).max())
        if max_grad < tol:
            converged = True
            break
        if var[observed].min() < floor:
            break

    # 3. One point of the flat ridge (see Notes), the degenerate corner, boundary components, and the Fisher
    #    information of each parameter.
    v2, a2 = _canonical_split(v2, a2, v2_start, a2_start)
    var = g.variance(v2, a2)
    degenerate = _degenerate_statements(g, var, v2, a2, floor, list(s_cat.categories), list(c_cat.categories))
    if degenerate:
        converged = False
    w = np.where(observed, n / var, 0.0)
    w2 = np.where(observed, n / var**2, 0.0)
    with np.errstate(divide="ignore"):
        x_se = 1.0 / np.sqrt(w.sum(axis=1))
        b_se = 1.0 / np.sqrt(w.sum(axis=0))
        v2_se = 1.0 / np.sqrt(0.5 * w2.sum(axis=0))
        a2_se = 1.0 / np.sqrt(0.5 * g.by_content(w2.sum(axis=1)))
    v_s, a_c = np.sqrt(v2), np.sqrt(a2)
    presentations = pres.drop(columns="c").reset_index(drop=True)
    presentations["n"] = n.sum(axis=1).astype(int)
    presentations["x_e"] = x
    presentations["x_e_se"] = x_se
    presentations["x_e_ci_low"] = x - _Z95 * x_se
    presentations["x_e_ci_high"] = x + _Z95 * x_se
    participants = pd.DataFrame({
        "participant": list(s_cat.categories), "n": n.sum(axis=0).astype(int),
        "b_s": b, "b_s_se": b_se, "b_s_ci_low": b - _Z95 * b_se, "b_s_ci_high": b + _Z95 * b_se,
        "v_s": v_s, "v_s_se": _sd_se(v2_se, v_s),
        "v_s_ci_low": np.sqrt(np.maximum(v2 - _Z95 * v2_se, 0.0)), "v_s_ci_high": np.sqrt(v2 + _Z95 * v2_se),
    })
    contents = pd.DataFrame({
        "content": list(c_cat.categories), "a_c": a_c, "a_c_se": _sd_se(a2_se, a_c),
        "a_c_ci_low": np.sqrt(np.maximum(a2 - _Z95 * a2_se, 0.0)), "a_c_ci_high": np.sqrt(a2 + _Z95 * a2_se),
    })
    log_l = float(g.cell_loglik(g.residual_ss(x, b), var).sum())
    return MleFit(
        presentations=presentations,
        participants=participants,
        contents=contents,
        content_column=content,
        log_likelihood=log_l,
        n_iter=n_iter,
        converged=converged,
        max_gradient=max_grad,
        n_ratings=int(u.size),
        repeated=int(u.size - observed.sum()),
        degenerate=degenerate,
    )


def _canonical_split(v2: np.ndarray, a2: np.ndarray, v2_start: np.ndarray, a2_start: np.ndarray):
    """The point of the ridge (v_s² + δ, a_c² − δ) closest, in least squares, to the starting residual spreads.

    Every rating's variance v_s² + a_c² — so the likelihood — is the same all along the ridge, for δ from
    −min v_s² to min a_c²; δ = [Σ_s (v0_s² − v_s²) + Σ_c (a_c² − a0_c²)] / (S + C), clipped to that range.
    """
    delta = (np.sum(v2_start - v2) + np.sum(a2 - a2_start)) / (v2.size + a2.size)
    delta = float(np.clip(delta, -v2.min(), a2.min()))
    return np.maximum(v2 + delta, 0.0), np.maximum(a2 - delta, 0.0)


def _sd_se(variance_se: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """SE of a standard deviation from the SE of its variance (delta method): SE(σ) = SE(σ²) / 2σ."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, variance_se / (2.0 * sd), np.inf)


def _degenerate_statements(g: _Grid, var: np.ndarray, v2: np.ndarray, a2: np.ndarray, floor: float,
                           participants: list[str], contents: list[str]) -> tuple[str, ...]:
    """Who sits in the degenerate corner (a rating's model variance below ``floor``), said plainly."""
    tiny = g.observed & (var < floor)
    if not tiny.any():
        return ()
    who = [participants[s] for s in np.flatnonzero(tiny.any(axis=0))]
    what = sorted({contents[c] for c in g.c_of_e[tiny.any(axis=1)]})
    shown = ", ".join(who[:5]) + (f" and {len(who) - 5} more" if len(who) > 5 else "")
    return (
        f"degenerate MLE fit: the inconsistency v_s of participant(s) {shown} and the ambiguity a_c of "
        f"{len(what)} content(s) went to 0 together (smallest v_s² + a_c² = {var[tiny].min():.1e}). There the "
        "model explains those ratings exactly and the likelihood grows without bound, so x_e, b_s, v_s, a_c and "
        "their SEs and CIs are meaningless. It happens with one rating per presentation and participant and few "
        "observers per presentation, or with an observer who rates exactly the consensus; use --screening p913 "
        "or bt500, or collect repeated ratings or more observers",
    )
