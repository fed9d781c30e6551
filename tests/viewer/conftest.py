"""Fixtures of the viewer tests: one headless EGL backend per module and a smooth-but-detailed panorama."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# the study tests' kit (tiny protocol, stimuli, study database) is reused for the scripted sessions
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "study"))


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


@pytest.fixture(scope="session")
def panorama_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    pixels = smooth_panorama()
    path = tmp_path_factory.mktemp("pano") / "smooth.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


@pytest.fixture(scope="module")
def headless():
    """Opens a HeadlessBackend factory's contexts and closes them after the module."""
    from viewer.backends.headless import HeadlessBackend

    reason = HeadlessBackend.why_not()
    if reason is not None:
        pytest.skip(reason)
    opened = []

    def make(width: int, height: int, **options) -> HeadlessBackend:
        backend = HeadlessBackend(width, height, **options)
        backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()
