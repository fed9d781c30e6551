"""Saliency maps in equirect from fixations: a Gaussian of the angular distance on the sphere.

A map is a probability density on the sphere sampled at the equirect pixel centres: weighted by each row's
solid angle (:func:`study.sphere.pixel_solid_angles`) it sums to 1. Each fixation adds
``exp(−d²/(2σ²))`` with ``d`` the true angle (not the image-plane distance, and not the chord the
Salient360! toolbox uses as a stand-in), so the map is continuous across ±180° and round near the poles,
where the kernel's support in u widens as 1/cos φ. σ = 2° for gaze maps and 3.34° for head-only
viewport-centre maps (Salient360!).

Only the pixels within ``truncate·σ`` of a fixation are evaluated (a spherical cap of radius 8° at the
defaults, where the kernel has fallen to e⁻⁸ ≈ 3·10⁻⁴); that is what makes 2048 × 1024 maps of thousands of
fixations fast. The angle comes from the haversine form, which separates into a row term and a column term.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from study.errors import AnalysisError
from study.sphere import pixel_centres, pixel_solid_angles

GAZE_SIGMA_DEG = 2.0
HEAD_SIGMA_DEG = 3.34
TRUNCATE = 4.0
MAP_HEIGHT, MAP_WIDTH = 1024, 2048


def _check_directions(yaw_deg, pitch_deg, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yaw = np.asarray(yaw_deg, dtype=np.float64).ravel()
    pitch = np.asarray(pitch_deg, dtype=np.float64).ravel()
    w = np.ones(yaw.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not (yaw.size == pitch.size == w.size):
        raise AnalysisError(f"saliency map: got {yaw.size} yaw, {pitch.size} pitch and {w.size} weights; pass arrays of one length")
    if not (np.isfinite(yaw).all() and np.isfinite(pitch).all() and np.isfinite(w).all()) or (np.abs(pitch) > 90).any():
        raise AnalysisError("saliency map: fixation directions must be finite with |pitch| <= 90°, and weights finite; drop invalid fixations first")
    if (w < 0).any():
        raise AnalysisError("saliency map: fixation weights must not be negative")
    return yaw, pitch, w


class KernelGrid:
    """An equirect grid that accumulates spherical Gaussian kernels (precomputed row and column terms)."""

    def __init__(self, height: int = MAP_HEIGHT, width: int = MAP_WIDTH, *, sigma_deg: float = GAZE_SIGMA_DEG,
                 truncate: float = TRUNCATE):
        if height < 2 or width != 2 * height:
            raise AnalysisError(f"saliency map: size {width}x{height} must be 2:1 (e.g. 2048x1024)")
        if not sigma_deg > 0 or not truncate > 0:
            raise AnalysisError(f"saliency map: sigma_deg={sigma_deg!r} and truncate={truncate!r} must be positive")
        self.height, self.width = height, width
        self.sigma = math.radians(sigma_deg)
        self.radius = truncate * self.sigma
        self.hav_radius = np.float32(math.sin(self.radius / 2) ** 2)
        longitude, latitude = pixel_centres(height, width)
        self.lon = np.radians(longitude)
        self.lat = np.radians(latitude)
        self.cos_lat = np.cos(self.lat)
        self.solid_angles = pixel_solid_angles(height, width)

    def add(self, target: np.ndarray, yaw_deg: float, pitch_deg: float, weight: float = 1.0) -> None:
        """Adds ``weight · exp(−d²/(2σ²))`` around one direction to ``target`` (``(H, W)``, in place)."""
        lon0, lat0 = math.radians(yaw_deg), math.radians(pitch_deg)
        rows_per_rad = self.height / math.pi
        top = max(0, int(math.floor((math.pi / 2 - (lat0 + self.radius)) * rows_per_rad)))
        bottom = min(self.height, int(math.ceil((math.pi / 2 - (lat0 - self.radius)) * rows_per_rad)) + 1)
        cos_lat0 = math.cos(lat0)
        if abs(lat0) + self.radius >= math.pi / 2:
            columns = slice(None)  # the cap holds a pole: every longitude is near
            dlon = self.lon - lon0
        else:
            half = math.asin(math.sin(self.radius) / cos_lat0)  # widest longitude extent of the cap
            cols_per_rad = self.width / (2 * math.pi)
            centre = (lon0 + math.pi) * cols_per_rad - 0.5
            first = int(math.floor(centre - half * cols_per_rad)) - 1
            count = min(self.width, int(math.ceil(2 * half * cols_per_rad)) + 3)
            if 0 <= first and first + count <= self.width:
                columns = slice(first, first + count)  # a plain slice: far cheaper to add into than an index
            else:
                columns = np.arange(first, first + count) % self.width  # the cap straddles ±180°
            dlon = self.lon[columns] - lon0
        lat = self.lat[top:bottom]
        # haversine: hav d = hav Δφ + cos φ cos φ0 hav Δλ, a row term plus a row × column term. The window's
        # arithmetic runs in float32 (twice as fast, and 1e-7 of the kernel is far below anything a map shows);
        # the map itself accumulates in float64.
        hav = (np.sin((lat - lat0) / 2) ** 2).astype(np.float32)
        spread = (self.cos_lat[top:bottom] * cos_lat0).astype(np.float32)
        h = hav[:, None] + spread[:, None] * (np.sin(dlon / 2) ** 2).astype(np.float32)[None, :]
        outside = h > self.hav_radius
        np.minimum(h, 1.0, out=h)
        kernel = np.arcsin(np.sqrt(h, out=h), out=h)
        kernel *= kernel
        kernel *= np.float32(-2.0 / self.sigma**2)  # −d²/(2σ²) with d = 2·asin √h
        np.exp(kernel, out=kernel)
        kernel[outside] = 0.0
        target[top:bottom, columns] += weight * kernel

    def accumulate(self, yaw_deg, pitch_deg, weights=None, out: np.ndarray | None = None) -> np.ndarray:
        """The unnormalised sum of the kernels of all directions (into ``out`` if given)."""
        yaw, pitch, w = _check_directions(yaw_deg, pitch_deg, weights)
        target = np.zeros((self.height, self.width)) if out is None else out
        for y, p, weight in zip(yaw.tolist(), pitch.tolist(), w.tolist()):
            if weight:
                self.add(target, y, p, weight)
        return target

    def normalise(self, density: np.ndarray) -> np.ndarray:
        """``density`` divided by its integral over the sphere (Σ map · pixel solid angle), in place."""
        total = float((density.sum(axis=1) * self.solid_angles).sum())
        if not total > 0:
            raise AnalysisError("saliency map: no fixation contributes to the map (no fixations, or all weights 0)")
        density /= total
        return density


def saliency_map(
    yaw_deg,
    pitch_deg,
    weights=None,
    *,
    height: int = MAP_HEIGHT,
    width: int = MAP_WIDTH,
    sigma_deg: float = GAZE_SIGMA_DEG,
    truncate: float = TRUNCATE,
) -> np.ndarray:
    """Equirect saliency map of fixations at the given directions: a probability density on the sphere.

    Parameters
    ----------
    yaw_deg, pitch_deg : array-like, shape (N,)
        Fixation centres (yaw 0 = image centre, positive right; pitch positive up).
    weights : array-like, shape (N,), optional
        Per-fixation weights, e.g. durations; all 1 by default.
    height, width : int
        Map size, 2:1; pixel centres as in :func:`study.sphere.pixel_centres`.
    sigma_deg : float
        Kernel width: :data:`GAZE_SIGMA_DEG` (2°) for gaze, :data:`HEAD_SIGMA_DEG` (3.34°) for head-only.
    truncate : float
        The kernel is evaluated within ``truncate · sigma_deg`` of each fixation.

    Returns
    -------
    (height, width) float64 array
        :math:`S(\\mathbf{x}) = \\sum_k w_k\\, e^{-d(\\mathbf{x}, \\mathbf{f}_k)^2 / 2\\sigma^2} / Z`, with
        :math:`d` the angle between pixel centre and fixation and :math:`Z` such that
        :math:`\\sum_{ij} S_{ij}\\,\\Omega_i = 1` (:math:`\\Omega_i` the solid angle of a pixel of row i).
    """
    grid = KernelGrid(height, width, sigma_deg=sigma_deg, truncate=truncate)
    return grid.normalise(grid.accumulate(yaw_deg, pitch_deg, weights))


def iter_saliency_maps(
    fixations: pd.DataFrame,
    by: Sequence[str] = ("stimulus",),
    *,
    duration_weighted: bool = False,
    height: int = MAP_HEIGHT,
    width: int = MAP_WIDTH,
    sigma_deg: float = GAZE_SIGMA_DEG,
    truncate: float = TRUNCATE,
) -> Iterator[tuple[tuple, np.ndarray]]:
    """``(key, map)`` for each group of ``by`` in a fixation table, one map at a time (sorted by key).

    ``by=("stimulus",)`` gives maps per stimulus, ``("scene",)`` per scene, ``("participant", "stimulus")``
    per participant and stimulus. With ``duration_weighted`` each fixation weighs its ``duration_s``.
    """
    needed = [*by, "yaw_deg", "pitch_deg"] + (["duration_s"] if duration_weighted else [])
    missing = [column for column in needed if column not in fixations.columns]
    if missing:
        raise AnalysisError(f"fixation table lacks the columns {missing}; make it with analysis.fixations.detect_fixations")
    grid = KernelGrid(height, width, sigma_deg=sigma_deg, truncate=truncate)
    for key, group in fixations.groupby(list(by), sort=True, observed=True):
        weights = group["duration_s"].to_numpy() if duration_weighted else None
        density = grid.accumulate(group["yaw_deg"].to_numpy(), group["pitch_deg"].to_numpy(), weights)
        yield (key if isinstance(key, tuple) else (key,)), grid.normalise(density)


def saliency_maps(fixations: pd.DataFrame, by: Sequence[str] = ("stimulus",), **options) -> dict[tuple, np.ndarray]:
    """Every map of :func:`iter_saliency_maps` in a dict by key (16 MB each at 2048 × 1024: mind the count)."""
    return dict(iter_saliency_maps(fixations, by, **options))
