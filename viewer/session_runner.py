"""Runs a participant's session in a viewer backend by driving the study engine.

For every engine step: a stimulus fades in from neutral grey, stays for the protocol's exposure time
while head poses are sampled, and fades out; every other step (instructions, SSQ items, ratings,
breaks) is the rating panel over grey. Each answer is submitted (and committed by the engine) before
the next step appears. From the moment a stimulus appears, the next ones decode in a background
process and upload a strip per frame, so a switch never stalls the display.

A scripted driver (``study.driver.ScriptedDriver``) can answer instead of a person; the headless
backend needs one and then runs on a simulated clock, so a 20-minute session takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

import numpy as np

from study.errors import SessionError
from viewer.backends.base import Backend, Frame, FrameInput, InputEvent, backend_class
from viewer.camera import view_rotation, yaw_pitch_roll
from viewer.panel import Panel
from viewer.pose import PoseLogger

#: Seconds of each fade between grey and a stimulus.
FADE_S = 0.5
#: Display refresh of the HTC VIVE Pro Eye; frame times above its period are counted per trial.
DISPLAY_HZ = 90.0


class SessionDriver(Protocol):
    """What the runner needs of a scripted participant (``study.driver.ScriptedDriver`` fits)."""

    motion_seed: int

    def response(self, participant_code: str, step) -> tuple[int | None, float]:
        """(value or None, seconds the step stays on screen) for one step."""


class _RealClock:
    def __init__(self):
        self._t0 = time.perf_counter()
        self._utc0 = datetime.now(timezone.utc)

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def utc(self, t_s: float) -> datetime:
        return self._utc0 + timedelta(seconds=t_s)

    def tick(self) -> None:
        """Real time passes by itself."""


class _SimulatedClock(_RealClock):
    """Advances one frame period per frame, starting at the session's last stored time."""

    def __init__(self, frame_s: float, start: datetime):
        self._t = 0.0
        self._frame_s = frame_s
        self._utc0 = start

    def now(self) -> float:
        return self._t

    def tick(self) -> None:
        self._t += self._frame_s


@dataclass(frozen=True)
class SessionSummary:
    """What :func:`run_session` did."""

    submitted: int          # steps answered in this run
    completed: bool         # the session reached its "done" step
    frames: int
    interrupted: str | None = None   # why the run stopped early (the operator, the runtime), if it did


class _Interrupted(Exception):
    """The person at the keyboard quit (Escape / window closed) or the VR runtime went away; the session
    can be resumed. The message says which."""


