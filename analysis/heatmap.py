"""Viewing heat maps: where on the panorama people looked, from their head-pose samples."""

from __future__ import annotations

import math

import numpy as np

from study.errors import AnalysisError
from study.sphere import pixel_centres, unit_vectors


def viewing_heatmap(yaw_deg, pitch_deg, *, width: int = 256, height: int = 128, sigma_deg: float = 10.0) -> np.ndarray:
    """Equirect density of viewing directions, normalised to sum 1.

    Parameters
    ----------
    yaw_deg, pitch_deg : array-like, shape (N,)
        Head directions in the viewer's convention (yaw 0 = image centre column, positive right;
        pitch positive up), e.g. the ``yaw_deg`` / ``pitch_deg`` columns of ``study.export.load_poses``.
    width, height : int
        Size of the map; pixel ``(i, j)`` covers longitude ``((j + 0.5) / width - 0.5) · 360°`` and
        latitude ``(0.5 - (i + 0.5) / height) · 180°``, like the stimulus image.
    sigma_deg : float
        Angular spread of each sample's kernel (head direction is only a proxy for gaze, about ±10°).

    Returns
    -------
    (height, width) float64 array, non-negative, summing to 1.

    Raises
    ------
    AnalysisError
        If there are no samples, the arrays differ in length or hold non-finite values, or
        ``sigma_deg`` is not positive.

    Notes
    -----
    Each sample contributes a von Mises–Fisher kernel on the sphere,
    :math:`k(\\mathbf{x}) = \\exp(\\kappa(\\mathbf{x}\\cdot\\boldsymbol{\\mu} - 1))` with
    :math:`\\kappa = 1/\\sigma^2` (σ in radians), the spherical analogue of a Gaussian: it wraps
    across ±180° and does not stretch at the poles the way a Gaussian on the image plane would.
    The map is the sum of the kernels at the pixel centres, divided by its total.
    """
    yaw = np.asarray(yaw_deg, dtype=np.float64).ravel()
    pitch = np.asarray(pitch_deg, dtype=np.float64).ravel()
    if yaw.size == 0 or yaw.shape != pitch.shape:
        raise AnalysisError(f"viewing_heatmap: got {yaw.size} yaw and {pitch.size} pitch samples; pass equal, non-empty arrays")
    if not (np.isfinite(yaw).all() and np.isfinite(pitch).all()):
        raise AnalysisError("viewing_heatmap: yaw/pitch contain NaN or infinite values; drop those samples first")
    if not sigma_deg > 0:
        raise AnalysisError(f"viewing_heatmap: sigma_deg={sigma_deg!r} must be positive")
    kappa = 1.0 / math.radians(sigma_deg) ** 2
    longitude, latitude = pixel_centres(height, width)
    pixels = unit_vectors(longitude[None, :], latitude[:, None]).reshape(-1, 3)
    samples = unit_vectors(yaw, pitch)
    density = np.zeros(pixels.shape[0])
    for start in range(0, samples.shape[0], 256):
        density += np.exp(kappa * (samples[start : start + 256] @ pixels.T - 1.0)).sum(axis=0)
    density = density.reshape(height, width)
    return density / density.sum()
