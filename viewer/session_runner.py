"""Runs a participant's session in a viewer backend by driving the study engine.

For every engine step: a stimulus fades in from neutral grey, stays for the protocol's exposure time
while head poses are sampled at exactly the protocol's rate (:mod:`viewer.pose`), and fades out; every
other step (consent, instructions, SSQ items, ratings, breaks) is a panel over grey. Each answer is
submitted (and committed by the engine) before the next step appears. From the moment a stimulus
appears, the next ones decode in a background process and upload a strip per frame, so a switch never
stalls the display.

Every stimulus starts the same way: straight ahead is its start yaw (the protocol's, default 0) and
the desktop's field of view is the protocol's; panels have a fixed view of their own.

Where the backend has an eye tracker (``viewer.gaze``), it records during every stimulus too, at its own
sample times, and the samples are stored with the poses, in the stimulus frame. The protocol's validation
step shows its targets one after another on grey and stores accuracy, precision and data loss; above the
protocol's threshold the console says "recalibrate" and the experimenter repeats the step or goes on.
Without an eye tracker the session says so (a ``gaze`` event, the console) and records head poses only.

The experimenter's console (:mod:`viewer.console_link`) may pause (the participant sees the "paused"
panel; a stimulus interrupted by it is shown again from its start, its partial poses kept and flagged),
resume (after a "ready?" panel), insert a break, or abort with a reason (resumable or withdrawn). Escape
in the participant's window asks the participant's window for confirmation first; a runtime that goes
away stops the run at once. Every control is an event in the store.

A scripted driver (``study.driver.ScriptedDriver``) can answer instead of a person; the headless
backend needs one and then runs on a simulated clock, so a 20-minute session takes seconds.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

import numpy as np

from study.errors import SessionError
from viewer.backends.base import Backend, Frame, FrameInput, HeadSample, InputEvent, backend_class
from viewer.camera import view_rotation, yaw_pitch_roll
from viewer.gaze import GazeShowing, gaze_records, world_directions
from viewer.panel import Panel, PanelContent, content_for_step, message_content
from viewer.pose import PoseSampler, TimedSample, due_times, rate_report

#: Seconds of each fade between grey and a stimulus.
FADE_S = 0.5
#: Display refresh of the HTC VIVE Pro Eye; frame times above its period are counted per trial.
DISPLAY_HZ = 90.0
#: Seconds a scripted participant takes to continue the session's own panels (ready, thank-you).
SCRIPTED_MESSAGE_S = 0.5
#: Horizontal field of view of the desktop's fixed panel view: the 1.2 m panel at 1.5 m (43.6°) fills
#: about 85 % of the window's width.
PANEL_VIEW_FOV_DEG = 52.0


class SessionDriver(Protocol):
    """What the runner needs of a scripted participant (``study.driver.ScriptedDriver`` fits)."""

    motion_seed: int

    def response(self, participant_code: str, step) -> tuple[int | None, float]:
        """(value or None, seconds the step stays on screen) for one step."""


class _RealClock:
    def __init__(self):
        self._t0_ns = time.monotonic_ns()
        self._utc0 = datetime.now(timezone.utc)

    def now(self) -> float:
        return (time.monotonic_ns() - self._t0_ns) / 1e9

    def monotonic_ns(self, t_s: float) -> int:
        return self._t0_ns + round(t_s * 1e9)

    def utc(self, t_s: float) -> datetime:
        return self._utc0 + timedelta(seconds=t_s)

    def tick(self) -> None:
        """Real time passes by itself."""


class _SimulatedClock(_RealClock):
    """Advances one frame period per frame, starting at the session's last stored time."""

    def __init__(self, frame_s: float, start: datetime):
        self._t = 0.0
        self._t0_ns = 0
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
    interrupted: str | None = None   # why the run stopped before the end (resumable unless status says withdrawn)
    status: str = ""                 # the session's status afterwards


class _Pause(Exception):
    """The console paused the session."""


class _BreakNow(Exception):
    """The console asked for a break before the stimulus on screen."""


class _StopAsked(Exception):
    """Escape in the participant's window: ask before stopping."""


