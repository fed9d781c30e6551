"""The store's doors: foreign and damaged files left unchanged, passwords masked, locks named, concurrent
enrolment, erasure that is verified (SQLite) or stated exactly (PostgreSQL), private file modes."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from _studykit import make_study, study_db, write_protocol  # noqa: F401
from typer.testing import CliRunner

from panostudy.cli import app
from study.database import mask_secrets, process_kind, shown
from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.errors import StoreError
from study.models import Participant
from study.store import add_participant, create_study, delete_participant, open_study


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(path.name + "*"))


def foreign_sqlite(path: Path, *, wal: bool) -> Path:
    import sqlite3

    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE contacts (name TEXT)")
    connection.execute("INSERT INTO contacts VALUES ('someone else')")
    connection.commit()
    connection.close()
    return path


@pytest.mark.parametrize("wal", [False, True])
def test_a_foreign_sqlite_file_is_refused_unchanged(tmp_path, wal):
    path = foreign_sqlite(tmp_path / "theirs.db", wal=wal)
    before, header_mode = digest(path), path.read_bytes()[18:20]
    with pytest.raises(StoreError, match="theirs.db: not a panostudy study database"):
        open_study(path)
    assert digest(path) == before and path.read_bytes()[18:20] == header_mode  # no switch to WAL
    assert siblings(path) == ["theirs.db"]


def test_empty_truncated_and_non_database_files_are_refused_unchanged(tmp_path):
    make_study(tmp_path).close()
    good = (tmp_path / "study.sqlite").read_bytes()
    cases = {
        "empty.sqlite": (b"", "the file is empty"),
        "text.sqlite": (b"participant,value\nP01,3\n" * 10, "not a SQLite database"),
        "cut.sqlite": (good[: len(good) // 2 + 7], "the database file is truncated or damaged"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(StoreError, match=f"{name}: {message}"):
            open_study(path)
        assert path.read_bytes() == content and siblings(path) == [name]


def test_a_database_missing_a_table_or_column_is_refused_before_any_write(tmp_path):
    make_study(tmp_path).close()
    path = tmp_path / "study.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE pose_sample")
    engine.dispose()
    before = digest(path)
    with pytest.raises(StoreError, match="table 'pose_sample' is missing; the database is damaged"):
        open_study(path)
    assert digest(path) == before
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE pose_sample (id INTEGER PRIMARY KEY)")
    engine.dispose()
    with pytest.raises(StoreError, match=r"table 'pose_sample' lacks column\(s\) session_id, trial_id"):
        open_study(path)


@pytest.mark.parametrize(
    ("url", "message"),
    [("nosuchdb://x/y", "unknown database kind 'nosuchdb'"),
     ("postgresql+psycopg2://u:hunter2@127.0.0.1/db", r"the driver for 'postgresql\+psycopg2' is not installed \(psycopg2\); pip install 'panostudy\[postgres\]'"),
     ("://nothing", "not a database URL")],
)
def test_unusable_urls_are_one_line_without_the_password(url, message):
    with pytest.raises(StoreError, match=message) as caught:
        open_study(url)
    assert "hunter2" not in str(caught.value)


def test_passwords_are_masked_in_messages():
    url = "postgresql+psycopg://lab:s3cr%2Ft@db.example.org:5432/study"
    assert shown(url) == "postgresql+psycopg://lab:***@db.example.org:5432/study"
    assert mask_secrets("failed for lab:s3cr%2Ft@db and s3cr/t", url) == "failed for lab:***@db and ***"


def test_an_unreachable_server_is_one_line_with_the_password_masked(postgres_server):
    port = postgres_server.port + 1 if postgres_server.port < 65535 else 1
    result = CliRunner().invoke(app, ["study", "info", "--db", f"postgresql://lab:hunter2@127.0.0.1:{port}/x"])
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert "cannot reach the database server" in line and "lab:***@127.0.0.1" in line and "hunter2" not in line


def test_init_on_postgresql_shows_the_url_masked(postgres_server, tmp_path):
    url = postgres_server.create_database().replace("panostudy@", "panostudy:hunter2@")
    result = CliRunner().invoke(app, ["study", "init", "--db", url, "--protocol", str(write_protocol(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "panostudy:***@127.0.0.1" in result.output and "hunter2" not in result.output
    again = CliRunner().invoke(app, ["study", "init", "--db", url, "--protocol", str(tmp_path / "tiny.toml")])
    assert again.exit_code == 2 and "already holds a study" in again.stderr and "hunter2" not in again.stderr


HOLD = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute(sys.argv[2])
connection.execute("SELECT count(*) FROM participant").fetchall()
print("holding", flush=True)
sys.stdin.readline()
"""


