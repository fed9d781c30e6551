"""Several sessions per participant, consent, breaks asked for by the experimenter, stations, flags, and the
migration of a schema-1 database."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from _studykit import at, protocol_toml, write_consent_protocol, write_panorama, write_stimuli

from study.driver import RaterModel, ScriptedDriver
from study.engine import AGREE, DECLINE, SessionEngine
from study.errors import ProtocolError, SessionError, StoreError
from study.export import load_answers, load_flagged_trials, load_poses, load_ssq
from study.models import SCHEMA_VERSION, Event, Participant, PoseSample, StudySession, Trial
from study.planner import StimulusRef, assign_sessions, balanced_latin_square
from study.protocol import parse_protocol
from study.store import add_participant, create_study, import_stimuli, migrate_study, open_study

TWO_DAYS = """
[[sessions]]
name = "Day 1"
scenes = ["street", "indoor"]

[[sessions]]
name = "Day 2"
scenes = ["street", "indoor"]
training = false
"""


def two_day_study(folder: Path, participants=("P01", "P02", "P03", "P04"), per_scene: int = 4, extra: str = ""):
    write_panorama(folder / "train.png", seed=99)
    protocol = folder / "days.toml"
    protocol.write_text(protocol_toml(breaks="every_trials = 3") + TWO_DAYS + extra, encoding="utf-8")
    db = create_study(folder / "study.sqlite", protocol)
    import_stimuli(db, write_stimuli(folder / "stimuli", per_scene=per_scene))
    for code in participants:
        add_participant(db, code)
    return db


def run_all(engine) -> None:
    ScriptedDriver(RaterModel(3), motion_seed=1).run(engine)


def test_a_protocol_defines_its_sessions_and_bad_ones_are_refused():
    protocol = parse_protocol(protocol_toml() + TWO_DAYS, check_files=False)
    assert [(s.number, s.name, s.training) for s in protocol.sessions] == [(1, "Day 1", True), (2, "Day 2", False)]
    assert parse_protocol(protocol_toml(), check_files=False).sessions[0].scenes == ("street", "indoor")
    with pytest.raises(ProtocolError, match=r"sessions\[0\].scenes\[0\]: a string 'beach' is not one of the protocol's scenes"):
        parse_protocol(protocol_toml() + '[[sessions]]\nscenes = ["beach"]\n', "p.toml", check_files=False)
    with pytest.raises(ProtocolError, match="no session shows scene 'indoor'"):
        parse_protocol(protocol_toml() + '[[sessions]]\nscenes = ["street"]\n', "p.toml", check_files=False)
    with pytest.raises(ProtocolError, match=r"sessions\[0\].day: unknown key"):
        parse_protocol(protocol_toml() + "[[sessions]]\nday = 1\n", "p.toml", check_files=False)
    with pytest.raises(ProtocolError, match=r"--session 3: protocol 'tiny' defines session\(s\) 1..2"):
        protocol.session(3)


def test_captions_view_and_consent_are_read_and_checked(tmp_path):
    write_panorama(tmp_path / "train.png")
    protocol = parse_protocol(protocol_toml().replace('instructions = "Look around, then rate."',
                                           'instructions = "Look around, then rate."\nconsent = "Agree?"\n'
                                           '[view]\nstart_yaw_deg = 10\nwindow = [800, 600]\n'
                                           '[view.start_yaw]\n"street/1.png" = -90\n'
                                           '[captions]\nconfirm = "OK"\n'), check_files=False)
    assert protocol.consent == "Agree?" and protocol.captions["confirm"] == "OK"
    assert protocol.captions["continue"] == "Continue"
    assert protocol.view.yaw_for("/x/stimuli/street/1.png") == -90 and protocol.view.yaw_for("/x/indoor/1.png") == 10
    assert protocol.view.window == (800, 600)
    base = protocol_toml().replace('instructions = "Look around, then rate."', 'instructions = "Look."\n@SNIPPET@')
    for snippet, message in [
        ('[captions]\ncontinue_in = "in {minutes}"', r"captions.continue_in: unknown field \{minutes\}; use only \{seconds\}"),
        ('[captions]\nconfirm = "OK {x}"', r"captions.confirm: unknown field \{x\}; this caption takes no"),
        ('[captions]\nsubmit = "Go"', r"captions.submit: unknown key"),
        ("[view]\nfov_deg = 170", r"view.fov_deg: 170 degrees is outside 30..120"),
        ("[view]\nwindow = [10, 10]", r"view.window: \[10, 10\] is not a window size"),
        ('[view.start_yaw]\n"a.png" = 200', r'view.start_yaw."a.png": 200 degrees is outside -180..180'),
        ("[panel]\nfonts = [\"missing.ttf\"]", r"panel.fonts\[0\]: font file .*missing.ttf does not exist"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            parse_protocol(base.replace("@SNIPPET@", snippet), "p.toml", base_dir=tmp_path)


def test_stimuli_are_split_over_the_sessions_and_each_is_shown_once(tmp_path):
    db = two_day_study(tmp_path)
    try:
        first = SessionEngine.start(db, "P01", station="lab-1")
        assert first.number == 1 and first.station == "lab-1"
        with pytest.raises(SessionError, match="has session 1 open"):
            SessionEngine.start(db, "P01")
        run_all(first)
        second = SessionEngine.start(db, "P01", station="lab-2")
        assert second.number == 2 and not any(t.training for t in second.trials)
        run_all(second)
        with pytest.raises(SessionError, match="has done all 2 session"):
            SessionEngine.start(db, "P01")
        with pytest.raises(SessionError, match="session 2 of participant 'P01' is complete; nothing more"):
            SessionEngine.resume(db, "P01")
        tests = [t.stimulus_path for e in (first, second) for t in e.trials if not t.training]
        assert len(tests) == len(set(tests)) == 8
        assert sorted(len([t for t in e.trials if not t.training]) for e in (first, second)) == [4, 4]
        answers = load_answers(db)
        assert set(zip(answers.session_number, answers.station)) == {(1, "lab-1"), (2, "lab-2")}
        assert set(load_ssq(db).session_number) == {1, 2}
        assert set(load_poses(db).station) == {"lab-1", "lab-2"}
    finally:
        db.close()


def test_each_plan_comes_from_seed_participant_and_session_number(tmp_path):
    plans = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        db = two_day_study(folder, participants=("P01",))
        try:
            # the second session planned first: its plan must not depend on when it is planned
            second = SessionEngine.start(db, "P01", number=2)
            plans.append([(t.index, Path(t.stimulus_path).relative_to(folder).as_posix(), t.scale_order)
                          for t in second.trials])
        finally:
            db.close()
    assert plans[0] == plans[1]
    protocol = parse_protocol(protocol_toml() + TWO_DAYS, check_files=False)
    refs = [StimulusRef(i, scene) for i, scene in enumerate(["street", "indoor"] * 5)]
    split = assign_sessions(protocol, refs, "P07")
    assert split == assign_sessions(protocol, refs, "P07")
    assert sorted(r.id for refs_ in split.values() for r in refs_) == list(range(10))
    for scene in ("street", "indoor"):
        assert sorted(sum(r.scene == scene for r in split[n]) for n in (1, 2)) == [2, 3]


def test_the_latin_square_is_balanced_in_each_session_and_over_the_study(tmp_path):
    codes = ("P01", "P02", "P03", "P04")
    db = two_day_study(tmp_path, participants=codes, per_scene=2)
    try:
        orders = {}
        for code in codes:
            for number in (1, 2):
                engine = SessionEngine.start(db, code, number=number)
                orders[code, number] = engine.trials[0].scale_order
                run_all(engine)
        square = [tuple(db.protocol.scales[i].id for i in row) for row in balanced_latin_square(2)]
        for number in (1, 2):
            assert Counter(orders[c, number] for c in codes) == Counter({row: 2 for row in square})
        assert Counter(orders.values()) == Counter({row: 4 for row in square})
        # each participant meets both orders over their two sessions
        assert all(orders[c, 1] != orders[c, 2] for c in codes)
    finally:
        db.close()


def test_consent_declined_keeps_nothing_but_that(tmp_path):
    folder = tmp_path
    db = create_study(folder / "study.sqlite", write_consent_protocol(folder))
    import_stimuli(db, write_stimuli(folder / "stimuli"))
    add_participant(db, "P01", age=30, gender="female")
    add_participant(db, "P02", age=41)
    try:
        declined = SessionEngine.start(db, "P01")
        step = declined.current()
        assert (step.kind, step.min_value, step.max_value) == ("consent", DECLINE, AGREE)
        following = declined.submit("consent", DECLINE, shown_at=at(0), answered_at=at(5))
        assert following.kind == "done" and declined.status == "declined"
        with db.Session() as session:
            row = session.scalars(sa.select(StudySession).where(StudySession.id == declined.session_id)).one()
            events = session.execute(sa.select(Event.kind).where(Event.session_id == row.id)).scalars().all()
            person = session.scalars(sa.select(Participant).where(Participant.code == "P01")).one()
            trials = session.scalar(sa.select(sa.func.count()).select_from(Trial).where(Trial.session_id == row.id))
        assert row.status == "declined" and row.ended_at == at(5) and events == ["consent_declined"] and trials == 0
        assert (person.age, person.gender) == (None, None)
        with pytest.raises(SessionError, match="declined consent in session 1"):
            SessionEngine.start(db, "P01")

        agreed = SessionEngine.start(db, "P02")
        with pytest.raises(SessionError, match=r"value 3 is neither 1 \(agree\) nor 0 \(decline\)"):
            agreed.submit("consent", 3, shown_at=at(0), answered_at=at(4))
        agreed.submit("consent", AGREE, shown_at=at(0), answered_at=at(4))
        assert agreed.current().key == "instructions"
        with db.Session() as session:
            done = session.execute(sa.text("select shown_at, done_at from step_done where key = 'consent'")).one()
        assert [d[:19] for d in done] == ["2026-11-24 09:00:00", "2026-11-24 09:00:04"]   # agreement and its time
    finally:
        db.close()


def test_a_break_asked_for_comes_before_the_next_trial_and_survives_a_resume(study_db):
    engine = SessionEngine.start(study_db, "P01")
    while engine.current().key != "trial/1/show":
        ScriptedDriver(RaterModel(1)).run(engine, max_steps=1)
    assert engine.request_break() == 1           # the stimulus of trial 1 is due: the break comes first
    assert engine.current().key == "break/1"
    assert SessionEngine.resume(study_db, "P01").current().key == "break/1"
    ScriptedDriver(RaterModel(1)).run(engine, max_steps=2)    # the break, then trial 1's stimulus
    assert engine.current().key.startswith("trial/1/") and engine.request_break() == 2
    assert engine.current().key.startswith("trial/1/")        # asked during the questions: after them


def test_flags_and_interrupted_poses(study_db):
    engine = SessionEngine.start(study_db, "P01", station="desk-3")
    while engine.current().kind != "stimulus":
        ScriptedDriver(RaterModel(1)).run(engine, max_steps=1)
    index = engine.current().trial_index
    assert engine.next_presentation(index) == 0
    engine.record_poses(index, [(0.1 * i, 5.0, 0.0, 0.0) for i in range(4)], presentation=0, interrupted=True)
    engine.flag_trial(index, "stimulus_interrupted", "paused at 0.4 s", presentation=0)
    assert engine.next_presentation(index) == 1
    # a crash after a complete showing was recorded but not submitted: resume drops that showing only
    engine.record_poses(index, [(0.1 * i, 9.0, 0.0, 0.0) for i in range(50)], presentation=1)
    SessionEngine.resume(study_db, "P01")
    with study_db.Session() as session:
        kept = session.execute(sa.select(PoseSample.presentation, PoseSample.interrupted)).all()
    assert kept == [(0, True)] * 4
    engine.flag_trial(index, "pose_rate_low", "20.0 Hz of 30 Hz")
    flags = load_flagged_trials(study_db)
    assert list(flags.columns) == ["participant", "session_number", "station", "trial_index", "flag", "detail"]
    assert flags.to_dict("records") == [
        {"participant": "P01", "session_number": 1, "station": "desk-3", "trial_index": index,
         "flag": "stimulus_interrupted", "detail": "paused at 0.4 s"},
        {"participant": "P01", "session_number": 1, "station": "desk-3", "trial_index": index,
         "flag": "pose_rate_low", "detail": "20.0 Hz of 30 Hz"},
    ]
    assert len(load_poses(study_db)) == 0 and len(load_poses(study_db, interrupted=True)) == 4


def test_station_names_are_checked_before_anything_is_written(study_db):
    with pytest.raises(StoreError, match=r"--station 'lab 1/\?' is not a station name"):
        SessionEngine.start(study_db, "P01", station="lab 1/?")
    with study_db.Session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(StudySession)) == 0


SCHEMA1 = Path(__file__).with_name("data") / "schema1_study.sql"
#: The tables schema version 3 added, empty after a migration.
GAZE_TABLES = {"gaze_sample": 0, "validation_run": 0, "validation_target": 0, "validation_sample": 0}


def schema1_database(folder: Path) -> Path:
    path = folder / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA1.read_text(encoding="utf-8"))
    connection.close()
    return path


def test_a_schema1_database_is_refused_with_the_way_out_then_migrated(tmp_path):
    path = schema1_database(tmp_path)
    with pytest.raises(StoreError, match=rf"schema_info.version is 1, this panostudy reads version {SCHEMA_VERSION}; run "
                                         r"'panostudy study migrate --db .*old.sqlite' once"):
        open_study(path)
    before = {t: n for t, n in _counts(path).items()}
    old, backup = migrate_study(path)
    assert (old, backup) == (1, tmp_path / "old.sqlite.schema1.bak") and backup.is_file()
    assert _counts(backup) == before and _version(backup) == 1
    assert _counts(path) == {**before, **GAZE_TABLES} and _version(path) == SCHEMA_VERSION
    with open_study(path) as db:
        with db.Session() as session:
            rows = session.execute(sa.select(StudySession.number, StudySession.status, StudySession.station)
                                   .order_by(StudySession.id)).all()
        assert rows == [(1, "completed", None), (1, "running", None)]
        answers = load_answers(db)
        assert (answers.session_number == 1).all() and answers.station.isna().all()
        assert (load_poses(db).presentation == 0).all()
        # the running session of P02 continues; P03 gets a first session; P01 has done the only one
        run_all(SessionEngine.resume(db, "P02"))
        run_all(SessionEngine.start(db, "P03"))
        with pytest.raises(SessionError, match="has done all 1 session"):
            SessionEngine.start(db, "P01")
    assert migrate_study(path) == (SCHEMA_VERSION, None)      # current already: nothing touched


def test_a_failed_migration_leaves_the_database_unchanged(tmp_path, monkeypatch):
    from study import store

    path = schema1_database(tmp_path)
    before = _counts(path)

    def broken(connection):
        store._migrate_1_to_2(connection)
        raise sa.exc.OperationalError("ALTER", {}, Exception("disk full"))

    monkeypatch.setitem(store.MIGRATIONS, 1, broken)
    with pytest.raises(StoreError, match="cannot migrate the database .*disk full.*; it is unchanged"):
        migrate_study(path)
    assert _counts(path) == before and _version(path) == 1
    with sqlite3.connect(path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(session)")]
    connection.close()
    assert "number" not in columns


def schema1_on_server(url: str, tmp_path: Path) -> None:
    """The schema-1 study of ``SCHEMA1`` on a PostgreSQL server: its tables as SQLAlchemy reflects them from the
    SQLite file (types, keys, the UNIQUE(participant_id) and CHECK of its session table), and every row."""
    source = sa.create_engine(f"sqlite:///{schema1_database(tmp_path)}")
    target = sa.create_engine(url)
    metadata = sa.MetaData()

    @sa.event.listens_for(metadata, "column_reflect")
    def _generic(inspector, table, column) -> None:
        column["type"] = column["type"].as_generic()   # SQLite's DATETIME is PostgreSQL's TIMESTAMP

    metadata.reflect(source)
    try:
        metadata.create_all(target)
        with source.connect() as reading, target.begin() as writing:
            for table in metadata.sorted_tables:
                rows = [dict(row._mapping) for row in reading.execute(sa.select(table))]
                if rows:
                    writing.execute(sa.insert(table), rows)
                if "id" in table.c:
                    writing.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                            f"(SELECT coalesce(max(id), 1) FROM {table.name}))"))
    finally:
        source.dispose()
        target.dispose()


def _server_state(url: str) -> tuple[dict[str, int], int, list[str], list[str]]:
    """Row counts, schema version, the session table's columns and its constraints as the server says."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        with engine.connect() as connection:
            counts = {t: connection.scalar(sa.text(f'SELECT count(*) FROM "{t}"')) for t in inspector.get_table_names()
                      if t != "schema_info"}
            version = connection.scalar(sa.text("SELECT max(version) FROM schema_info"))
            constraints = sorted(connection.scalars(sa.text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'session'::regclass "
                "AND contype IN ('u', 'c')")))
        columns = [c["name"] for c in inspector.get_columns("session")]
    finally:
        engine.dispose()
    return counts, version, columns, constraints


