"""A scripted participant: runs a session without a viewer, from an answer file or a seeded rater model.

Answers depend only on (seed, participant, step key), never on how far a process got, so a session that
is killed and resumed records exactly the answers an uninterrupted run would. Times are simulated: a
virtual clock advances by the exposure, response and break durations, starting no earlier than the
session's last stored time, so the stored timeline stays monotonic across resumes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np

from study.engine import AGREE, SessionEngine, Step
from study.errors import SessionError
from study.protocol import Protocol


def keyed_rng(*parts: object) -> np.random.Generator:
    """A generator seeded from the parts' text through SHA-256 (stable across runs and platforms)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def rating_scale_of(step: Step) -> tuple[str, str]:
    """(scale id, item id) of a rating step, from its key ``trial/<index>/<scale>/<item>``."""
    _, _, scale, item = step.key.split("/", 3)
    return scale, item


class AnswerSource(TypingProtocol):
    """Where a scripted participant's answers come from."""

    def value(self, participant_code: str, step: Step) -> int:
        """The answer to a rating or SSQ step."""

    def response_time_s(self, participant_code: str, step: Step) -> float:
        """How long the participant takes to answer."""


@dataclass(frozen=True)
class RaterModel:
    """A seeded simulated rater population.

    A rating is ``round(clip(q[scene, scale] + d[scene, scale, item] + b_p + e, min, max))``, with the
    scene's true quality ``q`` (given, or drawn once per study from the seed), a small item offset
    ``d ~ N(0, 0.25)``, the participant's bias ``b_p ~ N(0, bias_sd)`` and their inconsistency
    ``e ~ N(0, s_p)``, ``s_p ~ U(inconsistency)``. SSQ symptoms are mostly 0, a little more often
    1–2 after the trials.

    Parameters
    ----------
    seed : int
        Seeds everything; the same seed gives the same answers.
    scene_quality : mapping, optional
        ``{scene: {scale_id: quality}}`` in scale units; missing entries are drawn from the seed.
    bias_sd : float
        Standard deviation of the participants' biases, in scale units.
    inconsistency : (float, float)
        Range of the participants' noise standard deviations.
    """

    seed: int
    scene_quality: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    bias_sd: float = 0.4
    inconsistency: tuple[float, float] = (0.3, 0.9)

    def true_quality(self, scene: str, scale_id: str, low: int, high: int) -> float:
        """The scene's true quality on a scale (given, or drawn from the seed within the scale)."""
        given = self.scene_quality.get(scene, {}).get(scale_id)
        if given is not None:
            return float(given)
        span = high - low
        return float(keyed_rng(self.seed, "quality", scene, scale_id).uniform(low + 0.3 * span, high - 0.1 * span))

    def item_offset(self, scene: str, scale_id: str, item_id: str) -> float:
        """The fixed offset ``d`` of one item of a scale in a scene (the same for every participant)."""
        return float(keyed_rng(self.seed, "item", scene, scale_id, item_id).normal(0.0, 0.25))

    def participant(self, participant_code: str) -> tuple[float, float]:
        """(bias, noise standard deviation) of a participant."""
        rng = keyed_rng(self.seed, "rater", participant_code)
        return float(rng.normal(0.0, self.bias_sd)), float(rng.uniform(*self.inconsistency))

    def value(self, participant_code: str, step: Step) -> int:
        rng = keyed_rng(self.seed, participant_code, step.key)
        if step.kind == "ssq":
            after = step.key.startswith("ssq/post/")
            probabilities = [0.7, 0.22, 0.08, 0.0] if after else [0.85, 0.13, 0.02, 0.0]
            return int(rng.choice(np.arange(step.min_value, step.min_value + 4), p=probabilities))
        scale, item = rating_scale_of(step)
        bias, noise = self.participant(participant_code)
        raw = (self.true_quality(step.scene, scale, step.min_value, step.max_value)
               + self.item_offset(step.scene, scale, item) + bias + rng.normal(0.0, noise))
        return int(np.clip(np.rint(raw), step.min_value, step.max_value))

    def response_time_s(self, participant_code: str, step: Step) -> float:
        return float(keyed_rng(self.seed, participant_code, step.key, "rt").lognormal(np.log(1.8), 0.4))


#: Longest plausible response time in an answer file (seconds).
MAX_RESPONSE_TIME_S = 3600.0
#: Longest pause ``--pace`` may ask for before each step (seconds).
MAX_PACE_S = 60.0
_RATING_KEY = re.compile(r"trial/(\d+)/([^/]+)/([^/]+)")
_SSQ_KEY = re.compile(r"ssq/(pre|post)/(\d+)")