class _Stopped(Exception):
    """The run ends here: a confirmed stop, an abort from the console, or a runtime that went away."""

    def __init__(self, reason: str, withdrawn: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.withdrawn = withdrawn


class _Interrupted(Exception):
    """Raised by a stimulus's showing when something interrupted it; carries the control that did."""

    def __init__(self, control: BaseException):
        super().__init__(str(control))
        self.control = control


class SessionRunner:
    """One run of a session in an open backend; see :func:`run_session`."""

    def __init__(self, engine, backend: Backend, *, driver: SessionDriver | None, frame_hz: float, preload: int,
                 console=None, fonts=None, resumed: bool = False, station: str | None = None):
        self.engine = engine
        self.protocol = engine.protocol
        self.backend = backend
        self.driver = driver
        self.preload = preload
        self.console = console
        self.fonts = fonts
        self.resumed = resumed
        self.station = station
        self.tracked = backend.capabilities.head_tracking
        # a scripted participant moves the head only where no tracker does
        self.scripted_head = driver is not None and not self.tracked
        if backend.capabilities.paced or driver is None:
            self.clock = _RealClock()
            self.sampler = PoseSampler(engine.pose_rate_hz, self._head_at)
        else:
            start = max(datetime.now(timezone.utc), engine.last_activity() or datetime.min.replace(tzinfo=timezone.utc))
            self.clock = _SimulatedClock(1.0 / frame_hz, start)
            self.sampler = None
        self.head = np.eye(3)
        # In a tracked headset the eyes are ~1.7 m above the tracking origin: the panel hangs ahead of them.
        self.head_position = np.zeros(3)
        self.frames = 0
        self._frame_times: list[float] = []
        self._recent_frames: deque[float] = deque(maxlen=60)
        self._last_frame: float | None = None
        self.mode = "running"
        self._defer = False
        self._pending: BaseException | None = None
        self._resume_requested = self._finish_requested = False
        self._step = None
        self._step_progress = (0, 0)
        self._stimulus_shown_s: float | None = None
        self._last_answer = ""
        self._last_pose = "none yet"
        self._note = ""
        self._log: list[str] = []
        self._lateness: list[int] = []
        self._held_commands: list[dict] = []
        self.gaze = backend.gaze_source()
        self._gaze_text = ("Eye tracking: " + (f"{self.gaze.name}, {self.gaze.rate_hz:g} Hz" if self.gaze is not None
                           else f"not available ({backend.why_no_gaze()}): head pose only"))
        self._validation_text = ""
        self._validation_choice: str | None = None

    # -- frames ------------------------------------------------------------------------------------------

    def _head_at(self, monotonic_ns: int) -> HeadSample | None:
        """The sampler's source: the backend's tracker or view state, else the runner's own head."""
        sample = self.backend.head_at(monotonic_ns)
        if sample is None and not self.tracked:
            return HeadSample(self.head)
        return sample

    def _frame(self, frame: Frame) -> FrameInput:
        """Polls input and the console, advances uploads, draws; raises the control that interrupts."""
        if self._pending is not None and not self._defer:
            pending, self._pending = self._pending, None
            raise pending
        user = self.backend.poll_input()
        for event in user.events:
            if event.kind == "quit":
                raise _Stopped(event.key or "the display went away")
        if frame.head is None:
            self.head = user.head
        if user.head_position is not None:
            self.head_position = user.head_position
        self.backend.renderer.stimuli.update()
        self.backend.draw(frame)
        self.clock.tick()
        self.frames += 1
        now = time.perf_counter()
        if self._last_frame is not None:
            self._frame_times.append(now - self._last_frame)
            self._recent_frames.append(now - self._last_frame)
        self._last_frame = now
        self._console_frame()
        if any(e.kind == "key" and e.key == "escape" for e in user.events) and self.mode in ("running", "ready"):
            self._control(_StopAsked())
        return FrameInput(user.head, user.pointer, tuple(e for e in user.events if e.key != "escape"),
                          user.head_position)

    def _control(self, control: BaseException) -> None:
        if self._defer:
            self._pending = self._pending or control
        else:
            raise control

    def _record(self, kind: str, detail: dict, text: str | None = None) -> None:
        self.engine.record_event(kind, {**detail, "at_step": self._step.key if self._step else None})
        if text:
            self._log.append(f"{datetime.now().strftime('%H:%M:%S')}  {text}")

    def _console_frame(self) -> None:
        if self.console is None:
            return
        commands = self.console.commands()
        if self._defer:
            # a stimulus is fading out after its full exposure: controls wait until it is recorded
            self._held_commands += [c for c in commands if c.get("command") not in ("mirror", "abort")]
            commands = [c for c in commands if c.get("command") in ("mirror", "abort")]
        else:
            commands, self._held_commands = self._held_commands + commands, []
        for command in commands:
            self._command(command)
        if self.console is not None:
            self.console.send(self._status())

    def _command(self, command: dict) -> None:
        name = command.get("command")
        if name == "console_failed":
            self._log.append(f"console could not open: {command.get('reason')}")
            self.console = None
            return
        if name == "mirror":
            self.backend.mirror = self.console.mirror if command.get("on") else None
            return
        allowed = self._controls()
        if name not in allowed:
            return
        if name == "abort":
            reason, outcome = str(command.get("reason", "")).strip() or "no reason given", command.get("outcome")
            withdrawn = outcome == "withdrawn"
            self._record("console", {"command": "abort", "reason": reason, "outcome": "withdrawn" if withdrawn else "resumable"},
                         f"abort ({'withdrawn' if withdrawn else 'resumable'}): {reason}")
            raise _Stopped(reason, withdrawn=withdrawn)
        if name == "pause":
            self._record("console", {"command": "pause"}, "paused by the experimenter")
            self._control(_Pause())
        elif name == "resume":
            if self.mode == "complete":
                self._finish_requested = True
            else:
                self._record("console", {"command": "resume"}, "resumed by the experimenter")
                self._resume_requested = True
        elif name in ("repeat_validation", "accept_validation"):
            self._record("console", {"command": name}, "validation: " + ("repeat" if name == "repeat_validation"
                                                                           else "go on with this result"))
            self._validation_choice = "repeat" if name == "repeat_validation" else "accept"
        elif name == "break":
            before = self.engine.request_break()
            self._record("console", {"command": "break", "before_trial": before},
                         "break asked for" + (f" before trial {before}" if before is not None else ": no trial left"))
            if before is None:
                self._note = "No trial is left: no break can be inserted."
            elif self._step is not None and self._step.kind == "stimulus" and self._step.trial_index == before:
                self._control(_BreakNow())
            else:
                self._note = f"A break comes before trial {before}, after the current questions."

    def _controls(self) -> tuple[str, ...]:
        return {"running": ("pause", "break", "abort"), "ready": ("pause", "abort"), "paused": ("resume", "abort"),
                "break": ("pause", "abort"), "asking": ("abort",), "complete": ("resume",), "validating": ("pause", "abort"),
                "validation_result": ("repeat_validation", "accept_validation", "abort")}.get(self.mode, ("abort",))

    def _status(self) -> dict:
        engine, step = self.engine, self._step
        recent = np.array(self._recent_frames) if self._recent_frames else np.array([0.0])
        mean = float(recent.mean())
        shown = self._stimulus_shown_s
        state_text = {"running": "", "paused": "The participant sees the paused panel. Resume (R) when they are ready.",
                      "ready": "Waiting for the participant to select Continue on the \"ready?\" panel.",
                      "asking": "Escape was pressed in the participant's window: it asks whether to stop.",
                      "break": "The participant is on a break; they continue on their own when it has lasted its minimum.",
                      "complete": ("Consent was declined: the participant sees a thank-you panel"
                                   if engine.status == "declined" else "The session is complete")
                                  + ". Close (R) closes the participant's window.",
                      "validating": "The participant is looking at the validation targets.",
                      "validation_result": "Recalibrate the eye tracker (the headset's eye calibration), then Repeat "
                                           "validation (V); or Go on (G) to keep this result. The participant sees a "
                                           "'please keep still' panel."}
        status = {
            "participant": engine.participant_code, "session_number": engine.number,
            "session_count": engine.sessions_in_protocol(), "session_name": engine.spec.name, "station": self.station,
            "state": self.mode, "state_text": state_text.get(self.mode, ""),
            "step_index": self._step_progress[0] + 1, "step_count": self._step_progress[1],
            "step_text": (describe_step(step) if step is not None
                          else "the thank-you panel" if self.mode == "complete" else "starting"),
            "stimulus": _short(step.stimulus_path) if step is not None and step.kind == "stimulus" else None,
            "scene": step.scene if step is not None else None,
            "stimulus_time_s": self.clock.now() - shown if shown is not None else 0.0,
            "exposure_s": self.protocol.exposure_s,
            "last_answer": self._last_answer, "frame_hz": 1.0 / mean if mean > 0 else 0.0, "frame_ms": mean * 1000.0,
            "pose_text": f"{self.engine.pose_rate_hz:g} Hz due; last trial {self._last_pose}",
            "dropped": self.backend.dropped_frames(), "controls": self._controls(), "note": self._note,
            "gaze_text": self._gaze_text, "validation_text": self._validation_text,
            "log": list(self._log[-20:]),
        }
        return status

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

    # -- stimuli -----------------------------------------------------------------------------------------

    def _scripted_motion(self, step, showing: GazeShowing) -> np.ndarray | None:
        if not self.scripted_head:
            return None
        if self.gaze is not None:
            # the scripted eye leads, the head follows it
            follows = self.gaze.head_motion(showing, self.engine.pose_rate_hz)
            if follows is not None:
                return np.array(follows)
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
        """Shows a stimulus; after an interruption (pause, Escape, a break asked for) shows it again from
        its start, or moves on to the step that now comes first (the break)."""
        while True:
            try:
                return self._show_stimulus(step)
            except _Interrupted as interrupted:
                control = interrupted.control
            if isinstance(control, _Pause):
                self._paused()
            elif isinstance(control, _StopAsked):
                self._ask_stop()
            current = self.engine.current()
            if current.key != step.key:
                return current

    def _show_stimulus(self, step):
        stimuli = self.backend.renderer.stimuli
        self._step = step
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
        # every stimulus starts with its start yaw straight ahead
        if self.tracked:
            self.backend.renderer.turn_panorama(step.start_yaw_deg - yaw_pitch_roll(self.head)[0])
        else:
            self.backend.reset_view(step.start_yaw_deg, 0.0, fov_deg=self.protocol.view.fov_deg, locked=False)
        turn = view_rotation(self.backend.renderer.panorama_yaw_deg, 0.0)
        showing = GazeShowing(self.engine.participant_code, step.exposure_s, turn, trial_index=step.trial_index,
                              stimulus_path=step.stimulus_path)
        motion = self._scripted_motion(step, showing)
        presentation = self.engine.next_presentation(step.trial_index)
        self.backend.fade_to_grey(FADE_S, grey=False)
        shown_s = None
        try:
            t0 = self.clock.now()
            while (t := self.clock.now() - t0) < FADE_S:
                self._frame(Frame(stimulus=texture, fade=1.0 - t / FADE_S, head=self._scripted_head(motion, 0.0)))
            shown_s = self._stimulus_shown_s = self.clock.now()
            if self.sampler is not None:
                self.sampler.start(self.clock.monotonic_ns(shown_s), step.exposure_s)
            if self.gaze is not None:
                self.gaze.start(self.clock.monotonic_ns(shown_s), showing)
            while (t := self.clock.now() - shown_s) < step.exposure_s:
                self._frame(Frame(stimulus=texture, head=self._scripted_head(motion, t)))
            ended_s = self.clock.now()
            gaze = self._gaze_samples(turn, ended_s)
            samples = self._samples(motion, turn, shown_s, ended_s, step.exposure_s)
        except (_Pause, _StopAsked, _BreakNow, _Stopped, KeyboardInterrupt) as control:
            at_s = self.clock.now()
            if shown_s is not None:
                kept_gaze = self._gaze_samples(turn, at_s)
                kept = self._samples(motion, turn, shown_s, at_s, step.exposure_s)
                self.engine.record_poses(step.trial_index, kept, presentation=presentation, interrupted=True)
                self.engine.record_gaze(step.trial_index, kept_gaze, presentation=presentation, interrupted=True)
                what = {_Pause: "paused", _StopAsked: "Escape pressed", _BreakNow: "a break was asked for"}.get(
                    type(control), "the session stopped")
                self.engine.flag_trial(step.trial_index, "stimulus_interrupted",
                                       f"{what} at {at_s - shown_s:.1f} s of {step.exposure_s:g} s; {len(kept)} poses "
                                       "kept, flagged; shown again from its start", presentation=presentation)
            self._after_stimulus(texture)
            if isinstance(control, (_Stopped, KeyboardInterrupt)):
                raise
            raise _Interrupted(control) from None
        # the exposure is complete: a control arriving during the fade-out waits for the submit
        self._defer = True
        try:
            self.backend.fade_to_grey(FADE_S, grey=True)
            while (t := self.clock.now() - ended_s) < FADE_S:
                self._frame(Frame(stimulus=texture, fade=t / FADE_S, head=self._scripted_head(motion, step.exposure_s)))
            self._after_stimulus(texture)
            # Poses first: if the process dies before the submit, resume discards them with the exposure.
            self.engine.record_poses(step.trial_index, samples, presentation=presentation)
            self.engine.record_gaze(step.trial_index, gaze, presentation=presentation)
            self._pose_rate(step, samples, presentation)
            self._gaze_quality(step, gaze, presentation)
            shown_at = self.clock.utc(shown_s)
            following = self.engine.submit(step.key, None, shown_at=shown_at,
                                           answered_at=shown_at + timedelta(seconds=ended_s - shown_s))
            self._timing_event(step.trial_index)
            self._prepare(following)
        finally:
            self._defer = False
        return following

    # -- the eye-tracker validation ------------------------------------------------------------------------

    def _validation(self, step):
        """The validation step: instructions, the targets, the measures stored; repeated while the experimenter
        asks for it after a "recalibrate". Without an eye tracker it is skipped, and the session says why."""
        self._step = step
        if self.gaze is None:
            reason = self.backend.why_no_gaze()
            self._record("validation_skipped", {"reason": reason}, f"validation skipped: {reason}")
            self._validation_text = f"Validation skipped: {reason}."
            now = self.clock.utc(self.clock.now())
            return self.engine.submit(step.key, None, shown_at=now, answered_at=now)
        first_shown = None
        while True:
            attempt = self.engine.next_validation_attempt()
            try:
                result, shown_s = self._validation_attempt(step, attempt)
            except _Pause:
                self._record("validation_interrupted", {"attempt": attempt}, f"validation {attempt} interrupted: "
                             "it starts again after the pause")
                self.mode = "running"
                self._paused()
                continue
            except _StopAsked:
                self.mode = "running"
                self._ask_stop()
                continue
            first_shown = shown_s if first_shown is None else first_shown
            if self._validation_decision(attempt, result) == "accept":
                break
        shown_at = self.clock.utc(first_shown)
        return self.engine.submit(step.key, None, shown_at=shown_at,
                                  answered_at=shown_at + timedelta(seconds=self.clock.now() - first_shown))

    def _validation_attempt(self, step, attempt: int):
        """One attempt: the instructions panel, then every target for ``target_s`` on grey; returns its measures
        (stored) and when its panel appeared."""
        spec = self.protocol.validation
        result, shown_s, _ = self._show(content_for_step(step, self.protocol), scripted=self._scripted_events(step))
        # the validation's frame: straight ahead is where the participant faces as the targets begin
        if self.tracked:
            turn = view_rotation(-yaw_pitch_roll(self.head)[0], 0.0)
        else:
            self.backend.reset_view(0.0, 0.0, fov_deg=self.protocol.view.fov_deg, locked=True)
            if self.scripted_head:
                self.head = np.eye(3)
            turn = np.eye(3)
        self.mode = "validating"
        started = self.clock.now()
        records = []
        for index, (yaw, pitch) in enumerate(spec.targets):
            showing = GazeShowing(self.engine.participant_code, spec.target_s, turn, attempt=attempt, target=index,
                                  targets=spec.targets, target_s=spec.target_s)
            direction = world_directions([yaw], [pitch], turn)[0]
            onset = self.clock.now()
            self.gaze.start(self.clock.monotonic_ns(onset), showing)
            try:
                while self.clock.now() - onset < spec.target_s:
                    self._frame(Frame(fade=1.0, target=direction, head=self.head if self.scripted_head else None))
            finally:
                readings = self.gaze.stop(self.clock.monotonic_ns(self.clock.now()))
            records += gaze_records(readings, turn, target=index)
        self.mode = "running"
        measured = self.engine.record_validation(attempt, records, gaze_source=self.gaze.name,
                                                 started_at=self.clock.utc(started), ended_at=self.clock.utc(self.clock.now()))
        return measured, shown_s

    def _validation_decision(self, attempt: int, result) -> str:
        """"accept" or "repeat": within the threshold the session goes on; above it the experimenter decides
        (the participant sees the "please keep still" panel meanwhile)."""
        threshold = self.protocol.validation.threshold_deg
        text = (f"Validation {attempt}: accuracy {result.accuracy_deg:.2f}°, precision {result.precision_rms_s2s_deg:.2f}° "
                f"RMS-S2S / {result.precision_sd_deg:.2f}° SD, data loss {result.data_loss_pct:.1f} %")
        if threshold is None or not result.needs_recalibration(threshold):
            self._validation_text = text + ("" if threshold is None else f": within the protocol's {threshold:g}°")
            self._log.append(f"{datetime.now().strftime('%H:%M:%S')}  {self._validation_text}")
            return "accept"
        self._validation_text = f"RECALIBRATE. {text}: worse than the protocol's {threshold:g}°"
        self._log.append(f"{datetime.now().strftime('%H:%M:%S')}  {self._validation_text}")
        if self.console is None:
            # nobody to ask (a scripted run): the attempt stands, marked "recalibrate" in the data
            self._record("validation_accepted", {"attempt": attempt, "by": "no console"})
            return "accept"
        self.mode, self._validation_choice = "validation_result", None
        self._message("validation_wait", until=lambda: self._validation_choice is not None)
        self.mode = "running"
        if self._validation_choice == "accept":
            self._validation_text = f"Validation {attempt} kept by the experimenter (worse than {threshold:g}°). {text}"
        return self._validation_choice

    def _after_stimulus(self, texture) -> None:
        # The eye buffers are grey now. A compositor's grey is drawn over everything, the panels that
        # follow included, so it is lifted here; it has covered the switch itself.
        self.backend.fade_to_grey(0.0, grey=False)
        self.backend.renderer.stimuli.show(None)
        self.backend.renderer.turn_panorama(0.0)
        self._stimulus_shown_s = None

    def _samples(self, motion, turn, shown_s: float, until_s: float, exposure_s: float) -> list:
        """The exposure's pose records up to ``until_s``, in the stimulus's frame."""
        from study.engine import PoseRecord

        if self.sampler is None:
            # simulated clock: the pose in effect at each due time, from the tracker or else the script
            taken = []
            for t in due_times(self.engine.pose_rate_hz, exposure_s):
                if shown_s + t >= until_s + 1e-9:
                    break
                if self.tracked:
                    sample = self.backend.head_at(self.clock.monotonic_ns(shown_s + t))
                else:
                    sample = HeadSample(self._scripted_head(motion, t) if motion is not None else self.head)
                if sample is not None:
                    taken.append(TimedSample(float(t), sample.head, sample.position, sample.fov_deg,
                                             sample.runtime_time_ns, 0))
        else:
            taken = self.sampler.stop(self.clock.monotonic_ns(until_s))
        self._lateness = [s.late_ns for s in taken]
        records = []
        for sample in taken:
            yaw, pitch, roll = yaw_pitch_roll(turn @ sample.head)
            position = None if sample.position is None else tuple(float(v) for v in sample.position)
            fov = sample.fov_deg or (None, None)
            records.append(PoseRecord(sample.t, yaw, pitch, roll, fov_h_deg=fov[0], fov_v_deg=fov[1],
                                      position=position, runtime_time_ns=sample.runtime_time_ns))
        return records

    def _gaze_samples(self, turn: np.ndarray, until_s: float) -> list:
        """The eye tracker's recording of the showing up to ``until_s``, in the stimulus frame (none without one)."""
        if self.gaze is None:
            return []
        return gaze_records(self.gaze.stop(self.clock.monotonic_ns(until_s)), turn)

    def _gaze_quality(self, step, records, presentation: int) -> None:
        """A trial's gaze: the samples' rate and the share lost, as an event and on the console."""
        if self.gaze is None:
            return
        valid = sum(r.valid for r in records)
        lost = 100.0 * (1.0 - valid / len(records)) if records else 100.0
        rate = len(records) / step.exposure_s
        self.engine.record_event("gaze_quality", {"trial_index": step.trial_index, "presentation": presentation,
                                                  "samples": len(records), "valid": valid, "rate_hz": round(rate, 2),
                                                  "lost_pct": round(lost, 2), "source": self.gaze.name})
        self._gaze_text = f"Eye tracking: {self.gaze.name}, last trial {rate:.1f} Hz, {lost:.1f} % lost"

    def _pose_rate(self, step, samples, presentation: int) -> None:
        rate = self.engine.pose_rate_hz
        report = rate_report([s.t for s in samples], rate, step.exposure_s, getattr(self, "_lateness", []))
        self.engine.record_event("pose_rate", {"trial_index": step.trial_index, "presentation": presentation,
                                               "rate_hz": rate, **report.as_detail(),
                                               "sampler_priority": self.sampler.priority if self.sampler else "simulated"})
        self._last_pose = f"{report.achieved_hz:.1f} Hz, largest gap {report.largest_gap_s * 1000:.0f} ms"
        if report.low(rate):
            self.engine.flag_trial(
                step.trial_index, "pose_rate_low",
                f"{report.achieved_hz:.1f} Hz of {rate:g} Hz ({report.achieved_hz / rate:.0%}); {report.stored} of "
                f"{report.expected} samples; largest gap {report.largest_gap_s:.3f} s", presentation=presentation,
            )
            self._log.append(f"trial {step.trial_index}: head poses below 95 % of {rate:g} Hz (flagged)")

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

    # -- panels ------------------------------------------------------------------------------------------

    def _show(self, content: PanelContent, *, scripted: tuple[list[InputEvent], float] | None = None,
              until=None):
        """Shows a panel until the participant ends it (returns ``(PanelResult, t0, t1)``) or ``until()``
        is true (returns ``(None, t0, t1)``)."""
        if not self.tracked:
            # panels have a fixed view of their own: straight ahead, the protocol's field of view
            self.backend.reset_view(0.0, 0.0, fov_deg=PANEL_VIEW_FOV_DEG, locked=True)
            if self.scripted_head:
                self.head = np.eye(3)
        yaw = yaw_pitch_roll(self.head)[0] if self.tracked else 0.0
        t0 = self.clock.now()
        panel = Panel(content, shown_at_s=t0, yaw_deg=yaw, eye_position=self.head_position, fonts=self.fonts)
        events_at = None
        if scripted is not None:
            make_events, delay = scripted
            events_at = t0 + delay
        while True:
            now = self.clock.now()
            if until is not None and until():
                return None, t0, now
            events: tuple[InputEvent, ...] = ()
            if events_at is not None and now >= events_at:
                # sent again every frame until the panel takes them (pages, a break's minimum)
                events = tuple(make_events(panel))
            user = self._frame(Frame(stimulus=None, fade=1.0, panel=panel.quad(now),
                                     head=self.head if self.scripted_head else None))
            panel.hover(user.pointer)
            for event in user.events + events:
                result, changed = panel.handle(event, now)
                if changed:
                    self.backend.tick()
                if result is not None:
                    return result, t0, now

    def _scripted_events(self, step):
        """(events for the panel, seconds to wait) of the scripted participant, or None without one."""
        if self.driver is None:
            return None
        value, duration = self.driver.response(self.engine.participant_code, step) if step is not None else (None, 1.0)
        if step is not None and step.kind == "consent":
            target = "agree" if value == 1 else "decline"
            return (lambda panel: [InputEvent("key", "enter"), InputEvent("click", ray=panel.ray_to(target))]), duration
        keys = ([InputEvent("key", str(value))] if value is not None else []) + [InputEvent("key", "enter")]
        return (lambda panel: keys), duration

    def _panel(self, step):
        self._step = step
        content = content_for_step(step, self.protocol)
        while True:
            if step.kind == "break":
                self.mode = "break"
            try:
                result, t0, t1 = self._show(content, scripted=self._scripted_events(step))
                break
            except _Pause:
                self._paused()
            except _StopAsked:
                self._ask_stop()
            finally:
                if self.mode == "break":
                    self.mode = "running"
        value = {"agree": 1, "decline": 0}.get(result.action, result.value)
        shown_at = self.clock.utc(t0)
        following = self.engine.submit(step.key, value, shown_at=shown_at, answered_at=shown_at + timedelta(seconds=t1 - t0))
        if value is not None:
            committed = datetime.now().strftime("%H:%M:%S")
            given = {1: "agreed", 0: "declined"}[value] if step.kind == "consent" else value
            self._last_answer = f"Last answer: {step.key} = {given} · committed to the study database at {committed} ✓"
        return following

    def _message(self, kind: str, *, until=None, delay_s: float = SCRIPTED_MESSAGE_S):
        scripted = None
        if self.driver is not None and until is None:
            scripted = ((lambda panel: [InputEvent("key", "enter")]), delay_s)
        return self._show(message_content(kind, self.protocol), scripted=scripted, until=until)

    def _paused(self) -> None:
        """The paused panel until the experimenter resumes, then the participant's "ready?"."""
        self._wait_paused()
        self._ready()

    def _wait_paused(self) -> None:
        self.mode, self._resume_requested = "paused", False
        self._record("paused", {})
        scripted_resume = self.driver is not None and self.console is None
        start = self.clock.now()
        # a scripted session without a console (tests) resumes by itself
        self._message("paused", until=lambda: self._resume_requested
                      or (scripted_resume and self.clock.now() - start > 4 * SCRIPTED_MESSAGE_S))
        self._record("resumed_after_pause", {"paused_s": round(self.clock.now() - start, 3)})
        self.mode = "running"

    def _ready(self) -> None:
        while True:
            self.mode = "ready"
            try:
                self._message("ready")
                self._record("ready_confirmed", {}, "the participant is ready")
                self.mode = "running"
                return
            except _Pause:
                self._wait_paused()
            except _StopAsked:
                self._ask_stop()

    def _ask_stop(self) -> None:
        """Escape: the participant's window asks; Stop ends the run (resumable), Go on returns."""
        previous, self.mode = self.mode, "asking"
        self._record("stop_asked", {}, "Escape in the participant's window: asking")
        result, _, _ = self._show(message_content("stop", self.protocol))
        self.mode = previous if previous != "asking" else "running"
        if result.action == "stop":
            self._record("stop_confirmed", {}, "stop confirmed in the participant's window")
            raise _Stopped("stopped with Escape in the participant's window")
        self._record("stop_cancelled", {}, "the session goes on")

    def _end(self, kind: str = "end") -> None:
        """The last panel, "end" (thank you) or "declined" (consent was declined), until the participant or
        the experimenter closes it."""
        self.mode, self._finish_requested = "complete", False
        self._step = None
        scripted = ((lambda panel: [InputEvent("key", "enter")]), SCRIPTED_MESSAGE_S) if self.driver is not None else None
        while True:
            try:
                self._show(message_content(kind, self.protocol), scripted=scripted, until=lambda: self._finish_requested)
                return
            except _StopAsked:
                return   # Escape on the thank-you panel simply closes it

    # -- the run -----------------------------------------------------------------------------------------

    def run(self, on_step=None) -> SessionSummary:
        submitted = 0
        step = self.engine.current()
        self._step = step
        described = self.backend.describe()
        if described:
            self.engine.record_event("backend", {"backend": self.backend.name, **described})
        # what the session's eye tracking is, or why there is none (then head poses are all there is)
        self.engine.record_event("gaze", {"supported": True, **self.gaze.describe()} if self.gaze is not None else
                                 {"supported": False, "reason": self.backend.why_no_gaze()})
        self._log.append(f"{datetime.now().strftime('%H:%M:%S')}  {self._gaze_text}")
        self._prepare(step)
        reason = None
        try:
            # one grey frame first, so the first panel knows where the head is
            self._frame(Frame(stimulus=None, fade=1.0, head=self.head if self.scripted_head else None))
            if self.resumed and step.kind != "done" and self.engine.progress()[0] > 0:
                self._step_progress = self.engine.progress()
                self._ready()
            while step.kind != "done":
                self._step, self._step_progress = step, self.engine.progress()
                if step.kind == "stimulus":
                    step = self._stimulus(step)
                elif step.kind == "validation":
                    step = self._validation(step)
                else:
                    step = self._panel(step)
                submitted += 1
                if on_step is not None:
                    on_step(step)
            if self.engine.status == "completed":
                self._end()
            elif self.engine.status == "declined":
                self._end("declined")
        except _Stopped as stop:
            reason = stop.reason
            if stop.withdrawn and self.engine.status not in ("completed", "withdrawn", "declined"):
                self.engine.withdraw(stop.reason)
        except KeyboardInterrupt as stop:
            # the command turns SIGTERM into a KeyboardInterrupt that carries its own reason
            reason = str(stop) or "interrupted from the terminal (Ctrl-C)"
        if reason is not None:
            self.engine.record_event("interrupted", {"at_step": self.engine.current().key, "backend": self.backend.name,
                                                     "reason": reason, "station": self.station})
        return SessionSummary(submitted, self.engine.current().kind == "done" and self.engine.status == "completed",
                              self.frames, reason, self.engine.status)


def _short(path: str) -> str:
    """A stimulus as its scene folder and file name."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def describe_step(step) -> str:
    """A step in a few words, for the experimenter."""
    if step.kind in ("stimulus", "rating"):
        kind = "training" if step.training else "test"
        what = "stimulus" if step.kind == "stimulus" else "question " + " ".join(step.key.split("/")[2:])
        return f"trial {step.trial_index} ({kind}): {what}"
    if step.kind == "ssq":
        _, phase, number = step.key.split("/")
        return f"SSQ {'before' if phase == 'pre' else 'after'} the trials, item {number} of {step.item_count}"
    if step.kind == "break":
        return f"break before trial {step.trial_index} (at least {step.min_duration_s:g} s)"
    if step.kind == "instructions":
        return "training instructions" if step.key.startswith("training") else "instructions"
    if step.kind == "validation":
        return "eye-tracker validation"
    return {"consent": "consent", "done": "done"}.get(step.kind, step.kind)


def run_session(engine, backend: str | Backend, *, driver: SessionDriver | None = None, frame_hz: float = 30.0,
                preload: int = 2, on_step=None, console: bool = False, resumed: bool = False,
                station: str | None = None, fonts=None) -> SessionSummary:
    """Runs (or continues) a participant's session until it is done, stopped or aborted.

    Parameters
    ----------
    engine : study.engine.SessionEngine
        Driven only through ``current``, ``submit``, ``upcoming_stimuli``, ``record_poses``,
        ``record_event`` and its controls (``request_break``, ``withdraw``, ``flag_trial``).
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
    console : bool
        Open the experimenter's console window (its own process).
    resumed : bool
        The run continues a session: a "ready?" panel comes first.
    station : str, optional
        The station's name, for the console and the events.
    fonts : viewer.text.FontChain, optional
        The panel fonts (checked against the protocol before the run).

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
    link = None
    if console:
        from viewer.console_link import ConsoleLink

        link = ConsoleLink()
        link.start()
    try:
        with backend:
            runner = SessionRunner(engine, backend, driver=driver, frame_hz=frame_hz, preload=preload, console=link,
                                   fonts=fonts, resumed=resumed, station=station)
            return runner.run(on_step)
    finally:
        if link is not None:
            backend.mirror = None
            link.close()
