"""The study database: connection settings, constraints, UTC times, schema version, imports, participants."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from _studykit import at, make_study, study_db, write_panorama, write_protocol  # noqa: F401

from study import stimuli as stimuli_module
from study.engine import SessionEngine
from study.errors import StimulusError, StoreError
from study.models import (
    SCHEMA_VERSION, Answer, Event, Participant, PoseSample, SchemaInfo, SsqAnswer, StepDone, Stimulus, StudySession, Trial,
)
from study.store import add_participant, create_study, delete_participant, import_stimuli, open_study


def rows(db, model) -> int:
    with db.Session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_sqlite_connections_are_wal_with_foreign_keys_and_full_sync(tmp_path):
    with make_study(tmp_path) as db, db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_double_recorded_answer_is_impossible_in_the_database(study_db):
    engine = SessionEngine.start(study_db, "P01")
    trial_id = engine.trials[0].id
    answer = dict(session_id=engine.session_id, trial_id=trial_id, scale="ACR", item="overall", value=3,
                  response_time_s=1.0, shown_at=at(0), answered_at=at(1))
    with study_db.Session.begin() as session:
        session.execute(sa.insert(Answer), [answer])
    with pytest.raises(sa.exc.IntegrityError):
        with study_db.Session.begin() as session:
            session.execute(sa.insert(Answer), [{**answer, "value": 4}])
    ssq = dict(session_id=engine.session_id, phase="pre", item=1, value=0, response_time_s=1.0,
               shown_at=at(0), answered_at=at(1))
    with study_db.Session.begin() as session:
        session.execute(sa.insert(SsqAnswer), [ssq])
    with pytest.raises(sa.exc.IntegrityError):
        with study_db.Session.begin() as session:
            session.execute(sa.insert(SsqAnswer), [ssq])
    with pytest.raises(sa.exc.IntegrityError):
        with study_db.Session.begin() as session:
            session.execute(sa.insert(Trial), [dict(session_id=engine.session_id, index=0, stimulus_id=1, training=False,
                                                   scale_order=["ACR"], break_before=False)])
    assert rows(study_db, Answer) == 1 and rows(study_db, SsqAnswer) == 1


def test_times_come_back_as_aware_utc_and_naive_times_are_refused(study_db):
    engine = SessionEngine.start(study_db, "P01")
    local = datetime(2026, 11, 24, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    engine.submit("instructions", shown_at=local, answered_at=local + timedelta(seconds=3))
    with study_db.Session() as session:
        done = session.scalars(sa.select(StepDone)).one()
    assert done.shown_at.tzinfo == timezone.utc and done.shown_at == local
    assert done.shown_at.hour == 8
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        with study_db.Session.begin() as session:
            session.add(Event(session_id=engine.session_id, kind="x", detail={}, at=datetime(2026, 1, 1)))


def test_a_newer_schema_version_is_refused(tmp_path):
    make_study(tmp_path).close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'study.sqlite'}")
    with engine.begin() as connection:
        connection.execute(sa.update(SchemaInfo.__table__).values(version=99))
    engine.dispose()
    with pytest.raises(StoreError, match=rf"schema_info.version is 99, this panostudy reads version {SCHEMA_VERSION}; upgrade"):
        open_study(tmp_path / "study.sqlite")


def test_missing_foreign_or_unwritable_databases_are_refused(tmp_path):
    with pytest.raises(StoreError, match="no study database there"):
        open_study(tmp_path / "nothing.sqlite")
    assert not (tmp_path / "nothing.sqlite").exists()
    (tmp_path / "other.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match="not a panostudy study database"):
        open_study(tmp_path / "other.sqlite")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    protocol = write_protocol(tmp_path)
    with pytest.raises(StoreError, match=f"{blocker / 'study.sqlite'}: folder .* does not exist"):
        create_study(blocker / "study.sqlite", protocol)
    with pytest.raises(StoreError, match="already exists"):
        create_study(tmp_path / "other.sqlite", protocol)


def test_init_imports_the_protocol_training_panoramas(study_db):
    with study_db.Session() as session:
        training = session.scalars(sa.select(Stimulus).where(Stimulus.training)).all()
        tests = session.scalars(sa.select(Stimulus).where(~Stimulus.training)).all()
    assert [s.path.endswith("train.png") for s in training] == [True]
    assert sorted(s.scene for s in tests) == ["indoor", "indoor", "street", "street"]
    assert all((s.width, s.height) == (64, 32) and len(s.sha256) == 64 for s in tests)


def test_bad_stimuli_are_refused_and_nothing_is_written(study_db, tmp_path):
    before = rows(study_db, Stimulus)
    folder = tmp_path / "bad"
    write_panorama(folder / "street" / "ok.png", seed=123)
    write_panorama(folder / "street" / "square.png", width=32, height=32)
    with pytest.raises(StimulusError, match=r"square.png: 32x32 is not 2:1"):
        import_stimuli(study_db, folder)
    (folder / "street" / "square.png").unlink()
    (folder / "street" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(StimulusError, match="broken.png: unreadable image"):
        import_stimuli(study_db, folder)
    (folder / "street" / "broken.png").unlink()
    write_panorama(folder / "beach" / "a.png")
    with pytest.raises(StimulusError, match="scene 'beach' is not in the protocol's scenes"):
        import_stimuli(study_db, folder)
    assert rows(study_db, Stimulus) == before


def test_manifest_import_keeps_metadata_and_names_the_bad_line(study_db, tmp_path):
    write_panorama(tmp_path / "gen" / "a.png", seed=5)
    manifest = tmp_path / "gen" / "manifest.jsonl"
    lines = [
        {"path": "a.png", "scene": "indoor", "prompt": "a kitchen", "seed": 3},
        {"path": "missing.png", "scene": "indoor"},
    ]
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(StimulusError, match=r"missing.png \(listed at .*manifest.jsonl:2\): stimulus file not found"):
        import_stimuli(study_db, manifest)
    manifest.write_text(json.dumps(lines[0]) + "\n" + '{"path": "a.png"}\n')
    with pytest.raises(StimulusError, match=r"manifest.jsonl:2: 'scene' is missing"):
        import_stimuli(study_db, manifest)
    manifest.write_text(json.dumps(lines[0]) + "\n")
    report = import_stimuli(study_db, manifest)
    assert (report.added, report.per_scene) == (1, {"indoor": 1})
    with study_db.Session() as session:
        stored = session.scalars(sa.select(Stimulus).where(Stimulus.path.endswith("gen/a.png"))).one()
    assert stored.generator_metadata == {"prompt": "a kitchen", "seed": 3}
    # Importing again is harmless; a changed file under the same path is not.
    assert import_stimuli(study_db, manifest).already_present == 1
    write_panorama(tmp_path / "gen" / "a.png", seed=6)
    with pytest.raises(StimulusError, match="changed since it was imported"):
        import_stimuli(study_db, manifest)


def test_oversized_panoramas_need_a_downscale_folder(study_db, tmp_path, monkeypatch):
    monkeypatch.setattr(stimuli_module, "MAX_WIDTH", 128)
    monkeypatch.setattr(stimuli_module, "MAX_HEIGHT", 64)
    write_panorama(tmp_path / "big" / "street" / "big.png", width=256, height=128)
    with pytest.raises(StimulusError, match="256x128 exceeds 128x64"):
        import_stimuli(study_db, tmp_path / "big")
    report = import_stimuli(study_db, tmp_path / "big", downscale_into=tmp_path / "small")
    assert report.added == 1
    with study_db.Session() as session:
        stored = session.scalars(sa.select(Stimulus).where(Stimulus.path.contains("/small/"))).one()
    assert (stored.width, stored.height) == (128, 64)
    assert stored.generator_metadata["downscaled_from"].endswith("big.png")


def test_participants_are_pseudonymous_and_unique(study_db):
    with pytest.raises(StoreError, match="'P01' is already enrolled"):
        add_participant(study_db, "P01")
    with pytest.raises(StoreError, match="is invalid"):
        add_participant(study_db, "jane.doe@example.org")
    third = add_participant(study_db, "P03", age=31, gender="female", vision_correction="glasses")
    assert third.number == 2


# The default pattern (letters then digits): codes a lab writes, and what a person's name or address looks like.
ACCEPTED_CODES = ["P07", "P1", "S001", "LAB2-013", "VR-0001", "ABCDEFGH1234-123456"]
REFUSED_CODES = ["JohnSmith", "Maria_Garcia", "john-doe-1985", "jane.doe@example.org", "p07", "P07a", "007", "P",
                 "P 07", "LAB2-013-1", "ABCDEFGHI1", "P-", ""]


def test_codes_follow_the_protocol_pattern_and_the_message_gives_it(tmp_path):
    from study.protocol import DEFAULT_CODE_PATTERN, load_protocol
    from study.store import check_code

    protocol = load_protocol(write_protocol(tmp_path))
    assert [code for code in ACCEPTED_CODES if check_code(protocol, code) != code] == []
    for code in REFUSED_CODES:
        with pytest.raises(StoreError) as refused:
            check_code(protocol, code)
        assert f"participant code {code!r} is invalid: codes match {DEFAULT_CODE_PATTERN}" in str(refused.value)
        assert "e.g. P07, LAB2-013" in str(refused.value) and "never a name" in str(refused.value)
    with pytest.raises(StoreError, match=r"did you mean 'P07'\?"):
        check_code(protocol, "p07")
    # A protocol's own pattern; the safe set of characters still holds.
    own = load_protocol(write_protocol(tmp_path / "own", enrolment='code_pattern = "[a-z]+[0-9]+|.+@.+"'))
    assert check_code(own, "lab7") == "lab7"
    with pytest.raises(StoreError, match="'a@b' is invalid: codes are 1-32 letters, digits, '-' or '_'"):
        check_code(own, "a@b")
    with pytest.raises(StoreError, match=r"codes match \[a-z\]\+\[0-9\]\+\|\.\+@\.\+ \(the protocol's enrolment.code_pattern\);"):
        check_code(own, "LAB7")


def test_demographics_take_the_protocol_choices_or_free_text_where_allowed(tmp_path):
    from study.protocol import load_protocol
    from study.store import check_demographics

    protocol = load_protocol(write_protocol(tmp_path))
    check_demographics(protocol, age=1, gender="prefer not to say", vision_correction="contact lenses")
    check_demographics(protocol, age=120)
    for options, message in [
        (dict(gender="jane.doe@example.org"), "--gender 'jane.doe@example.org' is not one of the protocol's choices "
                                              "('female', 'male', 'non-binary', 'prefer not to say'; enrolment.gender)"),
        (dict(gender="Female"), "--gender 'Female' is not one of"),
        (dict(vision_correction="varifocals"), "--vision-correction 'varifocals' is not one of the protocol's choices"),
        (dict(age=0), "--age 0 is not an age in years within 1..120"),
        (dict(age=121), "--age 121 is not an age"),
    ]:
        with pytest.raises(StoreError) as refused:
            check_demographics(protocol, **options)
        assert message in str(refused.value)
    free = load_protocol(write_protocol(tmp_path / "free", enrolment="gender_free_text = true\nage_min = 18\nage_max = 65"))
    check_demographics(free, gender="genderqueer", age=18)
    check_demographics(free, gender="Zwei-Geist / two-spirit")
    for text in ("jane.doe@example.org", "born 1985", "Maria_Garcia", "x" * 41, "  ", "call +49 30 1234"):
        with pytest.raises(StoreError, match="is neither one of 'female', .* nor a short free-text answer"):
            check_demographics(free, gender=text)
    with pytest.raises(StoreError, match="--age 17 is not an age in years within 18..65"):
        check_demographics(free, age=17)


def test_the_pattern_applies_at_enrolment_so_earlier_codes_keep_working(tmp_path):
    from study.driver import RaterModel, ScriptedDriver

    db = make_study(tmp_path, participants=("P01",))
    # enrolled by an earlier panostudy, whose only rule was letters, digits, '-' and '_'
    with db.Session.begin() as session:
        session.add(Participant(study_id=db.study_id, code="lab_anna", number=1))
    engine = SessionEngine.start(db, "lab_anna")
    ScriptedDriver(RaterModel(1)).run(engine)
    assert engine.status == "completed"
    with pytest.raises(StoreError, match="'lab_bert' is invalid"):
        add_participant(db, "lab_bert")
    db.close()


@pytest.fixture
def free_text_study(tmp_path, db_target):
    """The small study on each store, its protocol allowing a gender in the participant's own words."""
    db = make_study(tmp_path, db=db_target(tmp_path), enrolment="gender_free_text = true")
    yield db
    db.close()


