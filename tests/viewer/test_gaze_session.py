"""Eye gaze through whole scripted sessions: the synthetic tracker into the store, the export and the report;
the stimulus frame under a turned panorama; the validation step with "recalibrate"; a backend without eyes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from _studykit import protocol_toml, write_panorama, write_stimuli

from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.export import export_study, load_answers, load_gaze, load_poses, load_validation
from study.scanpath import TrackerModel, trial_gaze
from study.store import add_participant, create_study, import_stimuli
from viewer.backends.base import HeadSample
from viewer.backends.headless import HeadlessBackend
from viewer.gaze import GazeReading, GazeSource, SyntheticGaze, world_directions
from viewer.session_runner import SessionRunner, run_session

EXPOSURE_S, POSE_HZ, FRAME_HZ = 1.0, 10.0, 30.0
VALIDATION = "\n[validation]\nthreshold_deg = 1.5\n"


def gaze_study(folder: Path, extra: str = VALIDATION):
    """The tiny protocol (1 s stimuli) with the default validation (3 × 3 at ±15°, 1.5 s, threshold 1.5°)."""
    write_panorama(folder / "train.png", seed=99)
    protocol = folder / "tiny.toml"
    protocol.write_text(protocol_toml(exposure_s=EXPOSURE_S, pose_rate_hz=POSE_HZ) + extra, encoding="utf-8")
    db = create_study(folder / "study.sqlite", protocol)
    import_stimuli(db, write_stimuli(folder / "stimuli"))
    add_participant(db, "P01")
    return db


def events(db, kind: str) -> list[dict]:
    with db.engine.connect() as connection:
        return [json.loads(d) if isinstance(d, str) else d for d in connection.execute(
            sa.text("select detail from event where kind = :kind order by id"), {"kind": kind}).scalars()]


@pytest.fixture
def biased(tmp_path):
    """A finished session with a synthetic tracker 1° off to the right."""
    db = gaze_study(tmp_path)
    engine = SessionEngine.start(db, "P01")
    gaze = SyntheticGaze(7, tracker=TrackerModel(bias_deg=(1.0, 0.0), noise_deg=0.1))
    summary = run_session(engine, HeadlessBackend(32, 32, gaze=gaze), driver=ScriptedDriver(RaterModel(1), motion_seed=7),
                          frame_hz=FRAME_HZ)
    assert summary.completed
    yield db, engine
    db.close()


def test_a_tracker_with_a_known_1_degree_bias_is_measured_by_the_sessions_validation(biased):
    db, _ = biased
    validation = load_validation(db)
    overall = validation[validation.level == "overall"].iloc[0]
    assert overall.accuracy_deg == pytest.approx(1.0, abs=0.05) and overall.attempt == 1 and not overall.recalibrate
    targets = validation[validation.level == "target"]
    assert len(targets) == 9 and targets.accuracy_deg.between(0.95, 1.05).all()
    assert set(zip(targets.target_yaw_deg, targets.target_pitch_deg)) == {(y, p) for y in (-15, 0, 15) for p in (-15, 0, 15)}
    # 1.5 s per target at 120 Hz, the first 0.5 s of each left out: about 120 measured samples each
    assert targets.n_samples.between(115, 125).all() and overall.gaze_source == "synthetic"
    (source,) = events(db, "gaze")
    assert source["supported"] is True and source["source"] == "synthetic" and source["bias_deg"] == [1.0, 0.0]


def test_the_synthetic_tracker_goes_through_the_session_into_the_store_in_the_stimulus_frame(biased):
    db, engine = biased
    gaze = load_gaze(db)
    assert sorted(gaze.trial_index.unique()) == [t.index for t in engine.trials]
    tracker = TrackerModel(bias_deg=(1.0, 0.0), noise_deg=0.1)
    for index, rows in gaze.groupby("trial_index"):
        # every sample of the scripted eye, at its own time, stored once and unchanged by the frame conversion
        recording = trial_gaze(7, "P01", index, EXPOSURE_S, tracker=tracker)
        np.testing.assert_allclose(rows.t, recording.t, atol=1e-12)
        assert (rows.valid.to_numpy() == recording.valid).all()
        valid = recording.valid
        np.testing.assert_allclose(rows.yaw_deg.to_numpy()[valid], recording.yaw_deg[valid], atol=1e-9)
        np.testing.assert_allclose(rows.pitch_deg.to_numpy()[valid], recording.pitch_deg[valid], atol=1e-9)
        assert rows.yaw_deg[~rows.valid].isna().all()
    quality = events(db, "gaze_quality")
    assert len(quality) == len(engine.trials) and all(110 <= q["rate_hz"] <= 130 for q in quality)
    # the scripted head follows the scripted eye: it looks within a few degrees of where the eye does
    poses = load_poses(db)
    merged = pd.merge_asof(poses.sort_values("t"), gaze[gaze.valid].sort_values("t")[["t", "trial_index", "yaw_deg"]],
                           on="t", by="trial_index", suffixes=("", "_gaze"))
    apart = np.abs((merged.yaw_deg - merged.yaw_deg_gaze + 180) % 360 - 180)
    assert np.nanmedian(apart) < 15


def test_the_export_package_and_the_report_carry_the_gaze(biased, tmp_path):
    from analysis.report import analyze, render_html, write_report
    from analysis.report import StudyContext
    from study.export import load_stimuli

    db, _ = biased
    files = export_study(db, tmp_path / "export")
    gaze = pd.read_csv(files["gaze.csv"])
    assert len(gaze) == len(load_gaze(db)) and {"stimulus", "scene"} <= set(gaze.columns)
    validation = pd.read_csv(files["validation.csv"])
    assert list(validation.level) == ["overall"] + ["target"] * 9
    assert len(pd.read_csv(files["validation_samples.csv"])) == 9 * 180
    context = StudyContext(protocol=db.protocol, stimuli=load_stimuli(db), gaze=load_gaze(db), validation=load_validation(db))
    result = analyze(load_answers(db), poses=load_poses(db), context=context, screening="none")
    assert result.gaze is not None and result.gaze.validation.accuracy_deg.iloc[0] == pytest.approx(1.0, abs=0.05)
    tests = load_answers(db)
    assert len(result.gaze.fixations) > 0
    assert set(result.gaze.stimulus_maps) == set(tests.loc[~tests.training, "stimulus"])   # training gaze left out
    written = write_report(result, tmp_path / "report")
    page = written["report.html"].read_text(encoding="utf-8")
    for heading in ("Eye-tracker validation", "Saliency maps", "Head against eye gaze", "Scanpaths"):
        assert heading in page
    # these stimuli were not generated: no masks, and the report says so instead of a table
    assert "no stimulus names generator masks" in page and "gaze_validation.csv" in written


def test_study_export_gaze_writes_every_sample_with_its_codebook(biased, tmp_path):
    from typer.testing import CliRunner

    from panostudy.cli import app

    db, _ = biased
    out = tmp_path / "files"
    out.mkdir()
    done = CliRunner().invoke(app, ["study", "export", "--db", str(tmp_path / "study.sqlite"), "--out", str(out / "answers.csv"),
                                    "--gaze", str(out / "gaze.csv")])
    assert done.exit_code == 0, done.output
    written = pd.read_csv(out / "gaze.csv")
    stored = load_gaze(db, interrupted=True)
    assert len(written) == len(stored) and written.valid.sum() == stored.valid.sum()
    assert written.loc[written.valid, "yaw_deg"].to_numpy() == pytest.approx(stored.loc[stored.valid, "yaw_deg"].to_numpy())
    assert written.loc[~written.valid, "yaw_deg"].isna().all()          # an invalid sample has no direction
    codebook = (out / "gaze.codebook.md").read_text(encoding="utf-8")
    assert "XrEyeGazeSampleTimeEXT" in codebook and "yaw_deg" in codebook


class _WorldGaze(GazeSource):
    """An eye that looks at one fixed direction of the room (world yaw 50°, pitch 10°), 120 times a second."""

    name = "fixed"

    def start(self, onset_ns, showing):
        self.onset, self.duration = onset_ns, showing.duration_s

    def stop(self, at_ns):
        t = np.arange(0.0, min((at_ns - self.onset) / 1e9, self.duration), 1 / 120)
        direction = world_directions([50.0], [10.0], np.eye(3))[0]
        return [GazeReading(float(s), direction, True) for s in t]


class _Facing(HeadlessBackend):
    """A tracked stand-in on the simulated clock whose head faces room yaw 70° throughout."""

    capabilities = HeadlessBackend.capabilities.__class__(
        stereo=False, head_tracking=True, pointer=False, returns_pixels=True, paced=False)
    HEAD = 70.0

    def head_at(self, monotonic_ns):
        from viewer.camera import view_rotation

        return HeadSample(view_rotation(self.HEAD, 0.0))

    def poll_input(self):
        from viewer.backends.base import FrameInput
        from viewer.camera import view_rotation

        return FrameInput(head=view_rotation(self.HEAD, 0.0), events=super().poll_input().events)


def test_under_a_turned_panorama_gaze_is_stored_in_the_stimulus_frame_like_the_poses(tmp_path):
    # every stimulus starts with its yaw 40° straight ahead: facing room yaw 70°, the panorama is turned by -30°
    db = gaze_study(tmp_path, "\n[view]\nstart_yaw_deg = 40.0\n")
    engine = SessionEngine.start(db, "P01")
    summary = run_session(engine, _Facing(16, 16, gaze=_WorldGaze()), driver=ScriptedDriver(RaterModel(1)),
                          frame_hz=FRAME_HZ)
    assert summary.completed
    gaze, poses = load_gaze(db), load_poses(db)
    assert sorted(gaze.trial_index.unique()) == [t.index for t in engine.trials]
    # the head looks at the stimulus's start yaw; the eye, 20° to the head's left in the room, at 20° of it
    assert poses.yaw_deg.to_numpy() == pytest.approx(40.0) and poses.pitch_deg.to_numpy() == pytest.approx(0.0, abs=1e-9)
    assert gaze.yaw_deg.to_numpy() == pytest.approx(20.0) and gaze.pitch_deg.to_numpy() == pytest.approx(10.0)
    db.close()


class _Experimenter:
    """Stands in for the console window: after the first "recalibrate" asks for a repeat, after the second goes
    on (one press each time the console comes to say it); records every status it is sent."""

    mirror = None

    def __init__(self):
        self.statuses = []
        self.decisions = ["repeat_validation", "accept_validation"]
        self.armed = True

    def commands(self):
        state = self.statuses[-1]["state"] if self.statuses else None
        if state != "validation_result":
            self.armed = True
        elif self.armed and self.decisions:
            self.armed = False
            return [{"command": self.decisions.pop(0)}]
        return []

    def send(self, status, force=False):
        self.statuses.append(status)


def test_a_validation_above_the_threshold_says_recalibrate_and_the_experimenter_repeats_it(tmp_path):
    db = gaze_study(tmp_path)
    engine = SessionEngine.start(db, "P01")
    experimenter = _Experimenter()
    gaze = SyntheticGaze(3, tracker=TrackerModel(bias_deg=(0.0, 2.0), noise_deg=0.1))   # 2° off: above 1.5°
    with HeadlessBackend(16, 16, gaze=gaze) as backend:
        runner = SessionRunner(engine, backend, driver=ScriptedDriver(RaterModel(1)), frame_hz=FRAME_HZ, preload=2,
                               console=experimenter, station="lab-1")
        summary = runner.run()
    assert summary.completed and not experimenter.decisions
    validation = load_validation(db)
    overall = validation[validation.level == "overall"]
    assert list(overall.attempt) == [1, 2] and overall.recalibrate.all()
    assert overall.accuracy_deg.to_numpy() == pytest.approx(2.0, abs=0.05)
    assert [e["command"] for e in events(db, "console")] == ["repeat_validation", "accept_validation"]
    waiting = [s for s in experimenter.statuses if s["state"] == "validation_result"]
    assert waiting and waiting[0]["validation_text"].startswith("RECALIBRATE. Validation 1: accuracy 2.0")
    assert set(waiting[0]["controls"]) == {"repeat_validation", "accept_validation", "abort"}
    assert any(s["state"] == "validating" for s in experimenter.statuses)
    assert experimenter.statuses[-1]["gaze_text"].startswith("Eye tracking: synthetic, last trial 1")
    db.close()


def test_without_an_eye_tracker_the_session_says_so_skips_the_validation_and_records_head_poses(tmp_path):
    from analysis.gaze_summary import NO_GAZE_NOTE
    from analysis.report import StudyContext, analyze, render_html

    db = gaze_study(tmp_path)
    engine = SessionEngine.start(db, "P01")
    experimenter = _Experimenter()
    with HeadlessBackend(16, 16) as backend:
        summary = SessionRunner(engine, backend, driver=ScriptedDriver(RaterModel(1)), frame_hz=FRAME_HZ, preload=2,
                                console=experimenter).run()
    assert summary.completed
    reason = "the headless backend was given no eye tracker"
    assert events(db, "gaze") == [{"supported": False, "reason": reason}]
    (skipped,) = events(db, "validation_skipped")
    assert skipped["reason"] == reason and skipped["at_step"] == "validation"
    assert load_gaze(db).empty and load_validation(db).empty and len(load_poses(db)) > 0
    assert experimenter.statuses[-1]["gaze_text"] == f"Eye tracking: not available ({reason}): head pose only"
    context = StudyContext(gaze=load_gaze(db), validation=load_validation(db))
    page = render_html(analyze(load_answers(db), context=context, screening="none"),
                       {"mos": b"", "bias": b"", "distributions": b"", "heatmaps": b"", "sos": b"", "ssq": b""})
    assert page.count(NO_GAZE_NOTE[1:]) == 1 and "Saliency maps" not in page
    db.close()


def test_a_validation_target_is_drawn_where_it_is(headless):
    backend = headless(129, 129, fov_deg=10.0)
    from viewer.backends.base import Frame

    def image(yaw, pitch):
        return backend.draw(Frame(fade=1.0, target=world_directions([yaw], [pitch], np.eye(3))[0]))[0].astype(int)

    centre = image(0.0, 0.0)
    assert centre[64, 64].min() > 200                       # the light centre
    assert centre[64, 64 + 4].max() < 40 and centre[64 - 4, 64].max() < 40   # the dark disc around it
    assert np.abs(centre[64, 64 + 20] - 128).max() <= 3 and np.abs(centre[5, 5] - 128).max() <= 3   # neutral grey
    right = image(3.0, 0.0)
    # 3° right at a 10° field of view: tan 3° / tan 5° of the half-width to the right
    column = 64 + round(np.tan(np.radians(3.0)) / np.tan(np.radians(5.0)) * 64)
    assert right[64, column].min() > 150 and right[64, 64].max() < 140
