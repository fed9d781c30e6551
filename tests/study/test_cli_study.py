"""`panostudy study ...` and `panostudy session ...` through Typer's CliRunner: the whole flow, and exit
code 2 with one line naming the problem for each kind of bad input (with nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from _studykit import write_panorama, write_protocol, write_stimuli
from typer.testing import CliRunner

from panostudy.cli import app
from study.export import read_answers
from study.models import SCHEMA_VERSION, Participant, SchemaInfo, Stimulus, StudySession


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    """Exit code 2 and a single stderr line holding every fragment."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def count(db_path, model) -> int:
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.connect() as connection:
        total = connection.scalar(sa.select(sa.func.count()).select_from(model))
    engine.dispose()
    return total


@pytest.fixture
def study(tmp_path):
    """A study database with stimuli and two participants, made through the CLI."""
    db = tmp_path / "study.sqlite"
    assert invoke("study", "init", "--db", db, "--protocol", write_protocol(tmp_path)).exit_code == 0
    result = invoke("study", "import-stimuli", "--db", db, write_stimuli(tmp_path / "stimuli"))
    assert result.exit_code == 0 and "imported 4 stimuli (indoor: 2, street: 2)" in result.output
    for code in ("P01", "P02"):
        assert invoke("study", "add-participant", "--db", db, "--code", code, "--age", 30).exit_code == 0
    return db


def test_a_study_runs_from_init_to_export(study, tmp_path):
    result = invoke("session", "run", "--db", study, "--participant", "P01", "--backend", "none", "--simulate", 4)
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    result = invoke("session", "run", "--db", study, "--participant", "P02", "--backend", "none", "--simulate", 4,
                    "--pace", 0)
    assert result.exit_code == 0
    info = invoke("study", "info", "--db", study)
    assert info.exit_code == 0 and "participants: 2 of 4 planned" in info.output and "completed 2" in info.output
    out = tmp_path / "answers.parquet"
    result = invoke("study", "export", "--db", study, "--out", out, "--ssq", tmp_path / "ssq.csv",
                    "--poses", tmp_path / "poses.csv")
    assert result.exit_code == 0, result.output
    answers = read_answers(out)
    assert len(answers) == 30 and set(answers["participant"]) == {"P01", "P02"}
    assert (answers["answer_source"] == "simulated").all()  # --simulate is recorded with the session
    assert len(pd.read_csv(tmp_path / "ssq.csv")) == 64 and len(pd.read_csv(tmp_path / "poses.csv")) == 500
    assert "| value |" in (tmp_path / "answers.codebook.md").read_text()
    result = invoke("study", "export", "--db", study, "--out", tmp_path / "package" / "v1", "--spss")
    assert result.exit_code == 0, result.output
    for name in ("answers.csv", "participants.csv", "sessions.csv", "stimuli.csv", "codebook.md", "datapackage.json",
                 "protocol.toml", "ratings_wide.sav"):
        assert (tmp_path / "package" / "v1" / name).is_file(), name
    participants = pd.read_csv(tmp_path / "package" / "v1" / "participants.csv")
    assert participants["age"].tolist() == [30, 30]
    # The export analyses like the database: same Table 1, protocol, demographics and the simulated-ratings banner.
    for source in (["--export", tmp_path / "package" / "v1"], ["--db", study]):
        report = tmp_path / "reports" / source[0].strip("-")
        result = invoke("analyze", *source, "--out", report, "--screening", "none")
        assert result.exit_code == 0, result.output
        page = (report / "report.html").read_text(encoding="utf-8")
        assert "SIMULATED RATINGS" in page and "Protocol <b>tiny</b>" in page and "Overall quality?" in page
        assert "mean 30.0" in page and "2 sessions: mean" in page
        assert "SIMULATED RATINGS" in (report / "datasheet.md").read_text()
    tables = [pd.read_csv(tmp_path / "reports" / name / "table1.csv") for name in ("export", "db")]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_resume_withdraw_and_delete(study):
    one_line_error(invoke("session", "resume", "--db", study, "--participant", "P01", "--backend", "none",
                          "--simulate", 1), "'P01' has no session yet")
    result = invoke("session", "withdraw", "--db", study, "--participant", "P02", "--reason", "nausea")
    one_line_error(result, "'P02' has no session yet")
    assert invoke("session", "run", "--db", study, "--participant", "P02", "--backend", "none", "--simulate", 1).exit_code == 0
    one_line_error(invoke("session", "withdraw", "--db", study, "--participant", "P02"), "already completed")
    one_line_error(invoke("session", "run", "--db", study, "--participant", "P02", "--backend", "none", "--simulate", 1),
                   "has done all 1 session(s)")
    one_line_error(invoke("study", "delete-participant", "--db", study, "--code", "P02"), "--yes")
    assert count(study, Participant) == 2
    assert invoke("study", "delete-participant", "--db", study, "--code", "P02", "--yes").exit_code == 0
    assert count(study, Participant) == 1 and count(study, StudySession) == 0


