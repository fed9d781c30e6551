"""Replay of a trial from a study database: the data it gathers, the frames it draws, the files it writes."""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from analysis.replay import ReplayTrial, load_replay_trial, render_replay
from panostudy.cli import app
from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.errors import AnalysisError
from study.export import load_poses
from study.scanpath import trial_gaze

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "study"))  # the store tests' study kit
from _studykit import make_study  # noqa: E402

EXPOSURE_S = 3.0


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """P01 has finished the tiny protocol (3 s stimuli, poses at 10 Hz); P02 is enrolled but has not started."""
    folder = tmp_path_factory.mktemp("replay")
    db = make_study(folder, exposure_s=EXPOSURE_S)
    ScriptedDriver(RaterModel(5), motion_seed=2).run(SessionEngine.start(db, "P01"))
    db.close()
    path = folder / "study.sqlite"
    poses = load_poses(path)
    gaze = []
    for (participant, session, trial), _ in poses.groupby(["participant", "session", "trial_index"]):
        recording = trial_gaze(1, participant, trial, EXPOSURE_S)
        gaze.append(pd.DataFrame({"participant": participant, "session": session, "trial_index": trial, "t": recording.t,
                                  "yaw_deg": recording.yaw_deg, "pitch_deg": recording.pitch_deg, "valid": recording.valid}))
    gaze = pd.concat(gaze, ignore_index=True)
    gaze.to_csv(folder / "gaze.csv", index=False)
    return path, gaze


def test_a_trial_gathers_its_stimulus_poses_gaze_and_ratings(study):
    path, gaze = study
    trial = load_replay_trial(path, "P01", 2, gaze=gaze)
    assert (trial.participant, trial.trial_index, trial.duration_s, trial.training) == ("P01", 2, EXPOSURE_S, False)
    assert Path(trial.stimulus).is_file() and trial.scene in ("street", "indoor")
    assert len(trial.poses) == 30 and trial.poses["t"].is_monotonic_increasing
    assert len(trial.gaze) == pytest.approx(EXPOSURE_S * 120, abs=2)
    assert sorted((scale, item) for scale, item, _ in trial.ratings) == [("ACR", "overall"), ("VAR", "clarity"), ("VAR", "detail")]
    assert load_replay_trial(path, "P01", 0).training and load_replay_trial(path, "P01", 0).gaze is None


@pytest.mark.parametrize(
    "participant, trial, session, message",
    [
        ("P01", 9, None, r"participant P01 has no recorded trial 9; their recorded trials are 0–4"),
        ("P02", 1, None, r"participant P02 has nothing recorded in this study; participants with recorded trials: P01"),
        ("P01", 1, 99, r"participant P01 has no session 99"),
    ],
)
def test_a_trial_that_does_not_exist_is_a_one_line_error(study, participant, trial, session, message):
    path, _ = study
    with pytest.raises(AnalysisError, match=message) as caught:
        load_replay_trial(path, participant, trial, session=session)
    assert "\n" not in str(caught.value)


def grey_trial(tmp_path: Path, duration_s: float = 1.0) -> ReplayTrial:
    """A mid-grey stimulus; the head at yaw 30°, the gaze fixed at (60°, 10°) from t = 0."""
    stimulus = tmp_path / "grey.png"
    Image.new("RGB", (512, 256), (128, 128, 128)).save(stimulus)
    t = np.arange(0.0, duration_s, 1 / 30)
    poses = pd.DataFrame({"t": t, "yaw_deg": 30.0, "pitch_deg": 0.0, "roll_deg": 0.0})
    g = np.arange(0.0, duration_s, 1 / 120)
    gaze = pd.DataFrame({"t": g, "yaw_deg": 60.0, "pitch_deg": 10.0, "valid": True})
    return ReplayTrial("P07", 1, 3, str(stimulus), "street", False, duration_s, poses, gaze, (("ACR", "overall", 4),))


def test_the_frame_shows_the_viewport_outline_and_the_gaze_where_they_are(tmp_path):
    sheet = render_replay(grey_trial(tmp_path), tmp_path / "one.png", every_s=10.0, width=512)
    frame = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    assert frame.shape == (256 + 64, 512, 3)  # one frame: the stimulus and the panel under it

    def column(yaw):
        return int((yaw / 360 + 0.5) * 512)

    yellow = (np.abs(frame - [255, 214, 10]).sum(axis=2) < 60)
    red = (np.abs(frame - [255, 59, 48]).sum(axis=2) < 60)
    horizon = yellow[120:136]
    # a 100° viewport around yaw 30°: its sides at −20° and 80° (straight at pitch 0), nothing behind
    assert horizon[:, column(-20) - 3 : column(-20) + 4].any() and horizon[:, column(80) - 3 : column(80) + 4].any()
    assert not yellow[:256, column(130) : column(170)].any()
    rows, cols = np.nonzero(red[:256])
    assert abs(np.median(cols) - column(60)) <= 2 and abs(np.median(rows) - (0.5 - 10 / 180) * 256) <= 2


