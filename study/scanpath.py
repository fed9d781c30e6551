"""A synthetic eye tracker: scripted scanpaths with known fixations and saccades, as a runtime would sample them.

The eye rests at each fixation and moves between fixations along the great circle, with the duration of the
saccadic main sequence (``D = 21 ms + 2.2 ms/° · A``) and a minimum-jerk velocity profile. The tracker then
samples it at its own rate (120 Hz, the VIVE Pro Eye's) with jittered, runtime-like sample times, and adds what
real trackers add: a constant bias, Gaussian noise, blinks and isolated lost samples. Everything the analysis
must recover is kept: the true fixations, the true direction of every sample.

The tests, the headless backend and the demo use it; every draw comes from the ``numpy.random.Generator``
passed in (:func:`trial_gaze` seeds one from the participant and trial, like the scripted head motion).
Directions are in the stimulus frame, yaw 0 the image centre, positive yaw right and positive pitch up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from study.driver import keyed_rng
from study.sphere import (
    angular_distance_deg,
    pixel_centres,
    pixel_solid_angles,
    tangent_offset,
    unit_vectors,
    wrap_yaw,
    yaw_pitch,
)
from study.validation_targets import DEFAULT_TARGET_S, check_targets


def saccade_duration_s(amplitude_deg) -> np.ndarray:
    """The main sequence, ``D = 21 ms + 2.2 ms/° · A`` (Carpenter 1988): how long a saccade of ``A`` degrees takes."""
    return 0.021 + 0.0022 * np.asarray(amplitude_deg, dtype=np.float64)


def _minimum_jerk(progress: np.ndarray) -> np.ndarray:
    """Share of the path covered at ``progress`` ∈ [0, 1] of the movement: 10τ³ − 15τ⁴ + 6τ⁵."""
    return progress**3 * (10.0 - 15.0 * progress + 6.0 * progress**2)


def _slerp(a: np.ndarray, b: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Points ``share`` of the way from unit vectors ``a`` to ``b`` (rows) along their great circle."""
    cos_angle = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
    angle = np.arccos(cos_angle)
    small = angle < 1e-9
    sin_angle = np.where(small, 1.0, np.sin(angle))
    wa = np.where(small, 1.0 - share, np.sin((1.0 - share) * angle) / sin_angle)
    wb = np.where(small, share, np.sin(share * angle) / sin_angle)
    out = wa[:, None] * a + wb[:, None] * b
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@dataclass(frozen=True)
class Fixation:
    """One true fixation: the first and last sample times at rest, and where the eye rested."""

    onset_s: float
    offset_s: float
    yaw_deg: float
    pitch_deg: float

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s


@dataclass(frozen=True)
class TrackerModel:
    """What the eye tracker adds to the eye's true direction.

    Parameters
    ----------
    rate_hz : float
        Sampling rate (120 Hz for the VIVE Pro Eye).
    noise_deg : float
        Standard deviation of white Gaussian noise on each tangent axis (right, up), in degrees.
    bias_deg : (float, float)
        Constant offset (right, up) in degrees, applied along the great circle: a tracker with
        ``bias_deg=(1, 0)`` is exactly 1° off everywhere.
    blinks_per_s : float
        Rate of blink-like losses (runs of invalid samples), per second.
    blink_s : (float, float)
        Range of a blink's duration.
    loss_probability : float
        Probability that any other sample is lost on its own.
    jitter_s : float
        Standard deviation of the sample times around the nominal grid (runtimes stamp samples when the
        tracker delivered them, not on an exact grid).
    """

    rate_hz: float = 120.0
    noise_deg: float = 0.1
    bias_deg: tuple[float, float] = (0.0, 0.0)
    blinks_per_s: float = 0.25
    blink_s: tuple[float, float] = (0.08, 0.25)
    loss_probability: float = 0.002
    jitter_s: float = 0.0002

    def sample_times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Increasing sample times in ``[0, duration_s)``: a random phase, the nominal grid, jitter."""
        period = 1.0 / self.rate_hz
        grid = rng.uniform(0.0, period) + np.arange(0.0, duration_s, period)
        times = grid + rng.normal(0.0, self.jitter_s, grid.size) if self.jitter_s > 0 else grid
        times = np.maximum.accumulate(np.clip(times, 0.0, None))
        return times[times < duration_s]

    def measure(self, rng: np.random.Generator, t: np.ndarray, true_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(measured unit vectors, valid)`` for the true directions at times ``t``."""
        measured = tangent_offset(true_vectors, *self.bias_deg)
        if self.noise_deg > 0:
            measured = tangent_offset(measured, *rng.normal(0.0, self.noise_deg, (2, t.size)))
        valid = rng.random(t.size) >= self.loss_probability
        span = float(t[-1] - t[0]) if t.size else 0.0
        for _ in range(rng.poisson(self.blinks_per_s * span)):
            start = rng.uniform(t[0], t[-1])
            valid &= ~((t >= start) & (t < start + rng.uniform(*self.blink_s)))
        return measured, valid


