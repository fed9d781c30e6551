"""Eye gaze during a session: the interface every eye tracker implements, its sampler, and the synthetic tracker.

A :class:`GazeSource` records while something is on screen: :meth:`GazeSource.start` at the onset of a
stimulus or a validation target, :meth:`GazeSource.stop` at its end, which returns what was recorded as
:class:`GazeReading` objects (seconds since the onset at the tracker's own sample times, the direction in
the display's world frame, validity, the runtime's time stamp). Nothing is written while a stimulus is on
screen: the session stores the readings in one batch afterwards, like the head poses, in the stimulus
frame (:func:`gaze_records`, which undoes the turn that puts a stimulus's start yaw straight ahead).

Two sources exist:

- **OpenXR** (``viewer.backends.openxr.EyeGaze``): ``XR_EXT_eye_gaze_interaction``'s gaze pose, located from
  a :class:`GazeSampler` thread at twice the tracker's rate and kept once per tracker sample time
  (``XrEyeGazeSampleTimeEXT``), never tied to frames;
- **synthetic** (:class:`SyntheticGaze`): the scripted eye of :mod:`study.scanpath` (fixations, saccades,
  noise, bias, blinks; optionally drawn towards target regions such as a stimulus's masked objects), for the
  tests, the demo and the headless backend. On the headless backend's simulated clock it needs no thread.

World frame: the viewer's (x right, y up, −z straight ahead). Directions in the stimulus frame use
py360convert's yaw and pitch, as the head poses do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from study.driver import keyed_rng
from study.engine import GazeRecord
from study.scanpath import GazeSamples, TargetRegion, TrackerModel, ViewingModel, trial_gaze, validation_gaze
from study.sphere import unit_vectors, yaw_pitch
from viewer.pose import DueTimeSampler

#: The VIVE Pro Eye's tracker rate; OpenXR does not report a tracker's rate.
TRACKER_HZ = 120.0
#: Highest rate a gaze sampler thread may run at.
MAX_GAZE_SAMPLER_HZ = 1000.0
#: The sphere's frame looks down +z, the viewer's world down −z.
_FLIP_Z = np.array([1.0, 1.0, -1.0])


@dataclass(frozen=True)
class GazeReading:
    """One tracker sample: seconds since the onset of what was shown (at the sample's own time), the gaze
    direction (unit vector, world frame; None when invalid), validity, and the runtime's time stamp."""

    t: float
    direction: np.ndarray | None
    valid: bool
    runtime_time_ns: int | None = None


@dataclass(frozen=True)
class GazeShowing:
    """What is on screen while gaze is recorded.

    ``turn`` is the stimulus-from-world rotation of the showing (:func:`gaze_records` applies it). A
    stimulus showing names its trial and stimulus; a validation target its attempt, its index and the
    whole target list (in the validation's frame).
    """

    participant: str
    duration_s: float
    turn: np.ndarray = field(default_factory=lambda: np.eye(3))
    trial_index: int | None = None
    stimulus_path: str | None = None
    attempt: int | None = None
    target: int | None = None
    targets: tuple[tuple[float, float], ...] = ()
    target_s: float | None = None


class GazeSource(ABC):
    """An eye tracker as the session sees it."""

    #: Names the source in the data (``validation.gaze_source``, the ``gaze`` event).
    name: str = ""
    #: The tracker's nominal sampling rate.
    rate_hz: float = TRACKER_HZ

    @abstractmethod
    def start(self, onset_ns: int, showing: GazeShowing) -> None:
        """Starts recording what appears (appeared) at ``time.monotonic_ns()`` value ``onset_ns``."""

    @abstractmethod
    def stop(self, at_ns: int) -> list[GazeReading]:
        """Ends the recording at ``at_ns`` and returns its samples, in time order (none at or after the end)."""

    def head_motion(self, showing: GazeShowing, rate_hz: float) -> list[tuple[float, float, float, float]] | None:
        """For a scripted participant: head poses ``(t, yaw, pitch, roll)`` that go with this source's gaze
        (None: the runner scripts the head itself)."""
        return None

    def describe(self) -> dict[str, object]:
        """What the session records about the tracker."""
        return {"source": self.name, "rate_hz": self.rate_hz}


class GazeSampler(DueTimeSampler):
    """A :class:`viewer.pose.DueTimeSampler` for an eye tracker: up to :data:`MAX_GAZE_SAMPLER_HZ`, keeping
    whatever the source returned for each due time."""

    thread_name = "gaze-sampler"

    @staticmethod
    def _check_rate(rate_hz: float) -> float:
        if not (isinstance(rate_hz, (int, float)) and 0 < rate_hz <= MAX_GAZE_SAMPLER_HZ):
            raise ValueError(f"gaze sampler rate {rate_hz!r}: must be in (0, {MAX_GAZE_SAMPLER_HZ:g}] Hz")
        return float(rate_hz)


def world_directions(yaw_deg, pitch_deg, turn: np.ndarray) -> np.ndarray:
    """World-frame unit vectors ``(N, 3)`` of stimulus-frame directions, for a showing turned by ``turn``."""
    return (unit_vectors(yaw_deg, pitch_deg) * _FLIP_Z) @ np.asarray(turn)


def gaze_records(readings: Sequence[GazeReading], turn: np.ndarray, *, target: int | None = None) -> list[GazeRecord]:
    """The readings as the session stores them: yaw and pitch in the showing's frame (``turn`` @ world),
    no direction where a sample is invalid."""
    records = []
    turn = np.asarray(turn, dtype=np.float64)
    for reading in readings:
        if reading.valid and reading.direction is not None:
            yaw, pitch = yaw_pitch((turn @ np.asarray(reading.direction, dtype=np.float64)) * _FLIP_Z)
            records.append(GazeRecord(reading.t, float(yaw), float(pitch), True, reading.runtime_time_ns, target))
        else:
            records.append(GazeRecord(reading.t, None, None, False, reading.runtime_time_ns, target))
    return records


class SyntheticGaze(GazeSource):
    """The scripted eye tracker of :mod:`study.scanpath`, seeded per participant and trial.

    Parameters
    ----------
    seed : int
        With the participant code and the trial (or validation attempt), fixes every recording, so a resumed
        session records what an uninterrupted one would.
    targets : mapping stimulus path -> sequence of TargetRegion, optional
        Regions of a stimulus the eye is drawn to (``viewing.target_pull`` of the fixations), e.g. its masked
        objects; stimuli not in it are viewed freely.
    viewing, tracker :
        The eye's viewing behaviour and what the tracker adds (bias, noise, blinks, losses).
    """

    name = "synthetic"

    def __init__(self, seed: int, targets: Mapping[str, Sequence[TargetRegion]] | None = None, *,
                 viewing: ViewingModel = ViewingModel(), tracker: TrackerModel = TrackerModel()):
        self.seed = seed
        self.targets = dict(targets or {})
        self.viewing = viewing
        self.tracker = tracker
        self.rate_hz = tracker.rate_hz
        self._recording: tuple[GazeShowing, int, GazeSamples, np.ndarray | None] | None = None
        self._cache: dict[tuple, tuple[GazeSamples, np.ndarray | None]] = {}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "bias_deg": list(self.tracker.bias_deg), "noise_deg": self.tracker.noise_deg,
                "target_pull": self.viewing.target_pull, "stimuli_with_targets": len(self.targets)}

    def _scanpath(self, showing: GazeShowing) -> tuple[GazeSamples, np.ndarray | None]:
        """The eye's recording for a showing, and for a validation target which samples are of it."""
        if showing.target is not None:
            key = ("validation", showing.participant, showing.attempt)
            if key not in self._cache:
                recording = validation_gaze(showing.targets, keyed_rng(self.seed, *key), target_s=showing.target_s,
                                            tracker=self.tracker)
                self._cache = {key: (recording.samples, recording.target)}
            samples, of_target = self._cache[key]
            return samples, of_target == showing.target
        key = ("trial", showing.participant, showing.trial_index)
        if key not in self._cache:
            regions = self.targets.get(showing.stimulus_path or "", ())
            self._cache = {key: (trial_gaze(self.seed, showing.participant, showing.trial_index, showing.duration_s,
                                            viewing=self.viewing, tracker=self.tracker, targets=regions), None)}
        return self._cache[key]

    def start(self, onset_ns: int, showing: GazeShowing) -> None:
        samples, mask = self._scanpath(showing)
        self._recording = (showing, onset_ns, samples, mask)

    def stop(self, at_ns: int) -> list[GazeReading]:
        if self._recording is None:
            return []
        showing, onset_ns, samples, mask = self._recording
        self._recording = None
        keep = samples.t < min((at_ns - onset_ns) / 1e9, showing.duration_s)
        if mask is not None:
            keep &= mask
        t, valid = samples.t[keep], samples.valid[keep]
        directions = world_directions(samples.yaw_deg[keep], samples.pitch_deg[keep], showing.turn)
        return [GazeReading(float(t[i]), directions[i] if valid[i] else None, bool(valid[i])) for i in range(t.size)]

    def head_motion(self, showing: GazeShowing, rate_hz: float) -> list[tuple[float, float, float, float]] | None:
        if showing.target is not None:
            return None
        samples, _ = self._scanpath(showing)
        return samples.head_poses(rate_hz, showing.duration_s,
                                  rng=keyed_rng(self.seed, showing.participant, showing.trial_index, "gaze-head"))