def test_delete_participant_removes_all_their_data_only(free_text_study, tmp_path):
    from study.driver import RaterModel, ScriptedDriver

    study_db = free_text_study
    add_participant(study_db, "XQ7-4711", gender="Xqseven genderqueer")
    for code in ("XQ7-4711", "P02"):
        ScriptedDriver(RaterModel(1)).run(SessionEngine.start(study_db, code))
    counts = {model: rows(study_db, model) for model in (Answer, SsqAnswer, PoseSample, StepDone, Trial, Event)}
    report = delete_participant(study_db, "XQ7-4711")
    for model, total in counts.items():
        assert rows(study_db, model) == total // 2, model
    with study_db.Session() as session:
        assert session.scalars(sa.select(Participant.code).order_by(Participant.code)).all() == ["P01", "P02"]
        assert rows(study_db, StudySession) == 1
    if study_db.engine.dialect.name == "sqlite":
        # secure_delete and the WAL checkpoint leave no copy of the code or the free text in the files.
        assert [p.name for p in report.verified_files] == ["study.sqlite", "study.sqlite-wal"]
        assert not [p.name for p in tmp_path.glob("study.sqlite*")
                    if b"XQ7-4711" in p.read_bytes() or b"Xqseven" in p.read_bytes()]
        assert report.remaining is None
    else:
        assert report.verified_files == () and "VACUUM FULL" in report.remaining and "write-ahead log" in report.remaining
    with pytest.raises(StoreError, match="'XQ7-4711' is not enrolled"):
        delete_participant(study_db, "XQ7-4711")