@dataclass(frozen=True)
class GazeSamples:
    """Samples of one synthetic gaze recording, with the truth behind them.

    Attributes
    ----------
    t : (N,) float64
        Sample times in seconds (since the stimulus or target appeared).
    yaw_deg, pitch_deg : (N,) float64
        Measured direction; NaN where the sample is invalid.
    valid : (N,) bool
        The runtime's validity flag (``isActive``).
    true_yaw_deg, true_pitch_deg : (N,) float64
        Where the eye really pointed.
    fixations : tuple of Fixation
        The true fixations, in time order.
    """

    t: np.ndarray
    yaw_deg: np.ndarray
    pitch_deg: np.ndarray
    valid: np.ndarray
    true_yaw_deg: np.ndarray
    true_pitch_deg: np.ndarray
    fixations: tuple[Fixation, ...] = ()

    def records(self) -> list[tuple[float, float, float, bool]]:
        """``(t, yaw_deg, pitch_deg, valid)`` per sample, as the session stores gaze samples."""
        return list(zip(self.t.tolist(), self.yaw_deg.tolist(), self.pitch_deg.tolist(), self.valid.tolist()))

    def head_poses(self, rate_hz: float, duration_s: float, *, follow_s: float = 0.35,
                   rng: np.random.Generator | None = None) -> list[tuple[float, float, float, float]]:
        """Head poses ``(t_s, yaw_deg, pitch_deg, roll_deg)`` at ``rate_hz`` that go with this gaze.

        The head follows the eye's true direction with a first-order lag of ``follow_s`` (in 360° viewing
        large gaze shifts are made mostly by the head, which arrives after the eye), so the gaze stays inside
        the viewport as it does in a headset. Roll is small noise if ``rng`` is given, else 0.
        """
        true = unit_vectors(self.true_yaw_deg, self.true_pitch_deg)
        head = np.empty_like(true)
        head[0] = true[0]
        gains = 1.0 - np.exp(-np.diff(self.t, prepend=self.t[0]) / follow_s)
        for i in range(1, true.shape[0]):
            step = head[i - 1] + gains[i] * (true[i] - head[i - 1])
            head[i] = step / np.linalg.norm(step)
        times = np.arange(0.0, duration_s, 1.0 / rate_hz)
        resampled = np.stack([np.interp(times, self.t, head[:, k]) for k in range(3)], axis=-1)
        yaw, pitch = yaw_pitch(resampled)
        roll = np.zeros_like(times) if rng is None else rng.normal(0.0, 1.0, times.size)
        return list(zip(times.tolist(), yaw.tolist(), pitch.tolist(), roll.tolist()))


