"""A whole scripted session through the headless backend, with the real engine and store."""

import json
import time

import numpy as np
import pytest
import sqlalchemy as sa
from _studykit import make_study

from study.driver import RaterModel, ScriptedDriver, scripted_head_motion
from study.engine import SessionEngine
from study.errors import SessionError
from study.export import load_answers, load_poses, load_ssq
from viewer.backends.base import FrameInput, HeadSample, InputEvent
from viewer.backends.headless import HeadlessBackend
from viewer.renderer import StimulusTextures
from viewer.session_runner import SessionRunner, run_session
from viewer.textures import StimulusLoader

EXPOSURE_S, POSE_HZ, FRAME_HZ = 1.0, 10.0, 10.0


@pytest.fixture
def tiny_study(tmp_path):
    db = make_study(tmp_path, exposure_s=EXPOSURE_S, pose_rate_hz=POSE_HZ)
    yield db
    db.close()


def test_scripted_session_writes_every_answer_and_the_poses(tiny_study):
    db = tiny_study
    driver = ScriptedDriver(RaterModel(seed=5), motion_seed=2)
    engine = SessionEngine.start(db, "P01")
    # a few steps answered elsewhere first: the runner continues where the session stands
    driver.run(engine, max_steps=3)
    engine = SessionEngine.resume(db, "P01")
    seen = []
    summary = run_session(engine, HeadlessBackend(32, 32), driver=driver, frame_hz=FRAME_HZ, on_step=seen.append)
    assert summary.completed and seen[-1].kind == "done"

    answers = load_answers(db.url)
    trials = len(engine.trials)
    assert len(answers) == trials * 3          # ACR overall + VAR clarity + VAR detail per trial
    assert len(load_ssq(db.url)) == 32
    # the values went through the panel's key path unchanged
    model = RaterModel(seed=5)
    steps = {s.key: s for s in seen}          # every rating step was once the step after a submit
    for row in answers.itertuples():
        key = f"trial/{row.trial_index}/{row.scale}/{row.item}"
        assert row.value == model.value("P01", steps[key])
        # answered on the first frame after the driver's response time
        assert row.response_time_s == pytest.approx(model.response_time_s("P01", steps[key]), abs=1.0 / FRAME_HZ + 1e-6)

    poses = load_poses(db.url)
    assert sorted(poses.trial_index.unique()) == list(range(trials))
    for index, group in poses.groupby("trial_index"):
        assert abs(len(group) - EXPOSURE_S * POSE_HZ) <= 1
        assert group.t.min() == 0.0 and group.t.max() < EXPOSURE_S
        script = np.array(scripted_head_motion(2, "P01", index, EXPOSURE_S, POSE_HZ))
        for sample in group.itertuples():
            row = script[np.searchsorted(script[:, 0], sample.t + 1e-9, side="right") - 1]
            assert (sample.yaw_deg, sample.pitch_deg) == (pytest.approx(row[1], abs=1e-6), pytest.approx(row[2], abs=1e-6))

    with db.engine.connect() as connection:
        timing = connection.execute(sa.text("select detail from event where kind = 'frame_timing'")).scalars().all()
    assert len(timing) == trials


def test_headless_needs_a_driver(tiny_study):
    engine = SessionEngine.start(tiny_study, "P02")
    with pytest.raises(SessionError, match="--driver FILE or --simulate SEED"):
        run_session(engine, "headless")
    assert engine.current().key == "instructions"