@dataclass(frozen=True)
class ReplayAnswers:
    """Answers read from a file, by step key.

    A CSV file has a header with ``key`` and ``value`` (and optionally ``response_time_s``); a JSON file
    is ``{"<key>": value, ...}`` or a list of ``{"key": ..., "value": ..., "response_time_s": ...}``.
    Values are integers, response times finite seconds in 0..3600, each key once. :meth:`check` compares
    the keys and values with a protocol before a session is written.
    """

    source: str
    values: Mapping[str, int]
    response_times: Mapping[str, float]
    rows: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayAnswers:
        """Reads an answer file.

        Raises
        ------
        SessionError
            Naming the file (and row) if it cannot be read, holds no answers, repeats a key, a value is not
            an integer or a response time is not a finite number of seconds in 0..3600.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SessionError(f"{path}: cannot read the answer file ({exc}); check the --driver path") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SessionError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
            except RecursionError:
                raise SessionError(f"{path}: the JSON is nested too deeply; write an object or a list of rows") from None
            rows = [{"key": k, "value": v} for k, v in data.items()] if isinstance(data, dict) else data
        elif path.suffix.lower() == ".csv":
            try:
                rows = list(csv.DictReader(text.splitlines()))
            except csv.Error as exc:
                raise SessionError(f"{path}: invalid CSV ({exc}); write a header 'key,value' and one row per answer") from None
        else:
            raise SessionError(f"{path}: answer files are .csv or .json, got '{path.suffix}'")
        if not isinstance(rows, list):
            raise SessionError(f"{path}: expected an object or a list of {{key, value}} rows")
        if not rows:
            raise SessionError(f"{path}: the answer file holds no answers; add one row per step (key, value)")
        values, times, numbers = {}, {}, {}
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or "key" not in row or "value" not in row:
                raise SessionError(f"{path}: row {number} needs 'key' and 'value'")
            key = str(row["key"])
            if key in numbers:
                raise SessionError(f"{path}: row {number}: key '{key}' was given in row {numbers[key]} already; keep one")
            numbers[key] = number
            values[key] = _integer(row["value"], f"{path}: row {number} ({key})")
            if row.get("response_time_s") not in (None, ""):
                times[key] = _seconds(row["response_time_s"], f"{path}: row {number} ({key})")
        return cls(str(path), values, times, numbers)

    def check(self, protocol: Protocol) -> None:
        """Refuses keys the protocol has no step for and values outside their scale, naming the row.

        Raises
        ------
        SessionError
            ``<file>: row <n> (<key>): ...`` for the first problem.
        """
        ssq_values = range(min(protocol.ssq.labels), max(protocol.ssq.labels) + 1)
        for key, value in self.values.items():
            where = f"{self.source}: row {self.rows.get(key, '?')} ({key})"
            if (rating := _RATING_KEY.fullmatch(key)) is not None:
                scale = next((s for s in protocol.scales if s.id == rating.group(2)), None)
                if scale is None or rating.group(3) not in {item.id for item in scale.items}:
                    known = ", ".join(f"{s.id}/{i.id}" for s in protocol.scales for i in s.items)
                    raise SessionError(f"{where}: the protocol has no scale item '{rating.group(2)}/{rating.group(3)}'; use one of {known}")
                allowed = range(scale.min, scale.max + 1)
            elif (ssq := _SSQ_KEY.fullmatch(key)) is not None:
                if not 1 <= int(ssq.group(2)) <= len(protocol.ssq.items):
                    raise SessionError(f"{where}: the SSQ has items 1..{len(protocol.ssq.items)}; fix the key")
                allowed = ssq_values
            else:
                raise SessionError(
                    f"{where}: not the key of a rating or SSQ step; use trial/<index>/<scale>/<item> or ssq/pre|post/<n>"
                )
            if value not in allowed:
                raise SessionError(
                    f"{where}: value {value} is out of the scale's range {allowed.start}..{allowed.stop - 1}; fix the value"
                )

    def value(self, participant_code: str, step: Step) -> int:
        if step.key not in self.values:
            raise SessionError(f"{self.source}: no answer for step '{step.key}'; add a row with key '{step.key}'")
        return self.values[step.key]

    def response_time_s(self, participant_code: str, step: Step) -> float:
        return self.response_times.get(step.key, 1.5)


def _integer(raw: object, where: str) -> int:
    """An answer value: a JSON integer or the text of one; never a float truncated, a boolean, inf or nan."""
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise SessionError(f"{where}: value {raw!r} is not an integer; write the chosen scale value, e.g. 3")


def _seconds(raw: object, where: str) -> float:
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(raw, bool) or not 0.0 <= seconds <= MAX_RESPONSE_TIME_S:
        raise SessionError(
            f"{where}: response_time_s {raw!r} is not a time in 0..{MAX_RESPONSE_TIME_S:g} s; write the seconds the answer took"
        )
    return seconds


def scripted_head_motion(
    seed: int, participant_code: str, trial_index: int, exposure_s: float, rate_hz: float
) -> list[tuple[float, float, float, float]]:
    """Head poses ``(t_s, yaw_deg, pitch_deg, roll_deg)`` of a participant looking around one stimulus.

    The yaw sweeps sinusoidally around a random starting direction (wrapped to [-180, 180)), the pitch
    stays near the horizon and the roll near zero, with small seeded jitter.
    """
    rng = keyed_rng(seed, participant_code, trial_index, "head")
    t = np.arange(0.0, exposure_s, 1.0 / rate_hz)
    start = rng.uniform(-180.0, 180.0)
    sweep = rng.uniform(40.0, 120.0)
    period = rng.uniform(6.0, 14.0)
    yaw = (start + sweep * np.sin(2 * np.pi * t / period) + rng.normal(0, 1.5, t.size) + 180.0) % 360.0 - 180.0
    pitch = np.clip(rng.normal(0.0, 8.0) + 10.0 * np.sin(2 * np.pi * t / (1.7 * period)) + rng.normal(0, 1.0, t.size), -89, 89)
    roll = rng.normal(0.0, 1.0, t.size)
    return list(zip(t.tolist(), yaw.tolist(), pitch.tolist(), roll.tolist()))


class ScriptedDriver:
    """Answers every step of a session on its own.

    Parameters
    ----------
    answers : AnswerSource
        A :class:`RaterModel` or :class:`ReplayAnswers`.
    motion_seed : int
        Seed of the scripted head motion recorded during each stimulus.
    pace_s : float
        Real seconds to sleep before each step (lets a test kill the process mid-session).
    consent : int
        The answer to a consent step: ``study.engine.AGREE`` (1) or ``DECLINE`` (0).
    """

    def __init__(self, answers: AnswerSource, *, motion_seed: int = 0, pace_s: float = 0.0, consent: int = AGREE):
        if isinstance(pace_s, bool) or not 0.0 <= pace_s <= MAX_PACE_S:  # also refuses nan
            raise SessionError(f"--pace {pace_s}: must be a number of seconds in 0..{MAX_PACE_S:g}")
        self.answers = answers
        self.motion_seed = motion_seed
        self.pace_s = pace_s
        self.consent = consent

    def check(self, protocol: Protocol) -> None:
        """Refuses, before a session is written, an answer file whose keys or values the protocol cannot take."""
        if isinstance(self.answers, ReplayAnswers):
            self.answers.check(protocol)

    def response(self, participant_code: str, step: Step) -> tuple[int | None, float]:
        """(value, seconds the step stays on screen) for one step."""
        if step.kind in ("rating", "ssq"):
            return self.answers.value(participant_code, step), self.answers.response_time_s(participant_code, step)
        if step.kind == "consent":
            return self.consent, 6.0
        if step.kind == "stimulus":
            return None, step.exposure_s
        if step.kind == "break":
            return None, step.min_duration_s
        return None, 4.0

    def run(
        self, engine: SessionEngine, *, max_steps: int | None = None, on_step: Callable[[Step], None] | None = None
    ) -> int:
        """Answers steps until the session is done (or ``max_steps``); returns how many were submitted."""
        clock = max(datetime.now(timezone.utc), engine.last_activity() or datetime.min.replace(tzinfo=timezone.utc))
        step = engine.current()
        submitted = 0
        while step.kind != "done" and (max_steps is None or submitted < max_steps):
            if self.pace_s:
                time.sleep(self.pace_s)
            value, duration_s = self.response(engine.participant_code, step)
            shown_at, clock = clock, clock + timedelta(seconds=duration_s)
            if step.kind == "validation":
                # no viewer, so no eye tracker: the step passes, and the session says why it has no validation
                engine.record_event("validation_skipped", {"reason": "no viewer and no eye tracker (--backend none)"})
            if step.kind == "stimulus":
                engine.record_poses(
                    step.trial_index,
                    scripted_head_motion(self.motion_seed, engine.participant_code, step.trial_index, duration_s, engine.pose_rate_hz),
                )
            step = engine.submit(step.key, value, shown_at=shown_at, answered_at=clock)
            submitted += 1
            if on_step is not None:
                on_step(step)
        return submitted