def eye_path(
    fixations: Sequence[tuple[float, float, float]], t: np.ndarray
) -> tuple[np.ndarray, tuple[Fixation, ...]]:
    """The eye's true direction at times ``t`` for a script of fixations, and the fixations as sampled.

    Parameters
    ----------
    fixations : sequence of (yaw_deg, pitch_deg, duration_s)
        Where the eye rests and for how long; a main-sequence saccade joins consecutive fixations. The
        first fixation starts at t = 0; the script may end before or after the last sample.
    t : (N,) float64
        Increasing sample times.

    Returns
    -------
    vectors : (N, 3) float64
        True unit vectors; after the script's end the eye stays at its last fixation.
    sampled : tuple of Fixation
        Each fixation that holds at least one sample, with onset/offset at its first/last sample time.
    """
    script = np.asarray(fixations, dtype=np.float64).reshape(-1, 3)
    centres = unit_vectors(script[:, 0], script[:, 1])
    amplitudes = angular_distance_deg(centres[:-1], centres[1:])
    saccades = saccade_duration_s(amplitudes)
    starts = np.concatenate([[0.0], np.cumsum(script[:-1, 2] + saccades)])
    ends = starts + script[:, 2]
    # boundaries s0 e0 s1 e1 ...: an even interval is fixation k, an odd one the saccade from k to k + 1
    boundaries = np.ravel(np.column_stack([starts, ends]))
    interval = np.clip(np.searchsorted(boundaries, t, side="right") - 1, 0, boundaries.size - 1)
    k = interval // 2
    vectors = centres[k].copy()
    moving = (interval % 2 == 1) & (k < len(script) - 1)
    if moving.any():
        km = k[moving]
        progress = (t[moving] - ends[km]) / saccades[km]
        vectors[moving] = _slerp(centres[km], centres[km + 1], _minimum_jerk(np.clip(progress, 0.0, 1.0)))
    sampled = []
    for index, (start, end) in enumerate(zip(starts, ends)):
        inside = t[(t >= start) & (t <= end)] if index < len(script) - 1 else t[t >= start]
        if inside.size:
            sampled.append(Fixation(float(inside[0]), float(inside[-1]), float(script[index, 0]), float(script[index, 1])))
    return vectors, tuple(sampled)


def scripted_scanpath(
    fixations: Sequence[tuple[float, float, float]],
    rng: np.random.Generator,
    *,
    duration_s: float | None = None,
    tracker: TrackerModel = TrackerModel(),
) -> GazeSamples:
    """A tracker's recording of a scripted scanpath (see :func:`eye_path`), for ``duration_s`` seconds.

    ``duration_s`` defaults to the script's own length (its fixations and saccades).
    """
    script = np.asarray(fixations, dtype=np.float64).reshape(-1, 3)
    if script.size == 0:
        raise ValueError("scripted_scanpath: the script holds no fixation")
    if duration_s is None:
        centres = unit_vectors(script[:, 0], script[:, 1])
        duration_s = float(script[:, 2].sum() + saccade_duration_s(angular_distance_deg(centres[:-1], centres[1:])).sum())
    t = tracker.sample_times(rng, duration_s)
    true, sampled = eye_path(script, t)
    measured, valid = tracker.measure(rng, t, true)
    yaw, pitch = yaw_pitch(measured)
    true_yaw, true_pitch = yaw_pitch(true)
    return GazeSamples(
        t=t,
        yaw_deg=np.where(valid, yaw, np.nan),
        pitch_deg=np.where(valid, pitch, np.nan),
        valid=valid,
        true_yaw_deg=true_yaw,
        true_pitch_deg=true_pitch,
        fixations=sampled,
    )


