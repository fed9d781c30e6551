"""Metrics between equirect saliency maps, and between a map and fixations; inter-observer consistency.

Distribution metrics compare two maps as distributions on the sphere, so every pixel counts by its solid
angle Ω (the rows near the poles are small): with masses :math:`p_i = P_i\\Omega_i / \\sum_j P_j\\Omega_j`
(and :math:`q_i` likewise),

- **KLD** :math:`= \\sum_i q_i \\log(\\varepsilon + q_i / (p_i + \\varepsilon))` — of the reference Q from
  the map P, ε = machine epsilon (MIT saliency benchmark; Salient360!);
- **CC**: Pearson's correlation of P and Q with weights Ω;
- **SIM** :math:`= \\sum_i \\min(p_i, q_i)`.

Location metrics compare a map with fixated pixels, unweighted as in the benchmarks:

- **NSS**: the mean of :math:`(P - \\bar P)/\\sigma_P` at the fixated pixels;
- **AUC-Judd**: the area under the ROC curve of the map as a classifier of fixated pixels, with every
  fixated value as a threshold (Judd et al. 2009).

KLD, NSS and AUC are asymmetric; :func:`compare_both_ways` averages them over the two directions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.saliency import GAZE_SIGMA_DEG, MAP_HEIGHT, MAP_WIDTH, TRUNCATE, KernelGrid
from study.errors import AnalysisError
from study.sphere import pixel_of, pixel_solid_angles

EPSILON = float(np.finfo(np.float64).eps)


def _checked(name: str, saliency) -> np.ndarray:
    array = np.asarray(saliency, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 * array.shape[0]:
        raise AnalysisError(f"{name}: expected a 2:1 equirect map (H, 2H), got shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise AnalysisError(f"{name}: the map must be finite and non-negative")
    if not array.any():
        raise AnalysisError(f"{name}: the map is zero everywhere")
    return array


def _pair(p, q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both maps checked and divided by their integrals over the sphere, with the per-row pixel solid angle."""
    p, q = _checked("saliency map", p), _checked("reference map", q)
    if p.shape != q.shape:
        raise AnalysisError(f"maps of different sizes {p.shape} and {q.shape}; compute both at one size")
    omega = pixel_solid_angles(*p.shape)
    return p / (p.sum(axis=1) @ omega), q / (q.sum(axis=1) @ omega), omega


def _kld(p: np.ndarray, q: np.ndarray, omega: np.ndarray) -> float:
    pm, qm = p * omega[:, None], q * omega[:, None]  # masses; pixels without reference mass add 0 · log ε = 0
    return float((qm * np.log(EPSILON + qm / (pm + EPSILON))).sum())


def _cc(p: np.ndarray, q: np.ndarray, omega: np.ndarray) -> float:
    weights = omega / (omega.sum() * p.shape[1])  # per pixel of each row; they sum to 1 over the map
    mean_p, mean_q = p.sum(axis=1) @ weights, q.sum(axis=1) @ weights
    dp, dq = p - mean_p, q - mean_q
    var_p, var_q = (dp * dp).sum(axis=1) @ weights, (dq * dq).sum(axis=1) @ weights
    if var_p <= 1e-24 * mean_p**2 or var_q <= 1e-24 * mean_q**2:  # zero up to rounding
        raise AnalysisError("cc: a map is constant; the correlation is undefined")
    return float(((dp * dq).sum(axis=1) @ weights) / np.sqrt(var_p * var_q))


def _sim(p: np.ndarray, q: np.ndarray, omega: np.ndarray) -> float:
    return float(np.minimum(p, q).sum(axis=1) @ omega)


def kld(saliency, reference) -> float:
    """Kullback–Leibler divergence of the reference distribution from the saliency map (0 when equal)."""
    return _kld(*_pair(saliency, reference))


def cc(saliency, reference) -> float:
    """Pearson's correlation of two maps, each pixel weighted by its solid angle."""
    return _cc(*_pair(saliency, reference))


def sim(saliency, reference) -> float:
    """Similarity (histogram intersection) of the two distributions on the sphere, in [0, 1]."""
    return _sim(*_pair(saliency, reference))


def _fixated_values(saliency: np.ndarray, yaw_deg, pitch_deg) -> np.ndarray:
    yaw = np.asarray(yaw_deg, dtype=np.float64).ravel()
    pitch = np.asarray(pitch_deg, dtype=np.float64).ravel()
    if yaw.size == 0 or yaw.size != pitch.size or not (np.isfinite(yaw).all() and np.isfinite(pitch).all()):
        raise AnalysisError(f"fixations: got {yaw.size} yaw and {pitch.size} pitch values; pass equal, non-empty, finite arrays")
    rows, cols = pixel_of(yaw, pitch, *saliency.shape)
    return saliency[rows, cols]


def nss(saliency, yaw_deg, pitch_deg) -> float:
    """Normalised scanpath saliency: the mean standardised map value at the fixations' pixels."""
    return _nss(_checked("saliency map", saliency), yaw_deg, pitch_deg)