class SessionRunner:
    """One run of a session in an open backend; see :func:`run_session`."""

    def __init__(self, engine, backend: Backend, *, driver: SessionDriver | None, frame_hz: float, preload: int):
        self.engine = engine
        self.backend = backend
        self.driver = driver
        self.preload = preload
        self.poses = PoseLogger(engine.pose_rate_hz)
        if backend.capabilities.paced or driver is None:
            self.clock = _RealClock()
        else:
            start = max(datetime.now(timezone.utc), engine.last_activity() or datetime.min.replace(tzinfo=timezone.utc))
            self.clock = _SimulatedClock(1.0 / frame_hz, start)
        # A tracked headset's pose is the truth, also when a script answers for the participant.
        self.scripted_head = driver is not None and not backend.capabilities.head_tracking
        self.head = np.eye(3)
        self.head_time_ns: int | None = None
        # In a tracked headset the eyes are ~1.7 m above the tracking origin: the panel hangs ahead of them.
        self.head_position = np.zeros(3)
        self.frames = 0
        self._frame_times: list[float] = []
        self._last_frame: float | None = None

    # -- frames ------------------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> FrameInput:
        """Polls input, advances uploads, draws; the head used is the scripted one if any."""
        user = self.backend.poll_input()
        for event in user.events:
            if event.kind == "quit":
                raise _Interrupted(event.key or "the operator quit (Escape or window closed)")
        if frame.head is None:
            self.head = user.head
            self.head_time_ns = user.runtime_time_ns
        if user.head_position is not None:
            self.head_position = user.head_position
        self.backend.renderer.stimuli.update()
        self.backend.draw(frame)
        self.clock.tick()
        self.frames += 1
        now = time.perf_counter()
        if self._last_frame is not None:
            self._frame_times.append(now - self._last_frame)
        self._last_frame = now
        return user

    def _timing_event(self, trial_index: int) -> None:
        times = np.array(self._frame_times) * 1000.0
        detail: dict[str, object] = {"trial_index": trial_index, "backend": self.backend.name, "frames": int(times.size)}
        if times.size:
            detail.update(
                mean_ms=round(float(times.mean()), 3), p99_ms=round(float(np.percentile(times, 99)), 3),
                max_ms=round(float(times.max()), 3), over_budget=int((times > 1000.0 / DISPLAY_HZ).sum()),
            )
        detail.update(self.backend.timing_stats())
        self.engine.record_event("frame_timing", detail)
        self._frame_times = []

    # -- steps -------------------------------------------------------------------------------------------

    def _scripted_motion(self, step) -> np.ndarray | None:
        if not self.scripted_head:
            return None
        from study.driver import scripted_head_motion

        return np.array(scripted_head_motion(
            self.driver.motion_seed, self.engine.participant_code, step.trial_index, step.exposure_s, self.engine.pose_rate_hz
        ))

    def _prepare(self, step) -> None:
        """Decodes, most urgent first, the stimulus ``step`` shows (if any) and the next ``preload`` ones;
        a stimulus already shown gives up its texture slot."""
        current = [step.stimulus_path] if step.kind == "stimulus" else []
        self.backend.renderer.stimuli.want(current + self.engine.upcoming_stimuli(self.preload))

    def _stimulus(self, step):
        stimuli = self.backend.renderer.stimuli
        self._prepare(step)
        # _last_frame carries over: a wait for this stimulus shows up as its first frame time
        self._frame_times = []
        self.backend.timing_stats()   # restarts the display's counts, so they cover this trial's frames only
        texture = stimuli.get(step.stimulus_path, block=self.preload == 0)
        while texture is None:
            stimuli.hurry(step.stimulus_path)
            self._frame(Frame(stimulus=None, fade=1.0, head=self._scripted_head(None, 0.0)))
            texture = stimuli.get(step.stimulus_path)
        stimuli.show(step.stimulus_path)
        motion = self._scripted_motion(step)
        self.backend.fade_to_grey(FADE_S, grey=False)
        t0 = self.clock.now()
        while (t := self.clock.now() - t0) < FADE_S:
            self._frame(Frame(stimulus=texture, fade=1.0 - t / FADE_S, head=self._scripted_head(motion, 0.0)))
        shown_s = self.clock.now()
        self.poses.reset()
        while (t := self.clock.now() - shown_s) < step.exposure_s:
            head = self._scripted_head(motion, t)
            self._frame(Frame(stimulus=texture, head=head))
            if head is None:
                self.poses.offer(t, self.head, runtime_time_ns=self.head_time_ns)
            else:
                self.poses.offer(t, head)
        ended_s = self.clock.now()
        self.backend.fade_to_grey(FADE_S, grey=True)
        while (t := self.clock.now() - ended_s) < FADE_S:
            self._frame(Frame(stimulus=texture, fade=t / FADE_S, head=self._scripted_head(motion, step.exposure_s)))
        # The eye buffers are grey now. A compositor's grey is drawn over everything, the panels that
        # follow included, so it is lifted here; it has covered the switch itself.
        self.backend.fade_to_grey(0.0, grey=False)
        stimuli.show(None)
        # Poses first: if the process dies before the submit, resume discards them with the exposure.
        self.poses.flush(self.engine, step.trial_index)
        shown_at = self.clock.utc(shown_s)
        following = self.engine.submit(step.key, None, shown_at=shown_at, answered_at=shown_at + timedelta(seconds=ended_s - shown_s))
        self._timing_event(step.trial_index)
        self._prepare(following)
        return following

    def _scripted_head(self, motion: np.ndarray | None, t_s: float) -> np.ndarray | None:
        if not self.scripted_head:
            return None
        if motion is None or not len(motion):
            return self.head
        # the script's pose in effect at t_s; the epsilon absorbs the rounding of summed frame times
        index = int(np.searchsorted(motion[:, 0], t_s + 1e-9, side="right")) - 1
        row = motion[min(max(index, 0), len(motion) - 1)]
        self.head = view_rotation(row[1], row[2], row[3])
        return self.head

    def _panel(self, step):
        yaw = yaw_pitch_roll(self.head)[0]
        t0 = self.clock.now()
        panel = Panel(step, shown_at_s=t0, yaw_deg=yaw, eye_position=self.head_position)
        scripted: list[InputEvent] = []
        answer_at = None
        if self.driver is not None:
            value, duration_s = self.driver.response(self.engine.participant_code, step)
            answer_at = t0 + duration_s
            scripted = ([InputEvent("key", str(value))] if value is not None else []) + [InputEvent("key", "enter")]
        while True:
            now = self.clock.now()
            events: tuple[InputEvent, ...] = ()
            if answer_at is not None and now >= answer_at:
                # sent again every frame until the panel takes them (a break may need one more frame)
                events = tuple(scripted)
            user = self._frame(Frame(stimulus=None, fade=1.0, panel=panel.quad(now), head=self._scripted_head(None, 0.0)))
            panel.hover(user.pointer)
            for event in user.events + events:
                result, changed = panel.handle(event, now)
                if changed:
                    self.backend.tick()
                if result is not None:
                    shown_at = self.clock.utc(t0)
                    return self.engine.submit(
                        step.key, result.value, shown_at=shown_at, answered_at=shown_at + timedelta(seconds=now - t0)
                    )

    def run(self, on_step=None) -> SessionSummary:
        submitted = 0
        step = self.engine.current()
        described = self.backend.describe()
        if described:
            self.engine.record_event("backend", {"backend": self.backend.name, **described})
        self._prepare(step)
        try:
            # one grey frame first, so the first panel knows where the head is
            self._frame(Frame(stimulus=None, fade=1.0, head=self._scripted_head(None, 0.0)))
            while step.kind != "done":
                step = self._stimulus(step) if step.kind == "stimulus" else self._panel(step)
                submitted += 1
                if on_step is not None:
                    on_step(step)
        except _Interrupted as stop:
            reason = str(stop)
            self.engine.record_event("interrupted", {"at_step": step.key, "backend": self.backend.name, "reason": reason})
            return SessionSummary(submitted, False, self.frames, interrupted=reason)
        return SessionSummary(submitted, step.kind == "done", self.frames)