def test_mp4_and_gif_play_the_trial_in_real_time(study, tmp_path):
    path, gaze = study
    trial = load_replay_trial(path, "P01", 3, gaze=gaze)
    calls = []
    video = render_replay(trial, tmp_path / "replay.mp4", width=256, fps=10, progress=lambda d, n: calls.append((d, n)))
    reader = imageio.get_reader(video, format="FFMPEG")
    assert reader.count_frames() == 31 and reader.get_meta_data()["fps"] == 10.0
    assert reader.get_data(0).shape == (192, 256, 3)
    reader.close()
    assert calls[-1] == (31, 31) and len(calls) == 31
    gif = Image.open(render_replay(trial, tmp_path / "replay.gif", width=256))
    assert gif.n_frames == 31 and gif.info["duration"] == 100 and gif.size == (256, 192)
    sheet = Image.open(render_replay(trial, tmp_path / "sheet.jpg", every_s=1.0, width=256))
    assert sheet.size == (3 * 256 + 2 * 4, 2 * 192 + 4)  # t = 0, 1, 2, 3 s in rows of three
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.gif", "replay.mp4", "sheet.jpg"]


def test_an_interrupted_replay_leaves_no_file(tmp_path):
    def stop(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_replay(grey_trial(tmp_path), tmp_path / "replay.mp4", width=256, fps=10, progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.png"]


@pytest.mark.parametrize(
    "out, options, message",
    [
        ("r.avi", {}, "unknown replay format '.avi'; name the file .mp4 or .gif"),
        ("r.png", {}, r"a contact sheet needs --every SECONDS"),
        ("r.mp4", {"every_s": 2.0}, "--every writes a contact sheet; name the file .png or .jpg"),
        ("r.png", {"every_s": 0.0}, "--every 0.0: give a positive number"),
        ("r.mp4", {"width": 1000}, "--width 1000: give a multiple of 32"),
        ("r.mp4", {"fps": 0.0}, "--fps 0: give a frame rate above 0"),
        ("missing/r.mp4", {}, "does not exist; create it first"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, out, options, message):
    trial = grey_trial(tmp_path)
    with pytest.raises(AnalysisError, match=message):
        render_replay(trial, tmp_path / out, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.png"]


def test_the_replay_command(study, tmp_path):
    path, _ = study
    runner = CliRunner()
    out = tmp_path / "replay.mp4"
    result = runner.invoke(app, ["replay", "--db", str(path), "--participant", "P01", "--trial", "3", "--out", str(out),
                                 "--gaze", str(path.parent / "gaze.csv"), "--width", "256", "--fps", "5"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "replay of P01 trial 3" in result.output
    missing = runner.invoke(app, ["replay", "--db", str(path), "--participant", "P01", "--trial", "7",
                                  "--out", str(tmp_path / "other.mp4")])
    assert missing.exit_code == 2
    assert "participant P01 has no recorded trial 7" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "other.mp4").exists()
    bad_gaze = tmp_path / "gaze.csv"
    pd.DataFrame({"participant": ["P01"], "t": [0.0]}).to_csv(bad_gaze, index=False)
    refused = runner.invoke(app, ["replay", "--db", str(path), "--participant", "P01", "--trial", "3",
                                  "--out", str(tmp_path / "g.mp4"), "--gaze", str(bad_gaze)])
    assert refused.exit_code == 2 and "lacks the columns ['session', 'trial_index', 'yaw_deg'" in refused.output


def test_session_is_the_participants_session_number_not_the_database_id(tmp_path):
    from _studykit import protocol_toml, write_panorama, write_stimuli

    from study.store import add_participant, create_study, import_stimuli

    write_panorama(tmp_path / "train.png", seed=99)
    protocol = tmp_path / "days.toml"
    protocol.write_text(protocol_toml(exposure_s=1.0) + '\n[[sessions]]\nscenes = ["street", "indoor"]\n\n[[sessions]]\n'
                        'scenes = ["street", "indoor"]\ntraining = false\n', encoding="utf-8")
    db = create_study(tmp_path / "study.sqlite", protocol)
    import_stimuli(db, write_stimuli(tmp_path / "stimuli", per_scene=4))
    for code in ("P01", "P02"):
        add_participant(db, code)
    # database ids 1 (P01's first), 2 (P02's first), 3 (P01's second)
    for code in ("P01", "P02", "P01"):
        ScriptedDriver(RaterModel(5), motion_seed=2).run(SessionEngine.start(db, code))
    second = [t for t in SessionEngine.load(db, "P01", 2).trials if t.index == 1][0]
    db.close()
    with pytest.raises(AnalysisError, match="has a trial 1 in sessions 1, 2; choose one with --session"):
        load_replay_trial(tmp_path / "study.sqlite", "P01", 1)
    trial = load_replay_trial(tmp_path / "study.sqlite", "P01", 1, session=2)
    assert trial.session == 2 and trial.stimulus == second.stimulus_path
    with pytest.raises(AnalysisError, match=r"P01 has no session 3 with recorded trials \(their sessions: 1, 2\)"):
        load_replay_trial(tmp_path / "study.sqlite", "P01", 1, session=3)
