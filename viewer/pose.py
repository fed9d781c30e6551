"""Head-pose logging at the protocol's rate, stored in one batch per stimulus."""

from __future__ import annotations

import math

import numpy as np

from study.errors import ProtocolError
from viewer.camera import yaw_pitch_roll

#: Highest sampling rate: the headset's display rate; more samples would only repeat poses.
MAX_POSE_RATE_HZ = 90.0


class PoseLogger:
    """Samples the head orientation every ``1 / rate_hz`` seconds of a stimulus' exposure.

    Samples are kept in memory and handed to the engine in one ``record_poses`` call by :meth:`flush`
    when the exposure ends, so no database write ever happens while a stimulus is on screen.

    Parameters
    ----------
    rate_hz : float
        Samples per second, 0 < rate ≤ 90 (30 by default in the protocol).
    """

    def __init__(self, rate_hz: float):
        if not (isinstance(rate_hz, (int, float)) and 0 < rate_hz <= MAX_POSE_RATE_HZ):
            raise ProtocolError(f"pose_rate_hz={rate_hz!r}: must be a number in (0, {MAX_POSE_RATE_HZ:g}] Hz; 30 is usual")
        self.period_s = 1.0 / rate_hz
        self.samples: list[tuple[float, float, float, float, int | None]] = []
        self._next = 0.0

    def reset(self) -> None:
        """Starts a new stimulus: drops samples and restarts the sampling clock at t = 0."""
        self.samples = []
        self._next = 0.0

    def offer(self, t_s: float, head: np.ndarray, *, runtime_time_ns: int | None = None) -> None:
        """Records ``head`` (world-from-head rotation) if a sample is due at ``t_s`` seconds since onset,
        with the tracker's own time stamp of that pose where there is one.

        Frames rarely land exactly on the sampling grid; a frame takes the sample of every grid point
        it passed, once, so a slow frame does not shift later samples.
        """
        if t_s + 1e-9 < self._next:
            return
        yaw, pitch, roll = yaw_pitch_roll(head)
        self.samples.append((float(t_s), yaw, pitch, roll, runtime_time_ns))
        self._next = (math.floor(t_s / self.period_s + 1e-9) + 1) * self.period_s

    def flush(self, engine, trial_index: int) -> int:
        """Stores the samples with ``engine.record_poses`` and clears them; returns how many."""
        count = len(self.samples)
        if count:
            engine.record_poses(trial_index, self.samples)
        self.samples = []
        return count
