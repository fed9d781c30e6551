"""Scene effect per scale: a linear mixed model with random intercepts for participants (and stimuli, where the
design can tell stimuli from scenes), fitted by REML."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats

from analysis.simulate import PAPER_SCENES
from analysis.table1 import ordered
from analysis.threads import single_threaded_blas
from analysis.validate import require_finite
from study.errors import AnalysisError

CROSSED = "value ~ scene + (1|participant) + (1|stimulus)"
PARTICIPANT_ONLY = "value ~ scene + (1|participant)"
#: A relative standard deviation θ = σ_k / σ below this is a variance estimated at 0 (a boundary fit).
BOUNDARY_THETA = 1e-4
CONFOUNDED_NOTE = (
    "Each scene is represented by a single stimulus, so a scene's effect and its stimulus's cannot be told apart: "
    f"the model is {PARTICIPANT_ONLY}, and its contrasts are about these particular stimuli, not about the scenes "
    "in general (that needs several stimuli per scene)."
)


@dataclass(frozen=True)
class RemlFit:
    """A REML fit of y = Xβ + Σ_k Z_k u_k + ε with independent random intercepts u_k ~ N(0, σ_k² I), ε ~ N(0, σ² I).

    Attributes
    ----------
    beta, cov_beta : numpy.ndarray
        Fixed effects and their covariance σ² (Xᵀ V⁻¹ X)⁻¹ (V/σ² = I + Z Λ Λᵀ Zᵀ) at the estimated variances.
    variances : dict str -> float
        Each factor's variance σ_k² and ``residual`` σ².
    theta : numpy.ndarray
        Relative standard deviations θ_k = σ_k / σ, the parameters optimised.
    deviance : float
        −2 × the REML log-likelihood at the estimate.
    converged : bool
        The Newton step of the deviance in the θ_k off the boundary is below 1e-4, and on the boundary the
        deviance rises inwards.
    boundary : tuple of str
        Factors whose variance was estimated at 0.
    hessian_pd : bool
        The Hessian of the deviance in the θ_k off the boundary is positive definite (False: not identifiable).
    """

    beta: np.ndarray
    cov_beta: np.ndarray
    variances: dict[str, float]
    theta: np.ndarray
    deviance: float
    converged: bool
    boundary: tuple[str, ...]
    hessian_pd: bool


def _indicator_products(y: np.ndarray, x: np.ndarray, factors: dict[str, np.ndarray]):
    """ZᵀZ, ZᵀX and Zᵀy of the random-intercept indicator matrix Z = [Z_1 | Z_2 | ...] without forming Z."""
    codes = list(factors.values())
    sizes = [int(c.max()) + 1 for c in codes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    q = int(offsets[-1])
    ztz = np.zeros((q, q))
    for i, (ci, si) in enumerate(zip(codes, sizes)):
        for j, (cj, sj) in enumerate(zip(codes, sizes)):
            if j < i:
                continue
            block = np.bincount(ci * sj + cj, minlength=si * sj).reshape(si, sj).astype(float)
            ztz[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]] = block
            ztz[offsets[j]:offsets[j + 1], offsets[i]:offsets[i + 1]] = block.T
    ztx = np.vstack([np.column_stack([np.bincount(c, x[:, k], minlength=s) for k in range(x.shape[1])])
                     for c, s in zip(codes, sizes)])
    zty = np.concatenate([np.bincount(c, y, minlength=s) for c, s in zip(codes, sizes)])
    return ztz, ztx, zty, sizes


def fit_random_intercepts(y: np.ndarray, x: np.ndarray, factors: dict[str, np.ndarray]) -> RemlFit:
    """REML estimates of a linear model with crossed (or single) random intercepts.

    Parameters
    ----------
    y : (n,) float
        Responses.
    x : (n, p) float
        Fixed-effects design matrix of full column rank.
    factors : dict name -> (n,) int
        Level codes 0..q_k−1 of each random-intercept factor.

    Returns
    -------
    RemlFit

    Notes
    -----
    The profiled REML criterion of Bates, Mächler, Bolker & Walker (2015, §3.4), in the relative standard
    deviations θ_k = σ_k / σ with Λ = diag(θ_k I_{q_k}):

        L Lᵀ = Λ ZᵀZ Λ + I,   R_ZX = L⁻¹ Λ ZᵀX,   R_X R_Xᵀ = XᵀX − R_ZXᵀ R_ZX,
        c_u = L⁻¹ Λ Zᵀy,   c_β = R_X⁻¹ (Xᵀy − R_ZXᵀ c_u),   r² = yᵀy − ‖c_u‖² − ‖c_β‖²,
        −2 ℓ_R(θ) = log|L|² + log|R_X|² + (n − p) [1 + log(2π r² / (n − p))],

    with β̂ = R_X⁻ᵀ c_β, σ̂² = r² / (n − p), Cov(β̂) = σ̂² (R_X R_Xᵀ)⁻¹. Everything is computed from the cross
    products ZᵀZ, ZᵀX, Zᵀy, XᵀX, Xᵀy, yᵀy, so one evaluation costs one Cholesky factorisation of a q × q
    matrix, whatever the number of answers; the block of the factor with most levels is diagonal and is
    eliminated through its Schur complement, so the matrix factorised is as large as the other factors' levels
    (log|L|² = log|A| with A = Λ ZᵀZ Λ + I). θ is minimised over θ_k ≥ 0 with L-BFGS-B.

    statsmodels' MixedLM writes crossed factors as variance components of a single group and works with the
    n × q design itself; on 99 participants × 320 stimuli that took minutes per scale, hence this
    formulation (the tests check it against MixedLM on small designs).

    References
    ----------
    D. Bates, M. Mächler, B. Bolker, S. Walker, "Fitting linear mixed-effects models using lme4",
    J. Stat. Softw. 67(1) (2015) 1–48.
    """
    n, p = x.shape
    # The factor with most levels goes last: its own block of ΛZᵀZΛ + I is diagonal and is eliminated in
    # closed form, so the dense factorisation is only as large as the other factors' levels (the participants).
    names = sorted(factors, key=lambda name: int(factors[name].max()))
    ztz, ztx, zty, sizes = _indicator_products(y, x, {name: factors[name] for name in names})
    xtx, xty, yty = x.T @ x, x.T @ y, float(y @ y)
    head = sum(sizes[:-1])
    ztb = np.column_stack([ztx, zty])
    counts_last = np.diag(ztz)[head:]

    def solve(theta: np.ndarray):
        lam = np.repeat(theta, sizes)
        rhs = lam[:, None] * ztb
        # A = Λ ZᵀZ Λ + I = [[A11, A12], [A21, D]] with D diagonal; A⁻¹ via the Schur complement of D.
        d = lam[head:] ** 2 * counts_last + 1.0
        log_det = float(np.log(d).sum())
        solved = np.empty_like(rhs)
        if head:
            a12 = lam[:head, None] * ztz[:head, head:] * lam[None, head:]
            a11 = lam[:head, None] * ztz[:head, :head] * lam[None, :head] + np.eye(head)
            schur = linalg.cho_factor(a11 - (a12 / d[None, :]) @ a12.T, lower=True)
            log_det += 2.0 * float(np.log(np.diag(schur[0])).sum())
            solved[:head] = linalg.cho_solve(schur, rhs[:head] - a12 @ (rhs[head:] / d[:, None]))
            solved[head:] = (rhs[head:] - a12.T @ solved[:head]) / d[:, None]
        else:
            solved = rhs / d[:, None]
        gram = rhs.T @ solved  # [Λ ZᵀX | Λ Zᵀy]ᵀ A⁻¹ [Λ ZᵀX | Λ Zᵀy] = R_ZXᵀR_ZX, R_ZXᵀc_u, ‖c_u‖²
        m = xtx - gram[:p, :p]
        chol_x = linalg.cholesky(m, lower=True)
        c_beta = linalg.solve_triangular(chol_x, xty - gram[:p, p], lower=True)
        r2 = max(yty - gram[p, p] - c_beta @ c_beta, 1e-300)
        deviance = log_det + 2.0 * np.log(np.diag(chol_x)).sum() + (n - p) * (1.0 + np.log(2.0 * np.pi * r2 / (n - p)))
        return deviance, chol_x, c_beta, r2, m

    def objective(theta: np.ndarray) -> float:
        return solve(np.maximum(theta, 0.0))[0]

    with single_threaded_blas():
        # The deviance is ~n in size: forward differences of 1e-8 drown in rounding, central ones of ~1e-5 do not.
        result = optimize.minimize(objective, np.ones(len(names)), method="L-BFGS-B", jac="3-point",
                                   bounds=[(0.0, None)] * len(names), options={"ftol": 1e-12, "gtol": 1e-6, "maxiter": 500})
        return _finish(np.maximum(result.x, 0.0), solve, objective, names, n, p)


def _finish(theta: np.ndarray, solve, objective, names: list[str], n: int, p: int) -> RemlFit:
    """Estimates, covariance, convergence, boundary and Hessian checks at the optimum θ."""
    deviance, chol_x, c_beta, r2, m = solve(theta)
    beta = linalg.solve_triangular(chol_x.T, c_beta, lower=False)
    sigma2 = r2 / (n - p)
    cov_beta = sigma2 * linalg.cho_solve((chol_x, True), np.eye(p))

    # Converged: off the boundary the Newton step H⁻¹g is below 1e-4 in θ; on it the deviance rises inwards.
    on_boundary = theta < BOUNDARY_THETA
    grad = _central_gradient(objective, theta)
    free = np.flatnonzero(~on_boundary)
    hessian_pd, converged = True, bool((grad[on_boundary] > -1e-2).all())
    if free.size:
        hessian = _numerical_hessian(objective, theta, free)
        hessian_pd = bool(np.linalg.eigvalsh(hessian).min() > 1e-8 * max(1.0, np.abs(hessian).max()))
        newton = np.linalg.lstsq(hessian, grad[free], rcond=None)[0]
        converged = converged and hessian_pd and bool(np.abs(newton).max() < 1e-4)
    variances = {name: float(t * t * sigma2) for name, t in zip(names, theta)}
    variances["residual"] = float(sigma2)
    return RemlFit(beta, cov_beta, variances, theta, float(deviance), converged,
                   tuple(name for name, b in zip(names, on_boundary) if b), hessian_pd)


def _central_gradient(f, theta: np.ndarray) -> np.ndarray:
    """Central differences (one-sided inwards at θ = 0)."""
    grad = np.zeros_like(theta)
    for k in range(theta.size):
        h = 1e-5 * max(abs(theta[k]), 1e-1)
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] = max(theta[k] - h, 0.0)
        grad[k] = (f(up) - f(down)) / (up[k] - down[k])
    return grad


def _numerical_hessian(f, theta: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Central-difference Hessian of ``f`` in the coordinates ``free`` of ``theta``."""
    h = 1e-4 * np.maximum(np.abs(theta[free]), 1e-2)
    k = free.size
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            def at(di, dj):
                point = theta.copy()
                point[free[i]] += di
                point[free[j]] += dj
                return f(point)

            value = (at(h[i], h[j]) - at(h[i], -h[j]) - at(-h[i], h[j]) + at(-h[i], -h[j])) / (4.0 * h[i] * h[j])
            out[i, j] = out[j, i] = value
    return out