def test_bad_stimuli_exit_2_and_write_nothing(study, tmp_path):
    before = count(study, Stimulus)
    write_panorama(tmp_path / "odd" / "street" / "wide.png", width=96, height=32)
    one_line_error(invoke("study", "import-stimuli", "--db", study, tmp_path / "odd"), "wide.png", "not 2:1")
    write_stimuli(tmp_path / "beach", scenes=("beach",))
    one_line_error(invoke("study", "import-stimuli", "--db", study, tmp_path / "beach"), "scene 'beach'", "--scene")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "gone.png", "scene": "street"}) + "\n")
    one_line_error(invoke("study", "import-stimuli", "--db", study, tmp_path / "m.jsonl"), "gone.png", "m.jsonl:1", "not found")
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "y.jsonl").write_text(json.dumps({"path": "x.png", "scene": "street"}) + "\n")
    one_line_error(invoke("study", "import-stimuli", "--db", study, tmp_path / "y.jsonl"), "x.png", "unreadable image")
    assert count(study, Stimulus) == before


def test_bad_participants_and_answers_exit_2(study, tmp_path):
    one_line_error(invoke("study", "add-participant", "--db", study, "--code", "P01"), "'P01' is already enrolled")
    assert count(study, Participant) == 2
    (tmp_path / "answers.json").write_text(json.dumps({"ssq/pre/1": 0, "ssq/pre/2": 7}))
    result = invoke("session", "run", "--db", study, "--participant", "P01", "--backend", "none",
                    "--driver", tmp_path / "answers.json")
    # The answer file is checked against the protocol before the session is written.
    one_line_error(result, "answers.json: row 2 (ssq/pre/2)", "value 7 is out of the scale's range 0..3")
    assert count(study, StudySession) == 0
    (tmp_path / "fixed.json").write_text(json.dumps({"ssq/pre/1": 3, "ssq/pre/2": 1}))
    result = invoke("session", "run", "--db", study, "--participant", "P01", "--backend", "none",
                    "--driver", tmp_path / "fixed.json")
    # The answers it has are committed; the replay stops at the first step it has no answer for.
    one_line_error(result, "fixed.json", "no answer for step 'ssq/pre/3'")
    one_line_error(invoke("session", "run", "--db", study, "--participant", "P02", "--backend", "none"),
                   "--backend none has nobody to answer")
    one_line_error(invoke("session", "run", "--db", study, "--participant", "P02", "--backend", "holodeck",
                          "--simulate", 1), "--backend 'holodeck' is unknown")
    assert count(study, StudySession) == 1


