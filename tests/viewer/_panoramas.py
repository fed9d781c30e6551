"""Test panoramas shared by the viewer tests and their fixtures."""

from __future__ import annotations

import numpy as np


def smooth_panorama(height: int = 512) -> np.ndarray:
    """``(height, 2 height, 3) uint8``: sums of sinusoids in longitude and latitude.

    Periodic in longitude (continuous across ±180°) and band-limited, so bilinear sampling of it is
    accurate and neighbouring output pixels differ smoothly; detailed enough that a wrong direction,
    flip or half-pixel shift shows up as a large error.
    """
    width = 2 * height
    lat = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    lon = ((np.arange(width) + 0.5) / width - 0.5) * 2 * np.pi
    lo, la = np.meshgrid(lon, lat)
    channels = [
        0.5 + 0.3 * np.sin(3 * lo + 2 * la) + 0.15 * np.cos(11 * lo) * np.cos(la),
        0.5 + 0.35 * np.cos(5 * la + lo),
        0.5 + 0.3 * np.sin(7 * lo - 3 * la) * np.cos(la),
    ]
    return np.clip(np.stack(channels, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