@dataclass(frozen=True)
class SceneEffect:
    """The mixed-model fit of one scale.

    Attributes
    ----------
    scale : str
    model : str
        The formula fitted (:data:`CROSSED` or :data:`PARTICIPANT_ONLY`).
    scenes : tuple of str
        Scene order; the first is the reference level of the fixed effect.
    fixed : pandas.DataFrame
        ``term, estimate, se, z, p`` of the fixed effects (intercept = reference scene mean).
    contrasts : pandas.DataFrame
        Every scene pair: ``scene_a, scene_b, estimate (a − b), se, z, p, p_holm, significant, d``.
    variances : dict
        ``participant``, (``stimulus``) and ``residual`` variance estimates.
    n : int
        Answers in the fit.
    converged : bool
    design_note : str
        What the inference is about, for the main text ("" for the crossed model).
    warnings : tuple of str
        Boundary fits, a Hessian that is not positive definite, no convergence: shown prominently.
    notes : tuple of str
    """

    scale: str
    model: str
    scenes: tuple[str, ...]
    fixed: pd.DataFrame
    contrasts: pd.DataFrame
    variances: dict[str, float]
    n: int
    converged: bool
    design_note: str
    warnings: tuple[str, ...]
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
    })
    return data, scenes


def _fit(data: pd.DataFrame, factors: tuple[str, ...]) -> RemlFit:
    codes = data["scene"].cat.codes.to_numpy()
    x = np.zeros((len(data), len(data["scene"].cat.categories)))
    x[:, 0] = 1.0
    rows = np.flatnonzero(codes > 0)
    x[rows, codes[rows]] = 1.0
    levels = {name: pd.factorize(data[name])[0] for name in factors}
    return fit_random_intercepts(data["value"].to_numpy(float), x, levels)


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

    Raises
    ------
    AnalysisError
        Fewer than 2 participants or 2 scenes, or a NaN answer.

    Notes
    -----
    With several stimuli per scene the model is crossed: value_psi = μ + β_scene(s) + u_p + w_s + ε,
    u_p ~ N(0, σ²_participant), w_s ~ N(0, σ²_stimulus), ε ~ N(0, σ²), so the contrasts generalise to other
    stimuli of the same scenes. Where some scene has one stimulus only, stimulus and scene are confounded and
    σ²_stimulus is not identifiable; the model is then value ~ scene + (1|participant) and the inference is
    about these stimuli (:data:`CONFOUNDED_NOTE`). The same fallback, with a warning, is taken when the crossed
    fit's Hessian is not positive definite. Variances estimated at 0 are reported as boundary fits.

    A contrast between scenes a and b is Lβ with Wald z = Lβ / sqrt(L Σ_β Lᵀ); the p values of all pairs are
    adjusted with Holm's step-down method. The effect size is the difference over the total standard
    deviation, d = Lβ / sqrt(Σ variances) (Westfall, Kenny & Judd 2014). Fits by REML (:func:`fit_random_intercepts`).

    References
    ----------
    J. Westfall, D. A. Kenny, C. M. Judd, "Statistical power and optimal design in experiments in which
    samples of participants respond to samples of stimuli", J. Exp. Psychol. Gen. 143 (2014) 2020–2045.
    S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6 (1979) 65–70.
    """
    from statsmodels.stats.multitest import multipletests

    require_finite(answers, value, "scene_effect")
    data, scenes = mixed_model_data(answers, scale, value=value)
    if data["participant"].nunique() < 2 or len(scenes) < 2:
        raise AnalysisError(f"scene_effect: scale {scale} needs at least 2 participants and 2 scenes")
    warnings, notes = [], []
    design_note = ""
    if data.groupby("scene", observed=True)["stimulus"].nunique().min() < 2:
        model, fit = PARTICIPANT_ONLY, _fit(data, ("participant",))
        design_note = CONFOUNDED_NOTE
    else:
        model, fit = CROSSED, _fit(data, ("participant", "stimulus"))
        if not fit.hessian_pd:
            warnings.append(
                f"{scale}: the Hessian of the crossed model ({CROSSED}) is not positive definite, so its variance "
                f"components are not identifiable from these data; fitted {PARTICIPANT_ONLY} instead, whose "
                "contrasts are about these stimuli, not the scenes in general")
            model, fit = PARTICIPANT_ONLY, _fit(data, ("participant",))
            design_note = ("The stimulus variance could not be identified, so the contrasts are about these "
                           "particular stimuli, not about the scenes in general.")
    plural = {"participant": "participants", "stimulus": "stimuli"}
    for name in fit.boundary:
        warnings.append(
            f"{scale}: the {name} variance was estimated at 0 (a boundary fit): the {plural.get(name, name)} did not "
            "differ beyond the residual noise, and the model reduces to one without that random effect")
    if not fit.hessian_pd and model == PARTICIPANT_ONLY:
        warnings.append(f"{scale}: the Hessian of {PARTICIPANT_ONLY} is not positive definite; the variances are not identifiable")
    if not fit.converged:
        warnings.append(f"{scale}: the REML fit did not converge; treat the contrasts with care")
    notes.append(f"REML, {len(data)} answers of {data['participant'].nunique()} participants and "
                 f"{data['stimulus'].nunique()} stimuli; deviance {fit.deviance:.2f}")

    fe_names = ["Intercept"] + [f"scene[T.{s}]" for s in scenes[1:]]
    se = np.sqrt(np.diag(fit.cov_beta))
    z = fit.beta / se
    fixed = pd.DataFrame({"term": fe_names, "estimate": fit.beta, "se": se, "z": z, "p": 2 * stats.norm.sf(np.abs(z))})
    total_sd = np.sqrt(sum(fit.variances.values()))

    def level_vector(scene: str) -> np.ndarray:
        vec = np.zeros(len(fe_names))
        if scene != scenes[0]:
            vec[scenes.index(scene)] = 1.0
        return vec

    rows = []
    for a, b in itertools.combinations(scenes, 2):
        contrast = level_vector(a) - level_vector(b)
        est = float(contrast @ fit.beta)
        est_se = float(np.sqrt(contrast @ fit.cov_beta @ contrast))
        rows.append((a, b, est, est_se, est / est_se, 2 * stats.norm.sf(abs(est / est_se)), est / total_sd))
    contrasts = pd.DataFrame(rows, columns=["scene_a", "scene_b", "estimate", "se", "z", "p", "d"])
    reject, p_holm, _, _ = multipletests(contrasts["p"].to_numpy(), alpha=alpha, method="holm")
    contrasts.insert(6, "p_holm", p_holm)
    contrasts.insert(7, "significant", reject)
    return SceneEffect(scale, model, scenes, fixed, contrasts, fit.variances, len(data), fit.converged,
                       design_note, tuple(warnings), tuple(notes))
