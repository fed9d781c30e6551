"""Head poses at exactly the protocol's rate whatever the frame rate; a low rate is flagged; every stimulus
starts at its start yaw; pause, a break asked for and an abort as the console sends them."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from _studykit import make_study

from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.export import load_flagged_trials, load_poses
from viewer.backends.base import Capabilities, HeadSample
from viewer.backends.headless import HeadlessBackend
from viewer.camera import view_rotation, yaw_pitch_roll
from viewer.pose import PoseSampler, due_times, rate_report
from viewer.session_runner import run_session


def test_samples_fall_on_their_own_time_while_the_main_thread_is_busy():
    seen = []

    def source(monotonic_ns):
        seen.append(monotonic_ns)
        # the pose encodes the time it was asked for: the stored sample must be the pose of its due time
        return HeadSample(view_rotation((monotonic_ns // 1000) % 360000 / 1000.0 - 180.0, 0.0))

    sampler = PoseSampler(60.0, source)
    onset = time.monotonic_ns()
    sampler.start(onset, 1.0)
    for _ in range(10):             # ten "frames" of 100 ms of busy Python work
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            sum(range(200))
    samples = sampler.stop(onset + 10**9)
    assert [round(s.t * 60) for s in samples] == list(range(60))
    for sample in samples:
        due = onset + round(sample.t * 1e9)
        yaw = yaw_pitch_roll(sample.head)[0]
        assert yaw == pytest.approx((due // 1000) % 360000 / 1000.0 - 180.0, abs=1e-6)
    assert sorted(seen) == [onset + round(k * 1e9 / 60) for k in range(60)]


def test_stopping_early_keeps_only_the_samples_due_before_the_stop():
    sampler = PoseSampler(30.0, lambda ns: HeadSample(np.eye(3)))
    onset = time.monotonic_ns()
    sampler.start(onset, 20.0)
    samples = sampler.stop(onset + int(0.5e9))
    assert len(samples) == 15 and samples[-1].t == pytest.approx(14 / 30)


def test_rate_report_counts_missing_samples_and_gaps():
    times = due_times(30.0, 2.0)
    full = rate_report(times, 30.0, 2.0)
    assert (full.expected, full.stored, full.achieved_hz) == (60, 60, 30.0) and not full.low(30.0)
    assert full.largest_gap_s == pytest.approx(1 / 30)
    holey = rate_report(np.delete(times, range(10, 20)), 30.0, 2.0)
    assert holey.low(30.0) and holey.largest_gap_s == pytest.approx(11 / 30)


class _SlowTracker(HeadlessBackend):
    """A paced headset stand-in: frames take 100 ms (10 Hz), the head turns at 30°/s from yaw 40°, and the
    tracker may lose the head for a while."""

    capabilities = Capabilities(stereo=False, head_tracking=True, pointer=False, returns_pixels=False, paced=True)

    def __init__(self, *args, lost=None, **kwargs):
        super().__init__(*args, read_pixels=False, **kwargs)
        self.t0 = time.monotonic_ns()
        self.lost = lost or (lambda t: False)
        self.commands_at = {}

    def yaw_at(self, monotonic_ns):
        return 40.0 + 30.0 * (monotonic_ns - self.t0) / 1e9

    def head_at(self, monotonic_ns):
        if self.lost((monotonic_ns - self.t0) / 1e9):
            return None
        return HeadSample(view_rotation(self.yaw_at(monotonic_ns), 0.0), position=np.array([0.0, 1.7, 0.0]))

    def poll_input(self):
        polled = super().poll_input()
        from viewer.backends.base import FrameInput

        head = view_rotation(self.yaw_at(time.monotonic_ns()), 0.0)
        return FrameInput(head=head, events=polled.events, head_position=np.array([0.0, 1.7, 0.0]))

    def draw(self, frame):
        time.sleep(0.1)
        return super().draw(frame)


@pytest.fixture
def quick_study(tmp_path):
    db = make_study(tmp_path, exposure_s=1.0, pose_rate_hz=30.0, participants=("P01",), per_scene=1,
                    breaks="every_trials = 99", ssq=False, min_break_s=0.0)
    yield db
    db.close()


class _Quick(ScriptedDriver):
    """Answers at once; only the stimuli take their time (for the paced backends, whose clock is real)."""

    def __init__(self):
        super().__init__(RaterModel(1), motion_seed=1)

    def response(self, participant_code, step):
        value, duration = super().response(participant_code, step)
        return value, duration if step.kind == "stimulus" else 0.05


def _details(db, kind):
    with db.engine.connect() as connection:
        return [json.loads(d) for d in connection.execute(
            sa.text("select detail from event where kind = :k order by id"), {"k": kind}).scalars()]


def test_with_frames_at_10_hz_poses_are_stored_at_30_hz_in_the_stimulus_frame(quick_study):
    engine = SessionEngine.start(quick_study, "P01")
    driver = _Quick()
    # a tracked backend with a scripted participant: answers from the script, the head from the tracker
    backend = _SlowTracker(16, 16)
    run_session(engine, backend, driver=driver, preload=2)
    poses = load_poses(quick_study)
    assert poses.groupby("trial_index").size().eq(30).all()
    for _, group in poses.groupby("trial_index"):
        assert np.allclose(group.t.to_numpy(), np.arange(30) / 30)
        # the panorama was turned as the stimulus began to fade in, so that its start yaw (0) lay straight
        # ahead; the head (at 40° + 30°/s) then turned on for the fade's 0.5 s and a frame or two, and is
        # sampled at its due times: exactly 1° apart
        yaw = np.degrees(np.unwrap(np.radians(group.yaw_deg.to_numpy())))
        assert 12.0 < yaw[0] < 25.0
        assert np.diff(yaw) == pytest.approx(np.full(29, 1.0), abs=1e-6)
    rates = _details(quick_study, "pose_rate")
    assert len(rates) == len(engine.trials) and all(r["achieved_hz"] == 30.0 for r in rates)
    assert len(load_flagged_trials(quick_study)) == 0


def test_a_tracker_that_loses_the_head_flags_the_trial(quick_study):
    engine = SessionEngine.start(quick_study, "P01")
    first_show = []

    def lost(t):
        return bool(first_show) and first_show[0] + 0.8 < t < first_show[0] + 1.3

    backend = _SlowTracker(16, 16, lost=lost)

    def on_step(step):
        if step.kind == "stimulus" and not first_show:
            first_show.append((time.monotonic_ns() - backend.t0) / 1e9)

    run_session(engine, backend, driver=_Quick(), on_step=on_step)
    flags = load_flagged_trials(quick_study)
    assert set(flags.flag) == {"pose_rate_low"} and len(flags) >= 1
    assert "Hz of 30 Hz" in flags.detail.iloc[0]


class _Console:
    """Stands in for the console process: sends commands at chosen steps, records what it was sent."""

    def __init__(self, plan):
        self.plan = plan         # list of (predicate(status) -> bool, command)
        self.sent = []
        self.statuses = []
        self.mirror = None

    def commands(self):
        return []

    def send(self, status, force=False):
        self.statuses.append(status)


def test_pause_break_and_abort_from_the_console(quick_study):
    from viewer import session_runner

    engine = SessionEngine.start(quick_study, "P01")
    plan = [
        (lambda s: s["stimulus"] and s["stimulus_time_s"] > 0.3 and "trial 1" in s["step_text"], {"command": "pause"}),
        (lambda s: s["state"] == "paused", {"command": "resume"}),
        (lambda s: s["stimulus"] and s["stimulus_time_s"] > 0.3 and "trial 2" in s["step_text"], {"command": "break"}),
        (lambda s: "question" in s["step_text"] and "trial 2" in s["step_text"],
         {"command": "abort", "reason": "fire alarm", "outcome": "resumable"}),
    ]
    console = _Console(plan)

    def commands():
        if not console.plan or not console.statuses:
            return []
        predicate, command = console.plan[0]
        if predicate(console.statuses[-1]):
            console.plan.pop(0)
            return [command]
        return []

    console.commands = commands
    backend = HeadlessBackend(16, 16)
    runner = session_runner.SessionRunner(engine, backend, driver=ScriptedDriver(RaterModel(1), motion_seed=1),
                                          frame_hz=20.0, preload=2, console=console)
    with backend:
        summary = runner.run()
    assert summary.interrupted == "fire alarm" and summary.status == "running"
    assert not console.plan
    kinds = [k for k in _kinds(quick_study) if k not in ("frame_timing", "pose_rate", "planned", "gaze")]
    assert kinds[:4] == ["console", "trial_flag", "paused", "console"]
    assert "break_requested" in kinds and kinds[-2:] == ["console", "interrupted"]
    flags = load_flagged_trials(quick_study)
    assert list(flags.flag) == ["stimulus_interrupted", "stimulus_interrupted"]
    assert "paused at" in flags.detail.iloc[0] and "a break was asked for" in flags.detail.iloc[1]
    poses = load_poses(quick_study, interrupted=True)
    assert poses.loc[poses.trial_index == 1].groupby(["presentation", "interrupted"]).size().to_dict() == {
        (0, True): int(poses.loc[(poses.trial_index == 1) & poses.interrupted].shape[0]), (1, False): 30}
    # after the abort the session resumes where it stopped: trial 2's questions after its break and re-show
    resumed = SessionEngine.resume(quick_study, "P01")
    assert resumed.current().key.startswith("trial/2/")
    assert "break/2" in resumed._done and "trial/2/show" in resumed._done


def _kinds(db):
    with db.engine.connect() as connection:
        return connection.execute(sa.text("select kind from event order by id")).scalars().all()


def test_sampling_runs_in_its_own_thread_named_for_it():
    sampler = PoseSampler(10.0, lambda ns: HeadSample(np.eye(3)))
    sampler.start(time.monotonic_ns(), 1.0)
    assert "pose-sampler" in [t.name for t in threading.enumerate()]
    sampler.stop()
    assert "pose-sampler" not in [t.name for t in threading.enumerate()]


def _console_run(db, plan, *, resumed=False):
    """Runs P01's session (or resumes it) with a stand-in console following ``plan``; returns the console."""
    from viewer import session_runner

    engine = SessionEngine.resume(db, "P01") if resumed else SessionEngine.start(db, "P01")
    console = _Console(plan)

    def commands():
        if console.plan and console.statuses and console.plan[0][0](console.statuses[-1]):
            return [console.plan.pop(0)[1]]
        return []

    console.commands = commands
    backend = HeadlessBackend(16, 16)
    runner = session_runner.SessionRunner(engine, backend, driver=ScriptedDriver(RaterModel(1), motion_seed=1),
                                          frame_hz=20.0, preload=2, console=console, resumed=resumed)
    with backend:
        runner.run()
    return console


