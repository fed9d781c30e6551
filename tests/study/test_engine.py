"""The session state machine: step order, validation of answers, resume, withdrawal, breaks, poses."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from _studykit import at, make_study, study_db  # noqa: F401  (study_db is a fixture)

from study.engine import SessionEngine
from study.errors import SessionError
from study.models import Answer, PoseSample, SsqAnswer, StepDone, Trial
from study.planner import StimulusRef, plan_session
from study.store import open_study

ITEMS = {"ACR": ["overall"], "VAR": ["clarity", "detail"]}


def answer(engine: SessionEngine, steps: int | None = None, start: float = 0.0, value: int = 3) -> float:
    """Submits ``steps`` steps (all if None) with a simple virtual clock; returns the clock."""
    clock = start
    step = engine.current()
    while step.kind != "done" and (steps is None or steps > 0):
        duration = {"stimulus": step.exposure_s, "break": step.min_duration_s}.get(step.kind, 2.0)
        given = value if step.kind in ("rating", "ssq") else None
        if step.kind == "ssq":
            given = min(value, 3)
        step = engine.submit(step.key, given, shown_at=at(clock), answered_at=at(clock + duration))
        clock += duration
        steps = None if steps is None else steps - 1
    return clock


def count(db, model) -> int:
    with db.Session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_steps_follow_the_protocol_and_the_stored_plan(study_db):
    engine = SessionEngine.start(study_db, "P01")
    keys = []
    while (step := engine.current()).kind != "done":
        keys.append(step.key)
        answer(engine, 1)
    trials = engine.trials
    assert [t.training for t in trials] == [True, False, False, False, False]
    order = trials[0].scale_order
    assert sorted(order) == ["ACR", "VAR"] and all(t.scale_order == order for t in trials)

    def trial_keys(index):
        return [f"trial/{index}/show"] + [f"trial/{index}/{s}/{i}" for s in order for i in ITEMS[s]]

    expected = ["instructions", *[f"ssq/pre/{n}" for n in range(1, 17)], "training/instructions"]
    expected += trial_keys(0) + trial_keys(1) + trial_keys(2) + ["break/3"] + trial_keys(3) + trial_keys(4)
    expected += [f"ssq/post/{n}" for n in range(1, 17)]
    assert keys == expected
    assert engine.status == "completed"
    assert count(study_db, Answer) == 5 * 3 and count(study_db, SsqAnswer) == 32


def test_plan_is_stored_before_the_first_step_and_matches_the_planner(study_db):
    engine = SessionEngine.start(study_db, "P02")
    assert engine.status == "planned"
    with study_db.Session() as session:
        stimuli = session.execute(sa.text("SELECT id, scene, training FROM stimulus ORDER BY id")).all()
        stored = session.execute(sa.select(Trial.index, Trial.stimulus_id).order_by(Trial.index)).all()
    plan = plan_session(
        study_db.protocol,
        [StimulusRef(i, s) for i, s, t in stimuli if not t],
        [StimulusRef(i, s) for i, s, t in stimuli if t],
        "P02",
        1,
    )
    assert [(t.index, t.stimulus_id) for t in plan] == [tuple(r) for r in stored]
    with pytest.raises(SessionError, match="has session 1 open"):
        SessionEngine.start(study_db, "P02")


def test_wrong_step_or_value_is_refused_and_nothing_is_stored(study_db):
    engine = SessionEngine.start(study_db, "P01")
    with pytest.raises(SessionError, match="not the current one"):
        engine.submit("ssq/pre/1", 0, shown_at=at(0), answered_at=at(1))
    with pytest.raises(SessionError, match="takes no value"):
        engine.submit("instructions", 2, shown_at=at(0), answered_at=at(1))
    answer(engine, 1)
    for bad in (4, -1, None, True, 1.5):
        with pytest.raises(SessionError, match="ssq/pre/1"):
            engine.submit("ssq/pre/1", bad, shown_at=at(10), answered_at=at(11))
    with pytest.raises(SessionError, match="timezone-aware"):
        engine.submit("ssq/pre/1", 1, shown_at=at(10).replace(tzinfo=None), answered_at=at(11))
    with pytest.raises(SessionError, match="before shown_at"):
        engine.submit("ssq/pre/1", 1, shown_at=at(11), answered_at=at(10))
    assert count(study_db, SsqAnswer) == 0
    assert engine.current().key == "ssq/pre/1"
    answer(engine, 16 + 1 + 4)  # SSQ, training instructions and trial: now at the first test stimulus
    step = engine.current()
    assert step.kind == "stimulus" and not step.training
    answer(engine, 1)
    rating = engine.current()
    assert rating.kind == "rating" and (rating.min_value, rating.max_value) == (1, 5) and rating.labels
    with pytest.raises(SessionError, match="out of the scale's range 1..5"):
        engine.submit(rating.key, 6, shown_at=at(500), answered_at=at(501))


def test_break_must_last_its_minimum(study_db):
    engine = SessionEngine.start(study_db, "P01")
    while engine.current().kind != "break":
        answer(engine, 1)
    step = engine.current()
    assert step.min_duration_s == 30.0 and step.text == "Rest a moment."
    with pytest.raises(SessionError, match="at least 30 s"):
        engine.submit(step.key, shown_at=at(0), answered_at=at(29))
    engine.submit(step.key, shown_at=at(0), answered_at=at(31))
    assert engine.current().key == f"trial/{step.trial_index}/show"


def test_resume_continues_at_the_first_unanswered_step(study_db, tmp_path):
    engine = SessionEngine.start(study_db, "P01")
    answer(engine, 30)
    expected = engine.current()
    reopened = open_study(study_db.url)
    try:
        resumed = SessionEngine.resume(reopened, "P01")
        assert resumed.current() == expected
        assert resumed.progress() == engine.progress()
        answer(resumed, None, start=1000)
        assert resumed.status == "completed"
        with pytest.raises(SessionError, match="completed"):
            resumed.submit("done", shown_at=at(0), answered_at=at(1))
    finally:
        reopened.close()


def test_minutes_rule_inserts_a_break_from_stored_times(tmp_path, db_target):
    db = make_study(tmp_path, breaks="every_minutes = 1.0", participants=("P01",), db=db_target(tmp_path))
    try:
        engine = SessionEngine.start(db, "P01")
        while engine.current().training or engine.current().kind != "stimulus":
            answer(engine, 1)
        first_test = engine.current().trial_index
        # The first test trial takes 5 s + 3 x 2 s: well under a minute, so no break yet.
        clock = answer(engine, 4, start=0)
        assert engine.current().key == f"trial/{first_test + 1}/show"
        # The next one ends 70 s after the first test stimulus appeared: a break is due.
        engine.submit(engine.current().key, shown_at=at(clock), answered_at=at(clock + 5))
        clock += 5
        for _ in range(3):
            step = engine.current()
            engine.submit(step.key, 3, shown_at=at(clock), answered_at=at(clock + 20))
            clock += 20
        assert engine.current().kind == "break"
        assert SessionEngine.resume(db, "P01").current().kind == "break"
        answer(engine, 1, start=clock)
        assert engine.current().key == f"trial/{first_test + 2}/show"
    finally:
        db.close()


def test_withdraw_keeps_everything_and_blocks_further_answers(study_db):
    engine = SessionEngine.start(study_db, "P01")
    answer(engine, 25)
    before = count(study_db, SsqAnswer), count(study_db, Answer), count(study_db, StepDone)
    engine.withdraw("felt dizzy")
    assert (count(study_db, SsqAnswer), count(study_db, Answer), count(study_db, StepDone)) == before
    assert SessionEngine.load(study_db, "P01").status == "withdrawn"
    with pytest.raises(SessionError, match="withdrawn"):
        engine.submit(engine.current().key, 1, shown_at=at(0), answered_at=at(1))
    with pytest.raises(SessionError, match="was withdrawn; nothing more can be recorded"):
        SessionEngine.resume(study_db, "P01")


def test_poses_are_stored_and_an_interrupted_exposure_is_discarded(study_db):
    engine = SessionEngine.start(study_db, "P01")
    answer(engine, 18)
    step = engine.current()
    assert step.kind == "stimulus" and step.exposure_s == 5.0
    engine.record_poses(step.trial_index, [(0.1 * i, 10.0, -5.0, 0.0) for i in range(7)])
    assert count(study_db, PoseSample) == 7
    # A crash before the exposure ended: the stimulus is shown again, so its partial poses go.
    resumed = SessionEngine.resume(study_db, "P01")
    assert resumed.current() == step and count(study_db, PoseSample) == 0
    resumed.record_poses(step.trial_index, [(0.1 * i, 10.0, -5.0, 0.0) for i in range(50)])
    answer(resumed, 1)
    SessionEngine.resume(study_db, "P01")
    assert count(study_db, PoseSample) == 50
    with pytest.raises(SessionError, match="trial_index 99"):
        resumed.record_poses(99, [(0.0, 0.0, 0.0, 0.0)])
    with pytest.raises(SessionError, match="must be finite"):
        resumed.record_poses(step.trial_index, [(0.0, float("nan"), 0.0, 0.0)])


def test_poses_keep_the_runtime_time_stamp_where_the_tracker_gives_one(study_db):
    from study.export import load_poses

    engine = SessionEngine.start(study_db, "P01")
    answer(engine, 18)
    step = engine.current()
    stamp = 2**62 + 12345   # XrTime values are nanoseconds of a runtime's own epoch: wider than 32 bits
    engine.record_poses(step.trial_index, [(0.0, 1.0, 2.0, 3.0, stamp), (0.1, 1.0, 2.0, 3.0, None), (0.2, 1.0, 2.0, 3.0)])
    poses = load_poses(study_db)
    assert poses.runtime_time_ns.tolist()[0] == stamp
    assert poses.runtime_time_ns.isna().tolist() == [False, True, True]
    with pytest.raises(SessionError, match="time stamp must be an integer"):
        engine.record_poses(step.trial_index, [(0.3, 1.0, 2.0, 3.0, 1.5)])


def test_upcoming_stimuli_lists_unshown_stimuli_after_the_current_step(study_db):
    engine = SessionEngine.start(study_db, "P01")
    paths = [t.stimulus_path for t in engine.trials]
    assert engine.upcoming_stimuli(2) == paths[:2]
    answer(engine, 18)  # now at trial/0/show
    assert engine.current().key == "trial/0/show"
    assert engine.upcoming_stimuli(3) == paths[1:4]
    assert engine.upcoming_stimuli(10) == paths[1:]