def _nss(s: np.ndarray, yaw_deg, pitch_deg) -> float:
    spread = s.std()
    if spread == 0:
        raise AnalysisError("nss: the map is constant; it cannot be standardised")
    return float(((_fixated_values(s, yaw_deg, pitch_deg) - s.mean()) / spread).mean())


def auc_judd(saliency, yaw_deg, pitch_deg) -> float:
    """AUC-Judd: each fixated value is a threshold; TPR over fixations, FPR over the other pixels.

    Notes
    -----
    For thresholds :math:`\\theta_k` (the fixated values, descending), :math:`TPR_k = k / N_f` and
    :math:`FPR_k = (\\#\\{S \\ge \\theta_k\\} - k) / (N_p - N_f)`; the curve starts at (0, 0), ends at
    (1, 1) and is integrated with the trapezoid rule.
    """
    return _auc_judd(_checked("saliency map", saliency), yaw_deg, pitch_deg)


def _auc_judd(s: np.ndarray, yaw_deg, pitch_deg) -> float:
    thresholds = np.sort(_fixated_values(s, yaw_deg, pitch_deg))[::-1]
    n_fix, n_pixels = thresholds.size, s.size
    # pixels at or above each threshold without sorting the whole map: r = how many thresholds each pixel reaches
    reached = np.searchsorted(thresholds[::-1], s.ravel(), side="right")
    at_least = np.cumsum(np.bincount(reached, minlength=n_fix + 1)[::-1])[::-1]  # at_least[m]: pixels reaching ≥ m
    count = at_least[1:][::-1]  # pixels with S ≥ θ_k, θ_k descending
    k = np.arange(1, n_fix + 1)
    tpr = np.concatenate([[0.0], k / n_fix, [1.0]])
    fpr = np.concatenate([[0.0], (count - k) / max(n_pixels - n_fix, 1), [1.0]])
    return float(np.trapezoid(tpr, fpr))


def compare(saliency, reference, yaw_deg, pitch_deg) -> dict[str, float]:
    """All five metrics of a map against a reference map and the reference's fixations (each map checked once)."""
    p, q, omega = _pair(saliency, reference)
    return {
        "kld": _kld(p, q, omega),
        "cc": _cc(p, q, omega),
        "sim": _sim(p, q, omega),
        "nss": _nss(p, yaw_deg, pitch_deg),
        "auc_judd": _auc_judd(p, yaw_deg, pitch_deg),
    }


def compare_both_ways(map_a, fixations_a: tuple, map_b, fixations_b: tuple) -> dict[str, float]:
    """The five metrics between two maps with their fixations ``(yaw, pitch)``, averaged over both directions."""
    ab = compare(map_a, map_b, *fixations_b)
    ba = compare(map_b, map_a, *fixations_a)
    return {name: (ab[name] + ba[name]) / 2.0 for name in ab}


