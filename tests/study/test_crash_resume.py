"""Crash-resume torture: a scripted session in a subprocess is killed with SIGKILL at 24 seeded random points
and resumed each time. Nothing committed may be lost or recorded twice, the planned order must not change,
and the finished session must hold exactly the answers of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from _studykit import make_study

from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.models import Answer, PoseSample, SsqAnswer, StepDone, Stimulus, StudySession, Trial
from study.store import open_study

REPO = Path(__file__).resolve().parents[2]
RATER_SEED = 21
KILLS = 24

# One life of the participant's session: resume it (or plan it, the first time) and answer until done.
LIFE = """
import sys
from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.errors import SessionError
from study.store import open_study

db = open_study(sys.argv[1])
try:
    engine = SessionEngine.resume(db, "P01")
except SessionError:
    engine = SessionEngine.start(db, "P01")
print("ready", flush=True)
driver = ScriptedDriver(RaterModel(int(sys.argv[2])), pace_s=float(sys.argv[3]))
driver.run(engine, on_step=lambda step: print("step", flush=True))
print("done", flush=True)
"""


def snapshot(db_path: Path | str) -> tuple[dict, list, dict]:
    """(answers by key, planned trials, pose samples per trial) as stored."""
    db = open_study(db_path)
    try:
        with db.Session() as session:
            trials = session.execute(
                sa.select(Trial.index, Stimulus.sha256, Trial.scale_order).join(Stimulus).order_by(Trial.index)
            ).all()
            answers = {
                f"trial/{index}/{scale}/{item}": value
                for index, scale, item, value in session.execute(
                    sa.select(Trial.index, Answer.scale, Answer.item, Answer.value).join(Trial)
                )
            }
            answers |= {
                f"ssq/{phase}/{item}": value
                for phase, item, value in session.execute(sa.select(SsqAnswer.phase, SsqAnswer.item, SsqAnswer.value))
            }
            answers |= {key: None for key in session.scalars(sa.select(StepDone.key))}
            counts = {
                Answer: session.scalar(sa.select(sa.func.count()).select_from(Answer)),
                SsqAnswer: session.scalar(sa.select(sa.func.count()).select_from(SsqAnswer)),
                StepDone: session.scalar(sa.select(sa.func.count()).select_from(StepDone)),
            }
            poses = dict(
                session.execute(sa.select(Trial.index, sa.func.count(PoseSample.id)).join(Trial).group_by(Trial.index)).all()
            )
            status = session.scalar(sa.select(StudySession.status))
        # Every stored row is one distinct step: nothing recorded twice.
        assert sum(counts.values()) == len(answers)
        return answers, [tuple(map(str, t)) for t in trials], {"poses": poses, "status": status}
    finally:
        db.close()


def test_kill_minus_nine_at_random_points_loses_and_duplicates_nothing(tmp_path, db_target):
    reference_dir, torture_dir = tmp_path / "reference", tmp_path / "torture"
    reference_dir.mkdir()
    torture_dir.mkdir()
    reference_db = db_target(reference_dir)
    db = make_study(reference_dir, participants=("P01",), db=reference_db)
    ScriptedDriver(RaterModel(RATER_SEED)).run(SessionEngine.start(db, "P01"))
    db.close()
    db_path = db_target(torture_dir)
    make_study(torture_dir, participants=("P01",), db=db_path).close()

    rng = np.random.default_rng(2026)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen: dict = {}
    plan: list | None = None
    kills = 0
    finished = False
    deadline = time.monotonic() + 50
    while not finished and time.monotonic() < deadline:
        life = subprocess.Popen(
            [sys.executable, "-c", LIFE, str(db_path), str(RATER_SEED), "0.02"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        )
        assert life.stdout.readline().strip() == "ready", life.stderr.read()
        if kills < KILLS:
            # Let 1 or 2 steps commit, then kill at a random moment of the next pause or commit.
            for _ in range(rng.integers(1, 3)):
                life.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.03))
            if life.poll() is None:
                os.kill(life.pid, signal.SIGKILL)
                kills += 1
        out, err = life.communicate(timeout=30)
        finished = out.rstrip().endswith("done")
        assert finished or life.returncode == -signal.SIGKILL, err

        answers, trials, _ = snapshot(db_path)
        # Everything committed before the kill is still there, unchanged.
        assert {k: answers.get(k, "lost") for k in seen} == seen
        seen = answers
        if trials:
            plan = plan or trials
            assert trials == plan

    assert kills >= 20 and finished
    answers, trials, torture = snapshot(db_path)
    expected, reference_plan, reference = snapshot(reference_db)
    assert torture["status"] == "completed"
    assert trials == reference_plan == plan
    assert answers == expected
    # An interrupted exposure's partial poses are discarded: every trial has exactly one full exposure.
    assert torture["poses"] == reference["poses"] == {index: 50 for index in range(len(trials))}