def test_a_schema1_database_on_postgresql_is_refused_then_migrated(tmp_path, postgres_server):
    url = postgres_server.create_database()
    schema1_on_server(url, tmp_path)
    before, version, columns, constraints = _server_state(url)
    assert version == 1 and "number" not in columns and "UNIQUE (participant_id)" in constraints
    assert [c for c in constraints if c.startswith("CHECK")] and not any("declined" in c for c in constraints)
    with pytest.raises(StoreError, match=rf"schema_info.version is 1, this panostudy reads version {SCHEMA_VERSION}; run "
                                         r"'panostudy study migrate --db postgresql\+psycopg://.*' once"):
        open_study(url)
    assert migrate_study(url) == (1, None)           # a server database: its backups are the server's
    after, version, columns, constraints = _server_state(url)
    assert after == {**before, **GAZE_TABLES} and version == SCHEMA_VERSION and {"number", "station"} <= set(columns)
    assert "UNIQUE (participant_id)" not in constraints and "UNIQUE (participant_id, number)" in constraints
    assert any("declined" in c for c in constraints)
    with open_study(url) as db:                       # every table and column of version 2 is there
        with db.Session() as session:
            rows = session.execute(sa.select(StudySession.number, StudySession.status, StudySession.station)
                                   .order_by(StudySession.id)).all()
        assert rows == [(1, "completed", None), (1, "running", None)]
        assert (load_answers(db).session_number == 1).all()
        poses = load_poses(db)
        assert len(poses) and (poses.presentation == 0).all() and poses.runtime_time_ns.isna().all()
        run_all(SessionEngine.resume(db, "P02"))
        run_all(SessionEngine.start(db, "P03"))       # a new session id after the copied ones
        with pytest.raises(SessionError, match="has done all 1 session"):
            SessionEngine.start(db, "P01")
        types = {c["name"]: c["type"] for c in sa.inspect(db.engine).get_columns("pose_sample")}
        assert isinstance(types["runtime_time_ns"], sa.BigInteger) and isinstance(types["interrupted"], sa.Boolean)
    assert migrate_study(url) == (SCHEMA_VERSION, None)


