"""Fixtures of the viewer tests: one headless EGL backend per module and a smooth-but-detailed panorama."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _panoramas import smooth_panorama  # a module of its own: `from conftest import` finds whichever conftest came first

# the study tests' kit (tiny protocol, stimuli, study database) is reused for the scripted sessions
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "study"))


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