class _CompositorRecorder(HeadlessBackend):
    """Headless, plus the state a compositor's fadeToColor would be in (OpenVR draws it over everything)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compositor_grey = False
        self.grey_fades = 0
        self.panel_frames_under_grey = self.panel_frames = 0

    def fade_to_grey(self, seconds, grey):
        self.compositor_grey = grey
        self.grey_fades += grey

    def draw(self, frame):
        if frame.panel is not None:
            self.panel_frames += 1
            self.panel_frames_under_grey += self.compositor_grey
        return super().draw(frame)


def test_the_compositor_grey_covers_switches_but_never_a_panel(tiny_study):
    engine = SessionEngine.start(tiny_study, "P01")
    backend = _CompositorRecorder(16, 16)
    run_session(engine, backend, driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1), frame_hz=FRAME_HZ)
    assert backend.grey_fades == len(engine.trials)
    assert backend.panel_frames > 0 and backend.panel_frames_under_grey == 0


def test_resumed_at_a_stimulus_that_stimulus_decodes_first(tiny_study, monkeypatch):
    driver = ScriptedDriver(RaterModel(seed=1), motion_seed=1)
    engine = SessionEngine.start(tiny_study, "P01")
    while engine.current().kind != "stimulus":
        driver.run(engine, max_steps=1)
    engine = SessionEngine.resume(tiny_study, "P01")
    requested = []
    request = StimulusLoader.request
    monkeypatch.setattr(StimulusLoader, "request", lambda self, path: (requested.append(path), request(self, path))[1])

    class Stop(Exception):
        pass

    def stop(self, step):
        raise Stop

    monkeypatch.setattr(SessionRunner, "_stimulus", stop)
    with pytest.raises(Stop):
        run_session(engine, HeadlessBackend(16, 16), driver=driver, frame_hz=FRAME_HZ, preload=2)
    assert requested[0] == engine.current().stimulus_path and len(requested) == 3


def test_the_wait_for_a_stimulus_counts_in_its_frame_times(tiny_study, monkeypatch):
    get = StimulusTextures.get

    def slow_blocking_get(self, path, *, block=False):
        if block:
            time.sleep(0.3)
        return get(self, path, block=block)

    monkeypatch.setattr(StimulusTextures, "get", slow_blocking_get)
    engine = SessionEngine.start(tiny_study, "P01")
    run_session(engine, HeadlessBackend(16, 16), driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1),
                frame_hz=FRAME_HZ, preload=0)
    with tiny_study.engine.connect() as connection:
        timing = connection.execute(sa.text("select detail from event where kind = 'frame_timing'")).scalars().all()
    assert len(timing) == len(engine.trials)
    assert all(json.loads(detail)["max_ms"] >= 300 for detail in timing)


class _StandingHeadset(HeadlessBackend):
    """Headless, with a tracker that puts the head 1.7 m above the tracking origin, off centre."""

    HEAD = np.array([0.3, 1.7, -0.2])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.panel_centres = []

    def poll_input(self):
        polled = super().poll_input()
        return FrameInput(head=polled.head, pointer=polled.pointer, events=polled.events, head_position=self.HEAD)

    def draw(self, frame):
        if frame.panel is not None:
            self.panel_centres.append(frame.panel.center)
        return super().draw(frame)


def test_the_panel_hangs_ahead_of_the_tracked_head_not_of_the_origin(tiny_study):
    backend = _StandingHeadset(16, 16)
    run_session(SessionEngine.start(tiny_study, "P01"), backend,
                driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1), frame_hz=FRAME_HZ)
    offsets = np.array(backend.panel_centres) - _StandingHeadset.HEAD
    assert len(offsets) > 0
    np.testing.assert_allclose(offsets[:, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(np.hypot(offsets[:, 0], offsets[:, 2]), 1.5, atol=1e-9)


class _CountingDisplay(HeadlessBackend):
    """Headless, with display statistics that count the frames drawn since the last call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn = 0

    def draw(self, frame):
        self.drawn += 1
        return super().draw(frame)

    def timing_stats(self):
        counted, self.drawn = self.drawn, 0
        return {"display_frames": counted}


def test_display_statistics_cover_the_same_frames_as_the_frame_times(tiny_study):
    engine = SessionEngine.start(tiny_study, "P01")
    run_session(engine, _CountingDisplay(16, 16), driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1),
                frame_hz=FRAME_HZ)
    with tiny_study.engine.connect() as connection:
        details = [json.loads(d) for d in connection.execute(
            sa.text("select detail from event where kind = 'frame_timing'")).scalars()]
    assert len(details) == len(engine.trials)
    assert all(d["display_frames"] == d["frames"] for d in details)


def test_during_the_panels_every_preloaded_stimulus_gets_a_texture(tiny_study):
    # two texture slots and preload 2: once a stimulus has been shown, both next ones must fit
    engine = SessionEngine.start(tiny_study, "P01")
    backend = HeadlessBackend(16, 16)
    prepared = []

    def check(step):
        if step.kind != "stimulus" or step.trial_index == 0:
            return
        stimuli = backend.renderer.stimuli
        upcoming = [step.stimulus_path, *engine.upcoming_stimuli(1)]
        for path in upcoming:
            if stimuli.get(path) is None:
                stimuli.loader.wait(path)
        for _ in range(5):
            stimuli.update()
        prepared.append(all(stimuli.get(path) is not None for path in upcoming))

    run_session(engine, backend, driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1), frame_hz=FRAME_HZ,
                preload=2, on_step=check)
    assert len(prepared) == len(engine.trials) - 1 and all(prepared)