def test_a_break_shows_as_a_break_at_the_desk_and_break_now_is_not_offered_during_it(quick_study):
    plan = [(lambda s: s["stimulus"] and s["stimulus_time_s"] > 0.3 and "trial 1" in s["step_text"], {"command": "break"})]
    console = _console_run(quick_study, plan)
    assert not console.plan
    during = [s for s in console.statuses if s["state"] == "break"]
    assert during and all("break" not in s["controls"] and "pause" in s["controls"] for s in during)
    assert all("break" in s["step_text"] for s in during)
    assert _kinds(quick_study).count("break_requested") == 1
    # the end: the thank-you panel, closed with Close (R)
    end = console.statuses[-1]
    assert end["state"] == "complete" and end["step_text"] == "the thank-you panel" and end["controls"] == ("resume",)
    assert "Close (R)" in end["state_text"]


def test_the_ready_panel_of_a_resumed_session_shows_the_step_it_continues_at(quick_study):
    _console_run(quick_study, [(lambda s: "question" in s["step_text"] and "trial 1" in s["step_text"],
                                {"command": "abort", "reason": "fire alarm", "outcome": "resumable"})])
    done, total = SessionEngine.load(quick_study, "P01").progress()
    console = _console_run(quick_study, [], resumed=True)
    ready = next(s for s in console.statuses if s["state"] == "ready")
    assert (ready["step_index"], ready["step_count"]) == (done + 1, total)