@dataclass(frozen=True)
class TargetRegion:
    """A region the simulated eye is drawn to (e.g. a masked object on the equirect), as weighted directions."""

    name: str
    yaw_deg: np.ndarray
    pitch_deg: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_equirect(cls, name: str, coverage: np.ndarray) -> TargetRegion:
        """The region covered by an equirect mask ``(H, W)`` (bool or coverage in [0, 1]).

        Pixels are weighted by coverage × solid angle, so a point drawn from the region is uniform on the
        sphere, not denser near the poles as equirect pixels are.
        """
        coverage = np.asarray(coverage, dtype=np.float64)
        if coverage.ndim != 2 or not (coverage > 0).any():
            raise ValueError(f"target region '{name}': needs a non-empty (H, W) mask, got shape {coverage.shape}")
        height, width = coverage.shape
        longitude, latitude = pixel_centres(height, width)
        rows, cols = np.nonzero(coverage > 0)
        weights = coverage[rows, cols] * pixel_solid_angles(height, width)[rows]
        return cls(name, longitude[cols], latitude[rows], weights / weights.sum())

    def draw(self, rng: np.random.Generator) -> tuple[float, float]:
        index = rng.choice(self.weights.size, p=self.weights)
        return float(self.yaw_deg[index]), float(self.pitch_deg[index])


@dataclass(frozen=True)
class ViewingModel:
    """Where and for how long a free-viewing eye fixates.

    Parameters
    ----------
    fixation_s : (float, float)
        Median and log-SD of the lognormal fixation duration.
    min_fixation_s : float
        Shortest fixation drawn (shorter ones are redrawn at this length).
    amplitude_deg : (float, float)
        Shape and scale of the gamma-distributed saccade amplitude (mean 1.6 × 8 = 12.8°).
    min_amplitude_deg : float
        Smallest saccade (smaller gaze shifts are not saccades a detector should be asked to find).
    vertical_share : float
        How much of a saccade's direction is vertical relative to horizontal (360° viewing is mostly
        horizontal, near the horizon).
    target_pull : float
        Probability that a fixation goes to one of the target regions instead of a free-viewing step.
    """

    fixation_s: tuple[float, float] = (0.25, 0.4)
    min_fixation_s: float = 0.1
    amplitude_deg: tuple[float, float] = (1.6, 8.0)
    min_amplitude_deg: float = 2.5
    vertical_share: float = 0.5
    target_pull: float = 0.0

    def script(
        self,
        rng: np.random.Generator,
        duration_s: float,
        *,
        start: tuple[float, float] = (0.0, 0.0),
        targets: Sequence[TargetRegion] = (),
    ) -> list[tuple[float, float, float]]:
        """A fixation script ``[(yaw_deg, pitch_deg, duration_s), ...]`` long enough to fill ``duration_s``."""
        script: list[tuple[float, float, float]] = []
        yaw, pitch = start
        elapsed = 0.0
        while elapsed < duration_s:
            duration = max(self.min_fixation_s, float(rng.lognormal(np.log(self.fixation_s[0]), self.fixation_s[1])))
            script.append((yaw, pitch, duration))
            if targets and rng.random() < self.target_pull:
                # each object equally likely, whatever its size: people look at objects, not at areas
                next_yaw, next_pitch = targets[rng.integers(len(targets))].draw(rng)
            else:
                next_yaw, next_pitch = self._step(rng, yaw, pitch)
            here, there = unit_vectors(yaw, pitch), unit_vectors(next_yaw, next_pitch)
            amplitude = float(angular_distance_deg(here, there))
            if amplitude < self.min_amplitude_deg:
                # a target point right next to the eye: look a little further instead of a micro-saccade
                next_yaw, next_pitch = self._step(rng, yaw, pitch)
                amplitude = float(angular_distance_deg(here, unit_vectors(next_yaw, next_pitch)))
            elapsed += duration + float(saccade_duration_s(amplitude))
            yaw, pitch = next_yaw, next_pitch
        return script

    def _step(self, rng: np.random.Generator, yaw: float, pitch: float) -> tuple[float, float]:
        amplitude = max(self.min_amplitude_deg, float(rng.gamma(*self.amplitude_deg)))
        bearing = rng.uniform(0.0, 2.0 * np.pi)
        right, up = np.cos(bearing), self.vertical_share * np.sin(bearing)
        # back towards the horizon more often the further the eye is from it
        if rng.random() < abs(pitch) / 90.0:
            up = -np.sign(pitch) * abs(up)
        norm = np.hypot(right, up)
        moved = tangent_offset(unit_vectors(yaw, pitch), amplitude * right / norm, amplitude * up / norm)
        new_yaw, new_pitch = yaw_pitch(moved)
        return float(wrap_yaw(new_yaw)), float(np.clip(new_pitch, -80.0, 80.0))