def test_bad_databases_exit_2(study, tmp_path):
    engine = sa.create_engine(f"sqlite:///{study}")
    with engine.begin() as connection:
        connection.execute(sa.update(SchemaInfo.__table__).values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    one_line_error(invoke("study", "info", "--db", study), f"schema_info.version is {SCHEMA_VERSION + 1}", "upgrade panostudy")
    (tmp_path / "plain").write_text("a file, not a folder")
    target = tmp_path / "plain" / "study.sqlite"
    one_line_error(invoke("study", "init", "--db", target, "--protocol", tmp_path / "tiny.toml"), str(target))
    one_line_error(invoke("study", "info", "--db", tmp_path / "none.sqlite"), "none.sqlite", "study init")
    (tmp_path / "broken.toml").write_text("name = [")
    one_line_error(invoke("study", "init", "--db", tmp_path / "new.sqlite", "--protocol", tmp_path / "broken.toml"),
                   "broken.toml", "invalid TOML")
    assert not (tmp_path / "new.sqlite").exists()
    one_line_error(invoke("study", "export", "--db", study, "--out", tmp_path / "a.json"), "a.json", "unknown export format")


def test_an_unusable_backend_is_refused_before_the_session_is_planned(study, monkeypatch):
    from viewer.backends.openvr import OpenVRBackend

    monkeypatch.setattr(OpenVRBackend, "why_not", classmethod(lambda cls: "no HMD detected; connect the headset"))
    result = invoke("session", "run", "--db", str(study), "--participant", "P01", "--backend", "openvr")
    one_line_error(result, "openvr", "no HMD detected")
    assert count(study, StudySession) == 0


def test_bad_session_input_exits_2_and_writes_nothing(study, tmp_path):
    base = ("session", "run", "--db", study, "--participant", "P01", "--backend", "none", "--simulate", 1)
    one_line_error(invoke(*base, "--station", "lab 2;rm"), "--station 'lab 2;rm' is not a station name")
    one_line_error(invoke(*base, "--session", 3), "--session 3", "defines session(s) 1..1")
    assert count(study, StudySession) == 0
    one_line_error(invoke("session", "resume", "--db", study, "--participant", "P01", "--backend", "none",
                          "--simulate", 1, "--session", 2), "--session 2")
    assert invoke(*base, "--station", "lab-2.a").exit_code == 0
    one_line_error(invoke("session", "withdraw", "--db", study, "--participant", "P01", "--session", 5), "--session 5")


def test_a_protocol_with_a_character_no_font_has_is_refused_at_init(tmp_path):
    protocol = write_protocol(tmp_path)
    protocol.write_text(protocol.read_text(encoding="utf-8").replace("Rest a moment.", "พักสักครู่"), encoding="utf-8")
    db = tmp_path / "new.sqlite"
    one_line_error(invoke("study", "init", "--db", db, "--protocol", protocol),
                   "tiny.toml: breaks.text: character 'พ' (U+0E1E) is in no panel font", "[panel] fonts")
    assert not db.exists()


def test_an_interrupted_run_exits_3_with_the_resume_command_and_migrate_says_what_it_did(study, tmp_path, monkeypatch):
    from viewer.session_runner import SessionSummary

    def stopped(engine, backend, **options):
        return SessionSummary(0, False, 0, "stopped with Escape in the participant's window", engine.status)

    monkeypatch.setattr("viewer.session_runner.run_session", stopped)
    monkeypatch.setattr("viewer.backends.headless.HeadlessBackend.why_not", classmethod(lambda cls: None))
    result = invoke("session", "run", "--db", study, "--participant", "P01", "--backend", "headless", "--simulate", 1)
    assert result.exit_code == 3, result.output
    assert f"resume it with: panostudy session resume --db {study} --participant P01 --backend headless" in result.output
    current = invoke("study", "migrate", "--db", study)
    assert current.exit_code == 0 and f"is at schema version {SCHEMA_VERSION} already; nothing to migrate" in current.output
    assert not list(Path(study).parent.glob("*.bak"))

    def withdrawn(engine, backend, **options):   # the experimenter aborted: withdrawn
        engine.withdraw("felt dizzy")
        return SessionSummary(0, False, 0, "felt dizzy", engine.status)

    monkeypatch.setattr("viewer.session_runner.run_session", withdrawn)
    result = invoke("session", "run", "--db", study, "--participant", "P02", "--backend", "headless", "--simulate", 1)
    assert result.exit_code == 4, result.output
    assert "participant P02: withdrawn (felt dizzy)" in result.output and "resume" not in result.output


def test_a_session_with_the_console_does_not_start_where_the_console_cannot_open(study, monkeypatch):
    from study.models import StudySession

    monkeypatch.setattr("viewer.backends.desktop.DesktopBackend.why_not", classmethod(lambda cls: None))
    monkeypatch.setattr("viewer.console_link.importlib.util.find_spec",
                        lambda name: None if name == "_tkinter" else object())
    one_line_error(invoke("session", "run", "--db", study, "--participant", "P01", "--backend", "desktop",
                          "--simulate", 1), "--console", "apt-get install python3-tk", "--no-console")
    assert count(study, StudySession) == 0
    # headless output is for a script, not a person: no console is asked for, and none is needed
    monkeypatch.setattr("viewer.backends.headless.HeadlessBackend.why_not", classmethod(lambda cls: None))
    monkeypatch.setattr("viewer.session_runner.run_session", lambda engine, backend, **options: None)
    ran = invoke("session", "run", "--db", study, "--participant", "P01", "--backend", "headless", "--simulate", 1)
    assert ran.exit_code == 3 and count(study, StudySession) == 1   # the stand-in ran nothing: the session stays open
