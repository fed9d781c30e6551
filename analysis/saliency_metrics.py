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
    p, q = _checked("saliency map", p), _checked("reference map", q)
    if p.shape != q.shape:
        raise AnalysisError(f"maps of different sizes {p.shape} and {q.shape}; compute both at one size")
    return p, q, pixel_solid_angles(*p.shape)[:, None]


def _masses(density: np.ndarray, solid_angles: np.ndarray) -> np.ndarray:
    mass = density * solid_angles
    return mass / mass.sum()


def kld(saliency, reference) -> float:
    """Kullback–Leibler divergence of the reference distribution from the saliency map (0 when equal)."""
    p, q, omega = _pair(saliency, reference)
    p, q = _masses(p, omega), _masses(q, omega)
    return float((q * np.log(EPSILON + q / (p + EPSILON))).sum())


def cc(saliency, reference) -> float:
    """Pearson's correlation of two maps, each pixel weighted by its solid angle."""
    p, q, omega = _pair(saliency, reference)
    weights = np.broadcast_to(omega / (omega.sum() * p.shape[1]), p.shape)
    dp = p - (weights * p).sum()
    dq = q - (weights * q).sum()
    denominator = np.sqrt((weights * dp * dp).sum() * (weights * dq * dq).sum())
    if denominator == 0:
        raise AnalysisError("cc: a map is constant; the correlation is undefined")
    return float((weights * dp * dq).sum() / denominator)


def sim(saliency, reference) -> float:
    """Similarity (histogram intersection) of the two distributions on the sphere, in [0, 1]."""
    p, q, omega = _pair(saliency, reference)
    return float(np.minimum(_masses(p, omega), _masses(q, omega)).sum())


def _fixated_values(saliency: np.ndarray, yaw_deg, pitch_deg) -> np.ndarray:
    yaw = np.asarray(yaw_deg, dtype=np.float64).ravel()
    pitch = np.asarray(pitch_deg, dtype=np.float64).ravel()
    if yaw.size == 0 or yaw.size != pitch.size or not (np.isfinite(yaw).all() and np.isfinite(pitch).all()):
        raise AnalysisError(f"fixations: got {yaw.size} yaw and {pitch.size} pitch values; pass equal, non-empty, finite arrays")
    rows, cols = pixel_of(yaw, pitch, *saliency.shape)
    return saliency[rows, cols]


def nss(saliency, yaw_deg, pitch_deg) -> float:
    """Normalised scanpath saliency: the mean standardised map value at the fixations' pixels."""
    s = _checked("saliency map", saliency)
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
    s = _checked("saliency map", saliency)
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
    """All five metrics of a map against a reference map and the reference's fixations."""
    return {
        "kld": kld(saliency, reference),
        "cc": cc(saliency, reference),
        "sim": sim(saliency, reference),
        "nss": nss(saliency, yaw_deg, pitch_deg),
        "auc_judd": auc_judd(saliency, yaw_deg, pitch_deg),
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


def _random_halves(rng: np.random.Generator, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``counts`` (participant multiplicities) split at random into two halves of its participants."""
    keys = np.where(counts > 0, rng.random(counts.shape), np.inf)
    order = np.argsort(np.argsort(keys, axis=1), axis=1)
    present = (counts > 0).sum(axis=1, keepdims=True)
    first = order < present // 2
    return counts * first, counts * (~first & (counts > 0))


def participant_covariance(
    fixations: pd.DataFrame,
    participants: Sequence[str],
    *,
    height: int,
    width: int,
    sigma_deg: float,
    truncate: float = TRUNCATE,
) -> np.ndarray:
    """Solid-angle-weighted covariance matrix of the participants' (unnormalised) maps of one stimulus."""
    grid = KernelGrid(height, width, sigma_deg=sigma_deg, truncate=truncate)
    omega = np.sqrt(grid.solid_angles / grid.solid_angles.sum() / width)[:, None]
    stacked = np.zeros((len(participants), height * width))
    means = np.zeros(len(participants))
    by_code = {code: group for code, group in fixations.groupby("participant", observed=True)}
    for index, code in enumerate(participants):
        if code in by_code:
            density = grid.accumulate(by_code[code]["yaw_deg"].to_numpy(), by_code[code]["pitch_deg"].to_numpy())
            means[index] = float((density * omega**2).sum())
            stacked[index] = (density * omega).ravel()
    return stacked @ stacked.T - np.outer(means, means)


def inter_observer_consistency(
    fixations: pd.DataFrame,
    *,
    by: str = "stimulus",
    n_splits: int = 100,
    n_boot: int = 1000,
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
    n_boot : int
        Bootstrap resamples of the participants for the confidence interval.
    confidence : float
        Two-sided level of the percentile interval.
    seed : int
        Seeds the local generator of splits and resamples.
    height, width, sigma_deg
        Map size and kernel (1024 × 512 by default: CC between smooth maps is insensitive to resolution).

    Returns
    -------
    pandas.DataFrame
        One row per group plus a last row ``"all"`` (the mean over groups): ``by, n_participants, cc,
        ci_low, ci_high``.

    Notes
    -----
    The estimate is the mean CC over ``n_splits`` random halves. Its interval is a percentile bootstrap
    over participants (the sampling unit): each resample draws N participants with replacement, splits the
    distinct ones at random into halves that keep their multiplicities, and the same resample serves every
    group, so the ``"all"`` row's interval respects that groups share participants. Every CC comes exactly
    from one covariance matrix of the participants' maps per group (:func:`participant_covariance`), so
    thousands of splits cost no more map arithmetic.
    """
    needed = ["participant", by, "yaw_deg", "pitch_deg"]
    missing = [column for column in needed if column not in fixations.columns]
    if missing:
        raise AnalysisError(f"inter_observer_consistency: the fixation table lacks the columns {missing}")
    participants = sorted(fixations["participant"].astype(str).unique())
    if len(participants) < 2:
        raise AnalysisError(f"inter_observer_consistency: needs at least 2 participants, got {len(participants)}")
    rng = np.random.default_rng(seed)
    groups = sorted(fixations[by].astype(str).unique())
    n = len(participants)
    ones = np.ones((n_splits, n))
    boot_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    split_a, split_b = _random_halves(rng, ones)
    boot_a, boot_b = _random_halves(rng, boot_counts)
    rows, boot_values = [], []
    for group in groups:
        selected = fixations[fixations[by].astype(str) == group]
        covariance = participant_covariance(
            selected.assign(participant=selected["participant"].astype(str)), participants,
            height=height, width=width, sigma_deg=sigma_deg,
        )
        estimate = float(np.nanmean(_split_cc(covariance, split_a, split_b)))
        boot = _split_cc(covariance, boot_a, boot_b)
        boot_values.append(boot)
        low, high = np.nanquantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
        rows.append({by: group, "n_participants": int(selected["participant"].nunique()), "cc": estimate,
                     "ci_low": float(low), "ci_high": float(high)})
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may hold one distinct participant: no split
        overall = np.nanmean(np.vstack(boot_values), axis=0)
    low, high = np.nanquantile(overall, [(1 - confidence) / 2, (1 + confidence) / 2])
    rows.append({by: "all", "n_participants": n, "cc": float(np.mean([row["cc"] for row in rows])),
                 "ci_low": float(low), "ci_high": float(high)})
    return pd.DataFrame(rows, columns=[by, "n_participants", "cc", "ci_low", "ci_high"])
