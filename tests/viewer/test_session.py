"""A whole scripted session through the headless backend, with the real engine and store."""

import numpy as np
import pytest
import sqlalchemy as sa
from _studykit import make_study

from study.driver import RaterModel, ScriptedDriver, scripted_head_motion
from study.engine import SessionEngine
from study.errors import SessionError
from study.export import load_answers, load_poses, load_ssq
from viewer.backends.headless import HeadlessBackend
from viewer.session_runner import run_session

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