def run_session(engine, backend: str | Backend, *, driver: SessionDriver | None = None, frame_hz: float = 30.0,
                preload: int = 2, on_step=None) -> SessionSummary:
    """Runs (or continues) a participant's session until it is done or the operator quits.

    Parameters
    ----------
    engine : study.engine.SessionEngine
        Driven only through ``current``, ``submit``, ``upcoming_stimuli``, ``record_poses`` and
        ``record_event``.
    backend : str or Backend
        A registered name ("headless", "desktop", "openvr", "openxr") or a backend instance (not yet opened).
    driver : SessionDriver, optional
        Answers and head motion of a scripted participant; required by the headless backend, which
        then runs on a simulated clock of ``frame_hz`` frames per second.
    frame_hz : float
        Frame rate of the simulated clock (ignored by display-paced backends).
    preload : int
        How many upcoming stimuli decode and upload in the background; 0 loads each stimulus when it
        is due, stalling the display (a baseline for benchmarks).
    on_step : callable, optional
        Called with every next step after a submit (progress display).

    Raises
    ------
    BackendUnavailable
        If the backend cannot run here (exit code 2 in the CLI); raised by its ``open``.
    SessionError
        If the headless backend has no driver.
    """
    if isinstance(backend, str):
        cls = backend_class(backend)
        if cls.capabilities.returns_pixels and driver is None:
            raise SessionError(f"--backend {backend} has nobody to answer; pass --driver FILE or --simulate SEED")
        backend = cls()
    elif not backend.capabilities.paced and driver is None:
        raise SessionError(f"backend {backend.name!r} has nobody to answer; pass a scripted driver")
    with backend:
        return SessionRunner(engine, backend, driver=driver, frame_hz=frame_hz, preload=preload).run(on_step)
