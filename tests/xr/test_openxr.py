"""The OpenXR backend against a real OpenXR runtime: Monado with its simulated headset and controllers.

Marked ``xr``: ``make test-xr`` runs them in a Debian 13 root with Monado and Xvfb; plain ``make test``
skips them with the reason. The no-runtime test needs no runtime and runs everywhere.
What Monado cannot stand in for (SteamVR's quirks, real frame pacing, a real headset's optics and
controllers, the VIVE Pro Eye's eyes) is listed in the README.
"""

from __future__ import annotations

import json
import math
import shlex
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import py360convert
import pytest
from _panoramas import smooth_panorama
from _xrkit import make_xr_study
from PIL import Image

from study.export import load_answers, load_poses
from viewer.backends.base import Frame

xr_runtime = pytest.mark.xr


def _cli(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "panostudy", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _events(db_path, kind: str) -> list[str]:
    with sqlite3.connect(db_path) as connection:
        return [row[0] for row in connection.execute("select detail from event where kind = ?", (kind,))]


def _count(db_path, table: str) -> int:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(f"select count(*) from {table}").fetchone()[0]


def _frames(backend, count: int, frame: Frame = Frame(fade=1.0)):
    user = None
    for _ in range(count):
        user = backend.poll_input()
        backend.draw(frame)
    return user


@xr_runtime
def test_session_runs_focused_with_the_action_set_attached_and_bindings_accepted(monado):
    import xr

    from viewer.backends.openxr import OpenXRBackend

    backend = OpenXRBackend()
    backend.open()
    try:
        user = _frames(backend, 15)
        assert backend._state == xr.SessionState.FOCUSED and not user.events
        info = backend.describe()
        assert info["runtime"].startswith("Monado") and info["system"] == "Monado: Simulated HMD"
        assert info["action_set_attached"] is True
        assert info["bindings_accepted"] == ["/interaction_profiles/htc/vive_controller",
                                             "/interaction_profiles/khr/simple_controller"]
        assert {"XR_KHR_opengl_enable", "XR_KHR_convert_timespec_time"} <= set(info["extensions_enabled"])
        # Monado offers the gaze extension, but its simulated headset has no eyes to track
        assert info["extensions_offered"]["XR_EXT_eye_gaze_interaction"] is True
        assert info["eye_gaze_supported"] is False
        assert info["swapchain_format"] in ("0x8c43", "0x8c41")   # sRGB
        assert info["reference_space"] == "STAGE"
        # the runtime bound the simulated controllers through our suggested simple_controller bindings
        for hand_path in backend._hand_paths.values():
            profile = xr.get_current_interaction_profile(backend.session, hand_path).interaction_profile
            assert xr.path_to_string(backend.instance, profile) == "/interaction_profiles/khr/simple_controller"
        # ... so the aim pose gives a laser, along the controller's -z axis
        assert user.pointer is not None and np.isclose(np.linalg.norm(user.pointer.direction), 1.0)
        # a standing head, in the stage space
        assert 1.0 < user.head_position[1] < 2.2
        np.testing.assert_allclose(user.head @ user.head.T, np.eye(3), atol=1e-6)
        assert backend.timing_stats()["runtime_frames"] == 15 and backend.timing_stats()["runtime_frames"] == 0
        backend.tick()   # the haptic pulse is accepted
        assert backend.poll_input().events == ()
    finally:
        backend.close()
    backend.close()   # twice is harmless


@xr_runtime
def test_head_at_converts_the_monotonic_clock_and_works_beside_the_render_thread(monado):
    from viewer.backends.openxr import OpenXRBackend

    backend = OpenXRBackend()
    backend.open()
    try:
        _frames(backend, 3)
        now = time.monotonic_ns()
        # XR_KHR_convert_timespec_time: the same clock, another epoch
        assert backend.runtime_time(now + 10_000_000) - backend.runtime_time(now) == 10_000_000
        # ... the runtime's own: the frame it paces is predicted for a display time near now
        assert abs(backend._frame_state.predicted_display_time - backend.runtime_time(now)) < 200_000_000
        assert backend.head_at(now).runtime_time_ns == backend.runtime_time(now)
        samples, errors = [], []

        def sample():
            try:
                for _ in range(100):
                    samples.append(backend.head_at(time.monotonic_ns()))
                    time.sleep(0.002)
            except BaseException as error:   # noqa: BLE001 - reported below
                errors.append(error)

        sampler = threading.Thread(target=sample)
        sampler.start()
        while sampler.is_alive():
            _frames(backend, 1)
        sampler.join()
        assert not errors and len(samples) == 100 and all(s is not None for s in samples)
        stamps = [s.runtime_time_ns for s in samples]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
        for s in samples:
            np.testing.assert_allclose(s.head @ s.head.T, np.eye(3), atol=1e-6)
            assert s.fov_deg is None and 1.0 < s.position[1] < 2.2
    finally:
        backend.close()
    assert backend.head_at(time.monotonic_ns()) is None   # closed: no pose, no crash


def _e2p_fov_deg(tangent: float, pixels: int) -> float:
    """e2p's field of view whose outermost pixel centres fall on those of a frustum edge at ``tangent``."""
    return 2.0 * math.degrees(math.atan(tangent * (pixels - 1) / pixels))


@xr_runtime
@pytest.mark.parametrize("turn", [None, (120.0, 30.0, 15.0)], ids=["as-tracked", "turned-space"])
def test_each_submitted_view_is_e2p_of_the_stimulus_for_its_pose_and_fov(monado, tmp_path, turn):
    import xr
    from scipy.spatial.transform import Rotation

    from viewer.backends.openxr import OpenXRBackend
    from viewer.camera import tangents_from_fov, view_rotation, yaw_pitch_roll

    pixels = smooth_panorama(256)
    path = tmp_path / "smooth.png"
    Image.fromarray(pixels).save(path)
    from viewer.console_link import ConsoleLink, read_mirror

    backend = OpenXRBackend(read_pixels=True)
    backend.open()
    link = ConsoleLink()   # its shared memory and mirror only: no console process is started
    try:
        if turn is not None:
            # the same tracking in a space turned against the stage: far-off view directions, rolled
            x, y, z, w = Rotation.from_matrix(view_rotation(*turn)).inv().as_quat()
            backend.world_space = xr.create_reference_space(backend.session, xr.ReferenceSpaceCreateInfo(
                reference_space_type=xr.ReferenceSpaceType.STAGE,
                pose_in_reference_space=xr.Posef(orientation=xr.Quaternionf(x, y, z, w))))
            backend._spaces.append(backend.world_space)
        texture = backend.renderer.stimuli.get(str(path), block=True)
        # the console's mirror, as the runner attaches it: it takes the first left eye drawn (then 5 a second)
        backend.mirror = link.mirror
        images = []
        while len(images) < 2:
            backend.poll_input()
            images = backend.draw(Frame(stimulus=texture))
        assert len(backend.last_views) == 2
        for image, (rotation, _, fov) in zip(images, backend.last_views):
            tangents = tangents_from_fov(*fov)
            # Monado's simulated views are symmetric, which e2p needs
            assert math.isclose(-tangents.left, tangents.right) and math.isclose(-tangents.bottom, tangents.top)
            height, width = image.shape[:2]
            yaw, pitch, roll = yaw_pitch_roll(rotation)
            if turn is not None:
                assert abs(yaw) > 60 and abs(pitch) > 10 and abs(roll) > 5
            reference = py360convert.e2p(
                pixels, (_e2p_fov_deg(tangents.right, width), _e2p_fov_deg(tangents.top, height)), yaw, pitch,
                (height, width), in_rot_deg=roll,
            )
            error = np.abs(image.astype(np.float64) - reference.astype(np.float64)).mean()
            assert error <= 2.0, f"view at yaw {yaw:.1f}, pitch {pitch:.1f}, roll {roll:.1f}: mean absolute error {error:.2f}/255"
        # the experimenter's mirror got the left eye's image as submitted (at Monado's small size, unscaled)
        frames, mirrored = read_mirror(link._memory, 0)
        assert frames == 1 and mirrored.shape == images[0].shape
        np.testing.assert_array_equal(mirrored, images[0])
    finally:
        backend.mirror = None
        link.close()
        backend.close()


@xr_runtime
def test_a_scripted_session_through_the_cli_stores_every_answer_once_and_poses_with_runtime_times(monado, tmp_path):
    db, answers_file, expected = make_xr_study(tmp_path)
    db.close()
    study = tmp_path / "study" / "study.sqlite"
    done = _cli("session", "run", "--db", study, "--participant", "P01", "--backend", "openxr",
                "--driver", answers_file, env=monado.env)
    assert done.returncode == 0, done.stderr
    assert "P01: completed" in done.stdout

    answers = load_answers(study)
    stored = {f"trial/{r.trial_index}/{r.scale}/{r.item}": r.value for r in answers.itertuples()}
    assert len(stored) == len(answers)                    # once each
    assert stored == {k: v for k, v in expected.items() if k.startswith("trial/")}
    assert _count(study, "ssq_answer") == sum(k.startswith("ssq/") for k in expected)

    poses = load_poses(study)
    assert sorted(poses.trial_index.unique()) == list(range(5))
    for _, trial in poses.groupby("trial_index"):
        # 1 s at 10 Hz: the sampler asked xrLocateSpace for the head at each due time, all ten answered
        assert len(trial) == 10 and not trial.interrupted.any()
        stamps = trial.runtime_time_ns.to_numpy(dtype=np.int64)
        assert trial.runtime_time_ns.notna().all() and (np.diff(stamps) > 0).all()
        # each sample is stamped with the runtime time of its own due time on the session clock
        drift = (stamps - stamps[0]) / 1e9 - (trial.t.to_numpy() - trial.t.iloc[0])
        assert np.abs(drift).max() < 1e-6
        assert trial.fov_h_deg.isna().all() and trial.y_m.between(1.0, 2.2).all()   # a headset: no app FOV, a head
    rates = [json.loads(detail) for detail in _events(study, "pose_rate")]
    assert len(rates) == 5 and all(r["stored"] == r["expected"] == 10 for r in rates)
    (described,) = _events(study, "backend")
    assert '"runtime": "Monado' in described and '"eye_gaze_supported": false' in described
    timing = [json.loads(detail) for detail in _events(study, "frame_timing")]
    assert len(timing) == 5
    for trial in timing:
        # the runtime's counts cover the same frames as the session's own frame times
        assert trial["runtime_frames"] == trial["frames"] and trial["runtime_missed"] >= 0


class _Console:
    """Stands in for the console process (its window is Tk's business): asks for the mirror at once, pauses
    during the first test stimulus, resumes once the participant sees the paused panel, records every status."""

    def __init__(self, mirror):
        self.mirror = mirror            # the real shared-memory mirror of viewer.console_link
        self.statuses = []
        self.plan = [
            (lambda s: True, {"command": "mirror", "on": True}),
            (lambda s: s["stimulus"] and s["stimulus_time_s"] > 0.3 and "(test)" in s["step_text"], {"command": "pause"}),
            (lambda s: s["state"] == "paused", {"command": "resume"}),
        ]

    def commands(self):
        if self.plan and self.statuses and self.plan[0][0](self.statuses[-1]):
            return [self.plan.pop(0)[1]]
        return []

    def send(self, status, force=False):
        self.statuses.append(status)


@xr_runtime
def test_the_console_sees_and_controls_an_openxr_session_and_mirrors_its_left_eye(monado, tmp_path):
    from study.driver import ReplayAnswers, ScriptedDriver
    from study.engine import SessionEngine
    from study.export import load_flagged_trials
    from viewer.backends.openxr import OpenXRBackend
    from viewer.console_link import ConsoleLink, read_mirror
    from viewer.session_runner import SessionRunner

    db, answers_file, expected = make_xr_study(tmp_path)
    link = ConsoleLink()   # its shared memory and mirror; the stand-in above plays the window
    console = _Console(link.mirror)
    try:
        engine = SessionEngine.start(db, "P01")
        backend = OpenXRBackend()
        with backend:
            runner = SessionRunner(engine, backend, driver=ScriptedDriver(ReplayAnswers.from_file(answers_file)),
                                   frame_hz=30.0, preload=2, console=console, station="xr-test")
            summary = runner.run()
            width, height = backend._swapchains[0][1]
            frames, mirrored = read_mirror(link._memory, 0)
            backend.mirror = None
            link.mirror.release()
        assert summary.completed and summary.interrupted is None and not console.plan
        # the mirror took the left eye (Monado's recommended 320×240 is under the mirror's size: unscaled)
        assert frames > 3 and mirrored.shape == (height, width, 3) and mirrored.std() > 0
        shown = [s for s in console.statuses if s["stimulus"]]
        assert shown and all(isinstance(s["dropped"], int) and s["dropped"] >= 0 for s in console.statuses)
        assert {s["station"] for s in console.statuses} == {"xr-test"} and console.statuses[-1]["participant"] == "P01"
        assert any(s["pose_text"].startswith("10 Hz due; last trial 10.0 Hz") for s in console.statuses)
        # the paused stimulus: its partial poses kept and flagged, shown again in full
        poses = load_poses(db, interrupted=True)
        (paused,) = poses.loc[poses.interrupted, "trial_index"].unique()
        again = poses[(poses.trial_index == paused) & ~poses.interrupted]
        assert len(again) == 10 and again.runtime_time_ns.notna().all() and set(again.presentation) == {1}
        flags = load_flagged_trials(db)
        assert list(flags.flag) == ["stimulus_interrupted"] and flags.trial_index.tolist() == [paused]
        controls = [json.loads(d)["command"] for d in _events(tmp_path / "study" / "study.sqlite", "console")]
        assert controls == ["pause", "resume"]
        answers = load_answers(db)
        assert len(answers) == sum(k.startswith("trial/") for k in expected)   # every answer once
    finally:
        link.close()
        db.close()


class _Watcher:
    """Stands in for the console window: sends nothing, records every status the session sends."""

    def __init__(self):
        self.mirror = None
        self.statuses = []

    def commands(self):
        return []

    def send(self, status, force=False):
        self.statuses.append(status)


@xr_runtime
def test_monado_reports_eye_gaze_unsupported_so_the_session_says_so_and_goes_on_with_head_poses(monado, tmp_path):
    from study.driver import ReplayAnswers, ScriptedDriver
    from study.engine import SessionEngine
    from study.export import load_gaze, load_validation
    from viewer.backends.openxr import OpenXRBackend
    from viewer.session_runner import SessionRunner

    db, answers_file, expected = make_xr_study(tmp_path, validation=True)
    console = _Watcher()
    try:
        engine = SessionEngine.start(db, "P01")
        backend = OpenXRBackend()
        with backend:
            # Monado offers XR_EXT_eye_gaze_interaction, but its simulated headset has no eyes
            assert backend.gaze_source() is None
            reason = backend.why_no_gaze()
            assert "supportsEyeGazeInteraction is false" in reason
            runner = SessionRunner(engine, backend, driver=ScriptedDriver(ReplayAnswers.from_file(answers_file)),
                                   frame_hz=30.0, preload=2, console=console, station="xr-test")
            summary = runner.run()
        assert summary.completed
        study = tmp_path / "study" / "study.sqlite"
        # the session recorded why it has no eye gaze, skipped the validation, and went on with head poses only
        assert [json.loads(d) for d in _events(study, "gaze")] == [{"supported": False, "reason": reason}]
        assert [json.loads(d) for d in _events(study, "validation_skipped")] == [{"reason": reason,
                                                                                  "at_step": "validation"}]
        assert load_gaze(db).empty and load_validation(db).empty and _count(study, "gaze_sample") == 0
        poses = load_poses(db)
        assert sorted(poses.trial_index.unique()) == list(range(5)) and poses.runtime_time_ns.notna().all()
        assert len(load_answers(db)) == sum(k.startswith("trial/") for k in expected)
        # the console showed it from the first status on
        assert all(s["gaze_text"] == f"Eye tracking: not available ({reason}): head pose only" for s in console.statuses)
        assert console.statuses[-1]["validation_text"] == f"Validation skipped: {reason}."
        assert any(reason in line for line in console.statuses[-1]["log"])
    finally:
        db.close()


@xr_runtime
def test_killing_the_runtime_interrupts_with_one_line_and_resume_completes(monado, tmp_path):
    db, answers_file, expected = make_xr_study(tmp_path)
    db.close()
    study = tmp_path / "study" / "study.sqlite"
    run = subprocess.Popen(
        [sys.executable, "-m", "panostudy", "session", "run", "--db", str(study), "--participant", "P01",
         "--backend", "openxr", "--driver", str(answers_file)],
        env=monado.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _count(study, "answer") < 3:              # the training trial's ratings are in
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        monado.kill()
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 3, (stdout, stderr)          # interrupted, resumable
    ours = [line for line in stdout.splitlines() if "interrupted" in line]
    assert len(ours) == 1 and "XR_ERROR_INSTANCE_LOST" in ours[0], stdout
    (command,) = [line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("resume it with: ")]
    # the station the run recorded (the host name here) comes back with the resume
    assert shlex.split(command)[:-1] == ["panostudy", "session", "resume", "--db", str(study), "--participant", "P01",
                                         "--backend", "openxr", "--station"]
    (interrupted,) = _events(study, "interrupted")
    assert "XR_ERROR_INSTANCE_LOST" in interrupted
    before = load_answers(study)
    assert len(before) >= 3

    monado.start()
    # the very command it printed, with the answer file for the scripted participant
    resumed = _cli(*shlex.split(command)[1:], "--driver", answers_file, env=monado.env)
    assert resumed.returncode == 0, resumed.stderr
    assert "P01: completed" in resumed.stdout
    answers = load_answers(study)
    stored = {f"trial/{r.trial_index}/{r.scale}/{r.item}": r.value for r in answers.itertuples()}
    assert len(stored) == len(answers) == sum(k.startswith("trial/") for k in expected)
    assert stored == {k: v for k, v in expected.items() if k.startswith("trial/")}
    # what was committed before the runtime died is still there, unchanged
    kept = before.merge(answers, on=["trial_index", "scale", "item"], suffixes=("_before", "_after"))
    assert len(kept) == len(before) and (kept.value_before == kept.value_after).all()
    assert (kept.answered_at_before == kept.answered_at_after).all()


def _study_with_nothing_run(tmp_path):
    from _studykit import make_study

    make_study(tmp_path).close()
    return tmp_path / "study.sqlite"


def _nothing_written(study) -> None:
    assert _count(study, "session") == 0 and _count(study, "event") == 0


def _one_line_exit_2(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_without_a_runtime_the_session_stops_before_anything_is_written(tmp_path):
    pytest.importorskip("xr")
    import os

    study = _study_with_nothing_run(tmp_path)
    env = dict(os.environ, XR_RUNTIME_JSON=str(tmp_path / "no_runtime.json"))
    done = _cli("session", "run", "--db", study, "--participant", "P01", "--backend", "openxr", "--simulate", 1, env=env)
    _one_line_exit_2(done, "XR_ERROR_RUNTIME_UNAVAILABLE", f"XR_RUNTIME_JSON={tmp_path / 'no_runtime.json'} does not exist")
    _nothing_written(study)


@xr_runtime
def test_with_the_runtime_installed_but_its_service_down_the_cause_is_named(monado, tmp_path):
    monado.stop()
    study = _study_with_nothing_run(tmp_path)
    done = _cli("session", "run", "--db", study, "--participant", "P01", "--backend", "openxr", "--simulate", 1,
                env=monado.env)
    _one_line_exit_2(done, "XR_ERROR_RUNTIME_FAILURE", "is its service running")
    _nothing_written(study)