def holder(path: Path, begin: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), begin], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def release(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.communicate("\n", timeout=10)


def test_a_locked_database_waits_then_names_the_holder(tmp_path):
    make_study(tmp_path).close()
    path = tmp_path / "study.sqlite"
    process = holder(path, "BEGIN IMMEDIATE")
    try:
        result = CliRunner().invoke(app, ["study", "add-participant", "--db", str(path), "--code", "P03"])
    finally:
        release(process)
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert f"study.sqlite: the database stayed locked by pid {process.pid}: another program (" in line
    assert "for 5 s; wait for it to finish or stop it" in line
    assert CliRunner().invoke(app, ["study", "add-participant", "--db", str(path), "--code", "P03"]).exit_code == 0


def test_holders_are_told_apart_by_their_command_line():
    assert process_kind(["/venv/bin/python3", "/venv/bin/panostudy", "session", "run"]).startswith(
        "another panostudy process (")
    assert process_kind(["python3", "-m", "panostudy", "study", "export"]).startswith("another panostudy process")
    assert process_kind(["sqlite3", "study.sqlite"]) == "another program (sqlite3 study.sqlite)"


def test_sixteen_concurrent_enrolments_all_succeed(tmp_path, db_target):
    with make_study(tmp_path, participants=(), db=db_target(tmp_path)) as db:
        url = db.url
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def enrol(number: int) -> None:
        try:
            with open_study(url) as mine:
                start.wait()
                add_participant(mine, f"P{number:02d}")
        except BaseException as exc:  # noqa: BLE001  (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=enrol, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open_study(url) as db, db.Session() as session:
        rows = session.execute(sa.select(Participant.code, Participant.number)).all()
    assert sorted(code for code, _ in rows) == [f"P{n:02d}" for n in range(16)]
    assert sorted(number for _, number in rows) == list(range(16))


def test_erasure_waits_for_a_reader_then_names_it_and_a_repeat_finishes_it(tmp_path):
    db = make_study(tmp_path, participants=("P01", "ZX9-0815"))
    ScriptedDriver(RaterModel(3)).run(SessionEngine.start(db, "ZX9-0815"))
    path = tmp_path / "study.sqlite"
    # A monitor with the study open (say 'study info' in a loop) keeps the WAL alive after the reader ends.
    monitor = holder(path, "SELECT 1")
    reader = holder(path, "BEGIN")
    try:
        with pytest.raises(StoreError, match=rf"rows are deleted, but copies of them stay in study.sqlite-wal while "
                                             rf"pid {reader.pid}: another program \(.*\) keeps the database open"):
            delete_participant(db, "ZX9-0815", wait_s=0.5)
        release(reader)
        assert [name for name in siblings(path) if b"ZX9-0815" in (tmp_path / name).read_bytes()] == ["study.sqlite-wal"]
        report = delete_participant(db, "ZX9-0815", wait_s=0.5)
    finally:
        release(monitor)
    assert not report.deleted and [p.name for p in report.verified_files] == ["study.sqlite", "study.sqlite-wal"]
    assert not [name for name in siblings(path) if b"ZX9-0815" in (tmp_path / name).read_bytes()]
    with pytest.raises(StoreError, match="'ZX9-0815' is not enrolled, and nothing of that code is left"):
        delete_participant(db, "ZX9-0815")
    db.close()


def test_postgresql_erasure_says_what_stays_and_vacuum_full_removes_it_from_the_table_files(postgres_server, tmp_path):
    db = make_study(tmp_path, participants=("P01", "ZX9-0815"), db=postgres_server.create_database())

    def participant_file_holds_code() -> bool:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("CHECKPOINT")
            relative = connection.exec_driver_sql("SELECT pg_relation_filepath('participant')").scalar()
        return b"ZX9-0815" in (postgres_server.data_dir / relative).read_bytes()

    report = delete_participant(db, "ZX9-0815")
    assert "VACUUM FULL" in report.remaining and "--vacuum-full" in report.remaining
    assert participant_file_holds_code()  # deleted, but still physically in the heap file, as the note says
    finished = delete_participant(db, "ZX9-0815", vacuum_full=True)
    assert not finished.deleted and "rewrote the tables" in finished.remaining and "write-ahead log" in finished.remaining
    assert not participant_file_holds_code()
    db.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_exports_are_private_to_their_owner(tmp_path):
    previous = os.umask(0o022)  # a typical shell's umask: without care, files would be world-readable
    try:
        db = make_study(tmp_path)
        ScriptedDriver(RaterModel(1)).run(SessionEngine.start(db, "P01"))
        path = tmp_path / "study.sqlite"
        assert {name: mode(tmp_path / name) for name in siblings(path)} == {
            "study.sqlite": 0o600, "study.sqlite-shm": 0o600, "study.sqlite-wal": 0o600}
        db.close()
        from study.export import export_answers

        out = export_answers(path, tmp_path / "new" / "deeper" / "answers.csv")
        assert mode(out) == 0o600 and mode(tmp_path / "new") == mode(tmp_path / "new" / "deeper") == 0o700
        result = CliRunner().invoke(app, ["study", "export", "--db", str(path), "--out", str(tmp_path / "cli" / "a.parquet")])
        assert result.exit_code == 0, result.output
        assert mode(tmp_path / "cli" / "a.parquet") == 0o600 and mode(tmp_path / "cli") == 0o700
        result = CliRunner().invoke(app, ["analyze", "--db", str(path), "--out", str(tmp_path / "report")])
        assert result.exit_code == 0, result.output
        report = tmp_path / "report"
        assert mode(report) == 0o700 and {mode(p) for p in report.rglob("*") if p.is_file()} == {0o600}
        assert {mode(p) for p in report.rglob("*") if p.is_dir()} == {0o700}
    finally:
        os.umask(previous)


def test_a_failing_second_output_leaves_no_output_at_all(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    db = make_study(tmp_path)
    ScriptedDriver(RaterModel(1)).run(SessionEngine.start(db, "P01"))
    db.close()

    def full_disk(self, path, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    out, ssq = tmp_path / "exports" / "answers.csv", tmp_path / "exports" / "ssq.parquet"
    result = CliRunner().invoke(app, ["study", "export", "--db", str(tmp_path / "study.sqlite"), "--out", str(out),
                                      "--ssq", str(ssq)])
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert f"{ssq}: no space left on the device; free some space" in line
    assert not (tmp_path / "exports").exists()  # the folder made for the outputs is gone again, with the first file


def test_a_full_disk_mid_session_is_one_line_that_points_to_resume(tmp_path, monkeypatch):
    import sqlite3

    db = make_study(tmp_path)
    db.close()
    real_submit = SessionEngine.submit
    calls = []

    def filling_up(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise sa.exc.OperationalError("INSERT INTO answer ...", {}, sqlite3.OperationalError("database or disk is full"))
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(SessionEngine, "submit", filling_up)
    result = CliRunner().invoke(app, ["session", "run", "--db", str(tmp_path / "study.sqlite"), "--participant", "P01",
                                      "--backend", "none", "--simulate", "1"])
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert "study.sqlite: the disk is full (database or disk is full); free some space" in line
    assert "every confirmed answer is kept; 'panostudy session resume' continues where it stopped" in line
    monkeypatch.undo()
    with open_study(tmp_path / "study.sqlite") as reopened:
        assert SessionEngine.load(reopened, "P01").progress()[0] == 5


def test_a_locked_postgresql_table_names_the_holding_session(postgres_server, tmp_path):
    import psycopg

    with make_study(tmp_path, db=postgres_server.create_database()) as db:
        url = db.url
    dbname = url.rsplit("/", 1)[1]
    holder_connection = psycopg.connect(f"host=127.0.0.1 port={postgres_server.port} user=panostudy dbname={dbname} "
                                        "application_name=panostudy")
    try:
        holder_connection.execute("LOCK TABLE participant IN EXCLUSIVE MODE")
        pid = holder_connection.info.backend_pid
        result = CliRunner().invoke(app, ["study", "add-participant", "--db", url, "--code", "P03"])
    finally:
        holder_connection.close()
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert f"the database stayed locked by pid {pid} on the server: another panostudy process for 5 s" in line
    assert CliRunner().invoke(app, ["study", "add-participant", "--db", url, "--code", "P03"]).exit_code == 0