def _split_cc(covariance: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CC between the maps of weighted sums of participants (rows of ``a`` and ``b``), from their covariance.

    With per-participant maps m_p, a half's map is :math:`A = \\sum_p a_p m_p`, and the solid-angle-weighted
    covariance of two halves is :math:`a^\\top C b` with :math:`C_{pq} = \\mathrm{cov}_\\Omega(m_p, m_q)`.
    """
    ab = np.einsum("rp,pq,rq->r", a, covariance, b)
    aa = np.einsum("rp,pq,rq->r", a, covariance, a)
    bb = np.einsum("rp,pq,rq->r", b, covariance, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ab / np.sqrt(aa * bb)


def _random_halves(rng: np.random.Generator, n_splits: int, n: int) -> np.ndarray:
    """``(n_splits, n)`` indicators of the first half in random splits of ``n`` participants (⌊n/2⌋ each)."""
    order = np.argsort(rng.random((n_splits, n)), axis=1)
    first = np.zeros((n_splits, n))
    np.put_along_axis(first, order[:, : n // 2], 1.0, axis=1)
    return first


def participant_covariance(
    fixations: pd.DataFrame,
    participants: Sequence[str],
    *,
    height: int,
    width: int,
    sigma_deg: float,
    truncate: float = TRUNCATE,
) -> np.ndarray:
    """Solid-angle-weighted covariance matrix of the participants' (unnormalised) maps of one stimulus.

    :math:`C_{pq} = \\sum_i w_i m_{p,i} m_{q,i} - \\bar m_p \\bar m_q` with :math:`w_i = \\Omega_i / 4\\pi`
    and :math:`\\bar m_p = \\sum_i w_i m_{p,i}`; a participant without fixations has a zero map.
    """
    grid = KernelGrid(height, width, sigma_deg=sigma_deg, truncate=truncate)
    weights = grid.solid_angles / (grid.solid_angles.sum() * width)
    root = np.sqrt(weights)[:, None]
    stacked = np.zeros((len(participants), height, width))
    means = np.zeros(len(participants))
    by_code = {code: group for code, group in fixations.groupby("participant", observed=True)}
    for index, code in enumerate(participants):
        if code in by_code:
            density = stacked[index]
            grid.accumulate(by_code[code]["yaw_deg"].to_numpy(), by_code[code]["pitch_deg"].to_numpy(), out=density)
            means[index] = float(density.sum(axis=1) @ weights)
            density *= root
    flat = stacked.reshape(len(participants), -1)
    return flat @ flat.T - np.outer(means, means)


def inter_observer_consistency(
    fixations: pd.DataFrame,
    *,
    by: str = "stimulus",
    n_splits: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
    height: int = MAP_HEIGHT // 2,
    width: int = MAP_WIDTH // 2,
    sigma_deg: float = GAZE_SIGMA_DEG,
) -> pd.DataFrame:
    """Split-half consistency of the observers' maps: CC between the maps of two random halves of them.

    Parameters
    ----------
    fixations : pandas.DataFrame
        A fixation table with ``participant``, ``by``, ``yaw_deg`` and ``pitch_deg``.
    by : str
        The column whose groups are compared (stimulus, or scene).
    n_splits : int
        Random splits of the participants averaged into the estimate.
    confidence : float
        Two-sided level of the interval.
    seed : int
        Seeds the local generator of the splits.
    height, width, sigma_deg
        Map size and kernel (1024 × 512 by default: CC between smooth maps is insensitive to resolution).

    Returns
    -------
    pandas.DataFrame
        One row per group plus a last row ``"all"`` (the mean over groups): ``by, n_participants, cc,
        ci_low, ci_high``.

    Notes
    -----
    The estimate :math:`\\hat\\theta` is the mean CC over ``n_splits`` random halves of the participants.
    Its interval is the jackknife over participants, the sampling unit: leaving out each participant in turn
    (the same splits, without them) gives :math:`\\hat\\theta_{(i)}`, and
    :math:`SE = \\sqrt{\\tfrac{N-1}{N}\\sum_i (\\hat\\theta_{(i)} - \\bar\\theta_{(\\cdot)})^2}`,
    :math:`CI = \\hat\\theta \\pm t_{1-\\alpha/2, N-1}\\,SE`. The ``"all"`` row jackknifes the mean over
    groups with the same left-out participant in every group. (A bootstrap of participants would be biased
    here: a resample holds only about 63 % distinct observers, and split-half consistency falls with their
    number.) Every CC comes exactly from one covariance matrix of the participants' maps per group
    (:func:`participant_covariance`): a half's map is :math:`\\sum_p a_p m_p`, and
    :math:`\\mathrm{CC}(A, B) = a^\\top C b / \\sqrt{a^\\top C a \\; b^\\top C b}`, so splits cost no map
    arithmetic.
    """
    from analysis.mos import student_t_quantile

    needed = ["participant", by, "yaw_deg", "pitch_deg"]
    missing = [column for column in needed if column not in fixations.columns]
    if missing:
        raise AnalysisError(f"inter_observer_consistency: the fixation table lacks the columns {missing}")
    fixations = fixations.assign(participant=fixations["participant"].astype(str), **{by: fixations[by].astype(str)})
    participants = sorted(fixations["participant"].unique())
    n = len(participants)
    if n < 2:
        raise AnalysisError(f"inter_observer_consistency: needs at least 2 participants, got {n}")
    first = _random_halves(np.random.default_rng(seed), n_splits, n)
    second = 1.0 - first
    kept = 1.0 - np.eye(n)  # row i: everyone but participant i
    estimates, replicates, rows = [], [], []
    for group in sorted(fixations[by].unique()):
        selected = fixations[fixations[by] == group]
        covariance = participant_covariance(selected, participants, height=height, width=width, sigma_deg=sigma_deg)
        estimates.append(float(np.nanmean(_split_cc(covariance, first, second))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # with 2 participants a left-out half is empty
            replicates.append(np.array([
                np.nanmean(_split_cc(covariance, first * kept[i], second * kept[i])) for i in range(n)
            ]))
        rows.append({by: group, "n_participants": int(selected["participant"].nunique())})
    rows.append({by: "all", "n_participants": n})
    estimates.append(float(np.mean(estimates)))
    replicates.append(np.mean(replicates, axis=0))
    quantile = float(student_t_quantile(n, confidence))
    for row, estimate, leave_one_out in zip(rows, estimates, replicates):
        finite = leave_one_out[np.isfinite(leave_one_out)]
        spread = math.sqrt((finite.size - 1) / finite.size * ((finite - finite.mean()) ** 2).sum()) if finite.size > 1 else math.nan
        row.update(cc=estimate, ci_low=estimate - quantile * spread, ci_high=estimate + quantile * spread)
    return pd.DataFrame(rows, columns=[by, "n_participants", "cc", "ci_low", "ci_high"])