def random_scanpath(
    rng: np.random.Generator,
    duration_s: float,
    *,
    viewing: ViewingModel = ViewingModel(),
    tracker: TrackerModel = TrackerModel(),
    start: tuple[float, float] = (0.0, 0.0),
    targets: Sequence[TargetRegion] = (),
) -> GazeSamples:
    """A free-viewing recording of ``duration_s`` seconds: a drawn fixation script, sampled by ``tracker``."""
    script = viewing.script(rng, duration_s, start=start, targets=targets)
    return scripted_scanpath(script, rng, duration_s=duration_s, tracker=tracker)


def trial_gaze(
    seed: int,
    participant_code: str,
    trial_index: int,
    exposure_s: float,
    *,
    viewing: ViewingModel = ViewingModel(),
    tracker: TrackerModel = TrackerModel(),
    targets: Sequence[TargetRegion] = (),
) -> GazeSamples:
    """The synthetic gaze of one participant viewing one stimulus, seeded by (seed, participant, trial).

    Like :func:`study.driver.scripted_head_motion`, it depends only on its arguments, so a resumed session
    records the same gaze as an uninterrupted one. The first fixation is at a random yaw on the horizon;
    :meth:`GazeSamples.head_poses` gives head poses that go with it.
    """
    rng = keyed_rng(seed, participant_code, trial_index, "gaze")
    start = (float(rng.uniform(-180.0, 180.0)), float(rng.normal(0.0, 5.0)))
    return random_scanpath(rng, exposure_s, viewing=viewing, tracker=tracker, start=start, targets=targets)


@dataclass(frozen=True)
class ValidationRecording:
    """Synthetic gaze of a validation step: samples with the target each was recorded for.

    ``samples.t`` is the time since that target appeared; ``target`` the target's index in ``targets``.
    """

    targets: tuple[tuple[float, float], ...]
    target: np.ndarray
    samples: GazeSamples = field(repr=False)


def validation_gaze(
    targets: Sequence[Sequence[float]],
    rng: np.random.Generator,
    *,
    target_s: float = DEFAULT_TARGET_S,
    latency_s: tuple[float, float] = (0.15, 0.35),
    tracker: TrackerModel = TrackerModel(),
) -> ValidationRecording:
    """What a tracker records while the participant looks at each target in turn for ``target_s`` seconds.

    After a reaction time drawn from ``latency_s`` the eye makes a main-sequence saccade from the previous
    target (the first from straight ahead) and then rests on the target's exact direction; the tracker adds
    its bias, noise and losses. Raises :class:`study.errors.ProtocolError` for a target outside ±90°.
    """
    checked = check_targets(targets)
    parts, indices = [], []
    previous = (0.0, 0.0)
    for index, (yaw, pitch) in enumerate(checked):
        latency = float(rng.uniform(*latency_s))
        script = [(previous[0], previous[1], latency), (yaw, pitch, target_s)]
        parts.append(scripted_scanpath(script, rng, duration_s=target_s, tracker=tracker))
        indices.append(np.full(parts[-1].t.size, index))
        previous = (yaw, pitch)
    joined = {
        name: np.concatenate([getattr(part, name) for part in parts])
        for name in ("t", "yaw_deg", "pitch_deg", "valid", "true_yaw_deg", "true_pitch_deg")
    }
    fixations = tuple(part.fixations[-1] for part in parts)
    return ValidationRecording(checked, np.concatenate(indices), GazeSamples(**joined, fixations=fixations))