def test_a_failed_migration_on_postgresql_leaves_the_database_unchanged(tmp_path, postgres_server, monkeypatch):
    from study import store

    url = postgres_server.create_database()
    schema1_on_server(url, tmp_path)
    before = _server_state(url)

    def broken(connection):
        store._migrate_1_to_2(connection)
        raise sa.exc.OperationalError("ALTER", {}, Exception("disk full"))

    monkeypatch.setitem(store.MIGRATIONS, 1, broken)
    with pytest.raises(StoreError, match=r"cannot migrate the database .*disk full.*; it is unchanged"):
        migrate_study(url)
    assert _server_state(url) == before               # PostgreSQL's DDL is transactional: all of it rolled back


def _counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        tables = [r[0] for r in connection.execute("select name from sqlite_master where type = 'table'")]
        counts = {t: connection.execute(f"select count(*) from {t}").fetchone()[0] for t in tables if t != "schema_info"}
    connection.close()
    return counts


def _version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        version = connection.execute("select max(version) from schema_info").fetchone()[0]
    connection.close()
    return version


from _studykit import study_db  # noqa: E402,F401  (a fixture)


def test_a_start_yaw_for_no_imported_stimulus_is_refused_before_planning(tmp_path):
    db = two_day_study(tmp_path, extra='\n[view.start_yaw]\n"street/9.png" = 45\n"indoor/0.png" = -30\n')
    try:
        with pytest.raises(SessionError, match=r'view.start_yaw."street/9.png": no imported stimulus'):
            SessionEngine.start(db, "P01")
        with db.Session() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(StudySession)) == 0
    finally:
        db.close()