def test_break_now_pressed_during_a_break_is_ignored(quick_study):
    from viewer import session_runner

    engine = SessionEngine.start(quick_study, "P01")
    runner = session_runner.SessionRunner(engine, HeadlessBackend(16, 16), driver=None, frame_hz=20.0, preload=1)
    runner.mode = "break"
    runner._command({"command": "break"})
    assert "break_requested" not in _kinds(quick_study) and runner._note == ""
    runner.mode = "running"
    runner._command({"command": "break"})
    assert _kinds(quick_study).count("break_requested") == 1


def test_a_declined_consent_ends_on_a_thank_you_panel_of_its_own(tmp_path, monkeypatch):
    from _studykit import write_consent_protocol, write_stimuli

    from study.engine import DECLINE
    from study.store import add_participant, create_study, import_stimuli
    from viewer import session_runner
    from viewer.panel import message_content

    db = create_study(tmp_path / "study.sqlite", write_consent_protocol(tmp_path))
    import_stimuli(db, write_stimuli(tmp_path / "stimuli"))
    add_participant(db, "P01")
    shown = []
    real_show = session_runner.SessionRunner._show

    def show(self, content, **options):
        shown.append(content.kind)
        return real_show(self, content, **options)

    monkeypatch.setattr(session_runner.SessionRunner, "_show", show)
    console = _Console([])
    runner = session_runner.SessionRunner(SessionEngine.start(db, "P01"), HeadlessBackend(16, 16),
                                          driver=ScriptedDriver(RaterModel(1), consent=DECLINE), frame_hz=20.0,
                                          preload=1, console=console)
    with runner.backend:
        summary = runner.run()
    db.close()
    assert summary.status == "declined" and shown == ["consent", "declined"]
    assert "Consent was declined" in console.statuses[-1]["state_text"]
    assert message_content("declined", db.protocol).text.startswith("Thank you. You chose not to take part")
