"""How visible the wrap-around seam (and the poles) of an equirectangular image are.

Cheap, deterministic, reference-free measures: the Discontinuity Score of Christensen et al. (2024), a wrap-L1
ratio, and a pole-row spread. A seamless panorama scores about 1 on the first two, like any pair of neighbouring
columns; a visible seam scores well above 1.
"""

from __future__ import annotations

import numpy as np

#: Scharr's horizontal derivative kernel, normalised as in Christensen et al. (2024).
SCHARR_X = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0
#: The regulariser c of the Discontinuity Score (grey values in [0, 1]).
DS_EPSILON = 0.1


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float in [0, 1] → (H, W) float64 luma in [0, 1] (ITU-R 601 weights)."""
    values = image.astype(np.float64)
    if image.dtype == np.uint8:
        values /= 255.0
    if values.ndim == 2:
        return values
    return values[..., :3] @ np.array([0.2989, 0.587, 0.114])


def _horizontal_scharr(strip: np.ndarray) -> np.ndarray:
    """Valid-mode horizontal Scharr response of an (H, C) strip, rows extended by edge replication → (H, C − 2)."""
    padded = np.pad(strip, ((1, 1), (0, 0)), mode="edge")
    height, columns = strip.shape
    response = np.zeros((height, columns - 2))
    for dy in range(3):
        for dx in range(3):
            response += SCHARR_X[dy, dx] * padded[dy : dy + height, dx : dx + columns - 2]
    return response


def discontinuity_score(image: np.ndarray, epsilon: float = DS_EPSILON) -> float:
    """Discontinuity Score of the wrap-around seam (Christensen et al. 2024).

    Parameters
    ----------
    image : (H, W, 3) uint8, or (H, W) / (H, W, 3) float in [0, 1]
        An equirectangular image.
    epsilon : float
        The regulariser c.

    Returns
    -------
    float
        About 1 where the seam looks like any other column boundary; larger for a visible seam.

    Notes
    -----
    The strip ``a`` is the last three columns followed by the first three, so that its columns 2|3 (0-based) straddle
    the seam. With ``â`` its horizontal Scharr response (4 columns, â(1) … â(4) centred on strip columns 1 … 4),

    .. math:: DS = \\frac{1}{2H} \\sum_y \\left[\\frac{|â(2,y)|}{|â(1,y)| + c} + \\frac{|â(3,y)|}{|â(4,y)| + c}\\right]

    â(2) and â(3) are derivatives across the seam, â(1) and â(4) their neighbours beside it. This is the paper's
    ``(L / H_E) Σ_i DS(a_i)`` with all row blocks pooled. The reference implementation builds a 6+6 strip whose
    indexed columns do not straddle the seam; the 3+3 strip fixes that.

    References
    ----------
    C. Christensen et al., "Geometry Fidelity for Spherical Images", arXiv:2407.18207, 2024.
    """
    grey = _grey(image)
    return _strip_discontinuity(np.concatenate([grey[:, -3:], grey[:, :3]], axis=1), epsilon)


def _strip_discontinuity(strip: np.ndarray, epsilon: float = DS_EPSILON) -> float:
    """The Discontinuity Score of the boundary between columns 2 and 3 of an (H, 6) grey strip."""
    response = np.abs(_horizontal_scharr(strip))
    ratios = response[:, 1] / (response[:, 0] + epsilon) + response[:, 2] / (response[:, 3] + epsilon)
    return float(ratios.mean() / 2.0)


def interior_discontinuity(image: np.ndarray, count: int = 16) -> float:
    """Median Discontinuity Score of ``count`` interior column boundaries spread over the width.

    What a seamless wrap should score on this very panorama: the seam is one column boundary among many, so a
    Discontinuity Score near this median means the seam cannot be told from the rest.
    """
    grey = _grey(image)
    width = grey.shape[1]
    columns = [round(width * k / (count + 1)) for k in range(1, count + 1)]
    return float(np.median([_strip_discontinuity(grey[:, c - 3 : c + 3]) for c in columns if 3 <= c <= width - 3]))


def wrap_l1_ratio(image: np.ndarray) -> float:
    """Mean |I[:, 0] − I[:, W−1]| divided by the mean absolute difference of all other neighbouring columns.

    About 1 for a seamless panorama (the seam is a column boundary like any other).
    """
    values = image.astype(np.float64)
    across = np.abs(values[:, 0] - values[:, -1]).mean()
    beside = np.abs(np.diff(values, axis=1)).mean()
    return float(across / max(beside, 1e-12))


def pole_spread(image: np.ndarray, rows: int = 2) -> dict[str, float]:
    """How much the rows nearest each pole vary along the width, relative to the equator row.

    Every pixel of an equirectangular image's top (bottom) row shows the same point of the sphere, so a
    well-formed panorama has near-constant pole rows; pinching or swirling artefacts show up as spread.

    Returns
    -------
    dict
        ``top`` and ``bottom``: the mean standard deviation along the width of the ``rows`` rows nearest each pole,
        divided by that of the equator row (0 is a perfect pole; about 1 means no pole structure at all).
    """
    grey = _grey(image)
    equator = max(float(grey[grey.shape[0] // 2].std()), 1e-6)
    return {
        "top": float(grey[:rows].std(axis=1).mean() / equator),
        "bottom": float(grey[-rows:].std(axis=1).mean() / equator),
    }


def seam_scores(image: np.ndarray) -> dict[str, float]:
    """All seam and pole measures of one panorama, for a manifest: ``discontinuity``, ``wrap_l1_ratio``,
    ``pole_top``, ``pole_bottom``."""
    poles = pole_spread(image)
    return {
        "discontinuity": discontinuity_score(image),
        "wrap_l1_ratio": wrap_l1_ratio(image),
        "pole_top": poles["top"],
        "pole_bottom": poles["bottom"],
    }