def test_the_report_counts_and_lists_flagged_trials_and_maps_only_complete_showings(tmp_path):
    import re

    from typer.testing import CliRunner

    from _studykit import make_study
    from panostudy.cli import app

    db = make_study(tmp_path, participants=("P01", "P02", "P03"))
    engine = SessionEngine.start(db, "P01", station="desk-3")
    while engine.current().kind != "stimulus" or engine.current().training:
        ScriptedDriver(RaterModel(1)).run(engine, max_steps=1)
    index = engine.current().trial_index
    # a pause 0.4 s into the first test stimulus, looking backwards: kept, flagged, and no part of the heat map
    engine.record_poses(index, [(0.1 * i, 175.0, 0.0, 0.0) for i in range(4)], presentation=0, interrupted=True)
    engine.flag_trial(index, "stimulus_interrupted", "paused at 0.4 s", presentation=0)
    for code, start in (("P01", engine), ("P02", None), ("P03", None)):
        ScriptedDriver(RaterModel(1), motion_seed=2).run(start or SessionEngine.start(db, code))
    shown = load_poses(db, interrupted=True)
    complete = int((~shown.interrupted & (shown.scene != "training")).sum())   # the report maps test scenes only
    assert shown.interrupted.sum() == 4
    db.close()

    def report(*args) -> str:
        out = tmp_path / f"report{len(list(tmp_path.glob('report*')))}"
        result = CliRunner().invoke(app, ["analyze", *map(str, args), "--screening", "none", "--out", str(out)])
        assert result.exit_code == 0, result.output
        return (out / "report.html").read_text(encoding="utf-8")

    page = report("--db", tmp_path / "study.sqlite")
    assert "1 flagged trial (stimulus_interrupted 1): their answers are analysed; --exclude-flagged leaves them out" in page
    assert "flagged trial: stimulus_interrupted" in page and f"session 1, station desk-3, trial {index}: paused at 0.4 s" in page
    assert re.search(rf"\({complete} samples in all", page)
    export = CliRunner().invoke(app, ["study", "export", "--db", str(tmp_path / "study.sqlite"), "--out", str(tmp_path / "pkg")])
    assert export.exit_code == 0, export.output
    page = report("--export", tmp_path / "pkg", "--exclude-flagged")
    assert "1 flagged trial (stimulus_interrupted 1): their answers were left out (--exclude-flagged)" in page
    assert re.search(rf"\({complete} samples in all", page)   # the package keeps the interrupted rows; the map does not
