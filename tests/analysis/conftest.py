"""Fixtures of the analysis tests."""

from __future__ import annotations

import pytest

from analysis.simulate import simulate_study


@pytest.fixture(scope="session")
def small_study():
    """A quick simulated study (10 participants, 2 stimuli per scene) for report and CLI tests."""
    return simulate_study(n_participants=10, stimuli_per_scene=2, pose_rate_hz=5.0, exposure_s=2.0, seed=7)