class _TrackedHeadset(HeadlessBackend):
    """Headless with a tracker: the head turns by itself at 20°/s, each pose stamped with a runtime time;
    after ``lose_after`` frames the runtime goes away, as an OpenXR runtime reports it."""

    capabilities = HeadlessBackend.capabilities.__class__(
        stereo=False, head_tracking=True, pointer=False, returns_pixels=True, paced=False)
    #: the runtime's clock runs this far ahead of the session's
    EPOCH_NS = 1_000_000_000

    def __init__(self, *args, lose_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.polls = 0
        self.lose_after = lose_after

    @staticmethod
    def yaw_at(monotonic_ns):
        return 20.0 * monotonic_ns / 1e9

    def head_at(self, monotonic_ns):
        from viewer.camera import view_rotation

        return HeadSample(view_rotation(self.yaw_at(monotonic_ns), 0.0), runtime_time_ns=self.EPOCH_NS + monotonic_ns)

    def poll_input(self):
        polled = super().poll_input()
        self.polls += 1
        from viewer.camera import view_rotation

        events = polled.events
        if self.lose_after is not None and self.polls > self.lose_after:
            events += (InputEvent("quit", key="the OpenXR runtime went away (XR_ERROR_INSTANCE_LOST in xrWaitFrame)"),)
        return FrameInput(head=view_rotation(self.yaw_at(round(1e9 * self.polls / FRAME_HZ)), 0.0), events=events)

    def describe(self):
        return {"runtime": "a tracked test double"}


def test_with_a_tracker_the_stored_poses_are_the_trackers_with_its_time_stamps(tiny_study):
    engine = SessionEngine.start(tiny_study, "P01")
    summary = run_session(engine, _TrackedHeadset(16, 16), driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1),
                          frame_hz=FRAME_HZ)
    assert summary.completed and summary.interrupted is None
    poses = load_poses(tiny_study.url)
    assert poses.runtime_time_ns.notna().all() and len(poses) == len(engine.trials) * EXPOSURE_S * POSE_HZ
    # the tracker turns 20°/s, the scripted head motion would not: within each showing, the stored yaw is the
    # tracker's at the sample's runtime time, less the turn that puts the stimulus's start yaw ahead
    stamps = poses.runtime_time_ns.to_numpy(dtype=np.int64)
    tracker = _TrackedHeadset.yaw_at(stamps - _TrackedHeadset.EPOCH_NS)
    offset = ((poses.yaw_deg.to_numpy() - tracker + 180.0) % 360.0) - 180.0
    for _, rows in poses.assign(offset=offset).groupby(["trial_index", "presentation"]):
        assert np.ptp(rows.offset) < 1e-6 and np.all(np.diff(rows.runtime_time_ns.to_numpy(dtype=np.int64)) == 1e9 / POSE_HZ)
    with tiny_study.engine.connect() as connection:
        (described,) = connection.execute(sa.text("select detail from event where kind = 'backend'")).scalars().all()
    assert json.loads(described) == {"backend": "headless", "runtime": "a tracked test double"}


def test_a_runtime_that_goes_away_interrupts_the_run_with_its_reason(tiny_study):
    engine = SessionEngine.start(tiny_study, "P01")
    backend = _TrackedHeadset(16, 16, lose_after=100)   # 10 s in: past the instructions, into the SSQ
    summary = run_session(engine, backend, driver=ScriptedDriver(RaterModel(seed=1), motion_seed=1), frame_hz=FRAME_HZ)
    assert not summary.completed and summary.interrupted.endswith("(XR_ERROR_INSTANCE_LOST in xrWaitFrame)")
    with tiny_study.engine.connect() as connection:
        (detail,) = connection.execute(sa.text("select detail from event where kind = 'interrupted'")).scalars().all()
    assert json.loads(detail)["reason"] == summary.interrupted
    done, total = engine.progress()
    assert 0 < done < total and len(load_ssq(tiny_study.url)) == done - 1   # the instructions, then SSQ items
    assert SessionEngine.resume(tiny_study, "P01").current().kind == "ssq"
