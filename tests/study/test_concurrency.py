"""Concurrent sessions: many stations on one study at once, on SQLite and on PostgreSQL.

Sixteen `panostudy session run` processes of sixteen participants record exactly the answers sixteen runs
one after the other record; the same participant started twice at once runs once, and the other command
gets one line and writes nothing; starts through the library race safely; Ctrl-C and SIGTERM stop a run
with the resume line and lose nothing.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from _studykit import make_study

from study.driver import RaterModel, ScriptedDriver
from study.engine import SessionEngine
from study.errors import SessionError
from study.models import Answer, Event, Participant, PoseSample, SsqAnswer, StepDone, StudySession, Trial
from study.store import open_study

REPO = Path(__file__).resolve().parents[2]
CODES = tuple(f"P{n:02d}" for n in range(1, 17))


def panostudy(*args: str, **options) -> subprocess.Popen:
    """`panostudy ARGS` in a process of its own (stdout and stderr captured as text)."""
    return subprocess.Popen([sys.executable, "-m", "panostudy", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def recorded(db_url) -> dict:
    """Everything the sessions stored, keyed by participant code and trial index, so that two studies with
    the same plans compare equal."""
    with open_study(db_url) as db, db.Session() as session:
        code = dict(session.execute(sa.select(StudySession.id, Participant.code).join(Participant)).all())
        trial = dict(session.execute(sa.select(Trial.id, Trial.index)).all())
        answers = [(code[s], trial[t], scale, item, value) for s, t, scale, item, value in session.execute(
            sa.select(Answer.session_id, Answer.trial_id, Answer.scale, Answer.item, Answer.value))]
        ssq = [(code[s], *rest) for s, *rest in session.execute(
            sa.select(SsqAnswer.session_id, SsqAnswer.phase, SsqAnswer.item, SsqAnswer.value))]
        steps = [(code[s], key) for s, key in session.execute(sa.select(StepDone.session_id, StepDone.key))]
        poses = [(code[s], trial[t], n) for s, t, n in session.execute(
            sa.select(PoseSample.session_id, PoseSample.trial_id, sa.func.count())
            .group_by(PoseSample.session_id, PoseSample.trial_id))]
        plans = [(code[s], i, stimulus, tuple(order)) for s, i, stimulus, order in session.execute(
            sa.select(Trial.session_id, Trial.index, Trial.stimulus_id, Trial.scale_order))]
        status = [(code[s], status) for s, status in session.execute(sa.select(StudySession.id, StudySession.status))]
    # Each row must be there once: a duplicate would shrink the set below the row count.
    assert len(set(answers)) == len(answers) and len(set(ssq)) == len(ssq) and len(set(steps)) == len(steps)
    return {"answers": sorted(answers), "ssq": sorted(ssq), "steps": sorted(steps), "poses": sorted(poses),
            "plans": sorted(plans), "status": sorted(status)}


def planned_items(db_url) -> dict[str, int]:
    """How many rating answers each participant's stored plan asks for."""
    with open_study(db_url) as db, db.Session() as session:
        items = {scale.id: len(scale.items) for scale in db.protocol.scales}
        rows = session.execute(sa.select(Participant.code, Trial.scale_order).select_from(Trial)
                               .join(StudySession, StudySession.id == Trial.session_id)
                               .join(Participant, Participant.id == StudySession.participant_id)).all()
    counts: dict[str, int] = {}
    for code, order in rows:
        counts[code] = counts.get(code, 0) + sum(items[scale] for scale in order)
    return counts


def test_sixteen_concurrent_sessions_record_every_answer_once(tmp_path, db_target):
    reference = make_study(tmp_path / "one_by_one", participants=CODES, per_scene=1)
    for number, code in enumerate(CODES, start=1):
        ScriptedDriver(RaterModel(number), motion_seed=number).run(SessionEngine.start(reference, code))
    expected = recorded(reference.url)
    reference.close()

    with make_study(tmp_path / "at_once", participants=CODES, per_scene=1, db=db_target(tmp_path / "at_once")) as db:
        url = db.url
    runs = [panostudy("session", "run", "--db", url, "--participant", code, "--backend", "none",
                      "--simulate", number, "--station", f"station-{number}")
            for number, code in enumerate(CODES, start=1)]
    results = [(run.wait(timeout=240), *run.communicate()) for run in runs]
    assert [(code, rc, err) for code, (rc, _, err) in zip(CODES, results) if rc != 0 or err.strip()] == []
    assert all("completed" in out for _, out, _ in results)
    stored = recorded(url)
    assert stored == expected                                   # the same answers as one run after the other
    assert {code: sum(1 for a in stored["answers"] if a[0] == code) for code in CODES} == planned_items(url)
    assert len(stored["ssq"]) == 16 * 32 and stored["status"] == [(code, "completed") for code in CODES]


def test_concurrent_starts_through_the_library_race_safely(tmp_path, db_target):
    """Sixteen participants started at once all get their session; one participant started by eight callers
    at once gets one, and the seven others are told it is open."""
    with make_study(tmp_path, participants=CODES, db=db_target(tmp_path)) as db:
        url = db.url
    outcomes: dict[str, list] = {"started": [], "refused": [], "errors": []}
    gate = threading.Barrier(24)

    def start(code: str) -> None:
        try:
            with open_study(url) as mine:
                gate.wait()
                outcomes["started"].append((code, SessionEngine.start(mine, code).number))
        except SessionError as refused:
            outcomes["refused"].append((code, str(refused)))
        except BaseException as exc:  # noqa: BLE001  (collected and asserted below)
            outcomes["errors"].append((code, repr(exc)))

    threads = [threading.Thread(target=start, args=(code,)) for code in (*CODES, *["P01"] * 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes["errors"] == []
    assert sorted(outcomes["started"]) == [(code, 1) for code in CODES]
    assert len(outcomes["refused"]) == 8          # nine callers of P01: one started it
    assert all(code == "P01" and "has session 1 open (planned)" in message for code, message in outcomes["refused"])
    # the hint is a command that works as written: it names the database
    assert all(f"'panostudy session resume --db {shlex.quote(db.shown_url)} --participant P01'" in message
               for _, message in outcomes["refused"])
    with open_study(url) as db, db.Session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(StudySession)) == 16
        planned = session.scalars(sa.select(Event.detail).where(Event.kind == "planned")).all()
        assert len(planned) == 16


def one_line(run: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, err = run.communicate(timeout=timeout)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, (out, err)
    return run.returncode, lines[0]


def test_the_same_participant_started_twice_at_once_runs_once(tmp_path, db_target):
    with make_study(tmp_path, participants=("P01", "P02"), per_scene=1, db=db_target(tmp_path)) as db:
        url = db.url
    command = ("session", "run", "--db", url, "--participant", "P01", "--backend", "none", "--simulate", "1",
               "--pace", "0.5")
    first, second = panostudy(*command, "--station", "left"), panostudy(*command, "--station", "right")
    # the loser stops at once; the winner, slowed down, holds the participant for the rest of the test
    deadline = time.monotonic() + 60
    while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    rc, line = one_line(loser)
    assert rc == 2 and "participant 'P01' has a session running right now" in line
    assert "one participant's session runs on one station at a time" in line
    # nobody else may resume, withdraw or erase them while it runs; another participant runs meanwhile
    others = [panostudy("session", "resume", "--db", url, "--participant", "P01", "--backend", "none", "--simulate", "1"),
              panostudy("session", "withdraw", "--db", url, "--participant", "P01"),
              panostudy("study", "delete-participant", "--db", url, "--code", "P01", "--yes")]
    meanwhile = panostudy("session", "run", "--db", url, "--participant", "P02", "--backend", "none", "--simulate", "2")
    station = "left" if winner is first else "right"
    for other in others:
        rc, line = one_line(other)
        assert rc == 2 and f"participant 'P01' has a session running right now (session 1, on station {station})" in line
    assert meanwhile.wait(timeout=60) == 0, meanwhile.communicate()
    assert winner.poll() is None, winner.communicate()
    with open_study(url) as db, db.Session() as session:
        p01 = session.scalar(sa.select(StudySession).join(Participant).where(Participant.code == "P01"))
        kinds = session.scalars(sa.select(Event.kind).where(Event.session_id == p01.id)).all()
    assert p01.status == "running" and p01.station == station
    # what the refused commands would have written first: a plan, the answers' source, a resume, a withdrawal
    assert sorted(kinds) == ["answers_source", "planned"]
    # kill -9 leaves no lock behind: the database system drops it with the process, so resume follows at once
    os.kill(winner.pid, signal.SIGKILL)
    winner.communicate(timeout=30)
    again = panostudy("session", "resume", "--db", url, "--participant", "P01", "--backend", "none", "--simulate", "1")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "completed" in out and not err.strip(), (out, err)
    stored = recorded(url)
    assert sum(1 for a in stored["answers"] if a[0] == "P01") == planned_items(url)["P01"]


def wait_for_answers(url, count: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        with open_study(url) as db, db.Session() as session:
            if session.scalar(sa.select(sa.func.count()).select_from(Answer)) >= count:
                return
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize(("stop", "backend", "reason"), [
    (signal.SIGINT, "none", "interrupted from the terminal (Ctrl-C)"),
    (signal.SIGTERM, "none", "stopped by SIGTERM (a shutdown or 'kill')"),
    (signal.SIGTERM, "headless", "stopped by SIGTERM (a shutdown or 'kill')"),
], ids=["ctrl-c", "sigterm", "sigterm-headless"])
def test_a_stopped_session_prints_the_resume_line_and_loses_nothing(tmp_path, stop, backend, reason):
    if backend == "headless":
        from viewer.backends.headless import HeadlessBackend

        if HeadlessBackend.why_not() is not None:
            pytest.skip(HeadlessBackend.why_not())
    reference = make_study(tmp_path / "whole", participants=("P01",), per_scene=1, exposure_s=1.0)
    ScriptedDriver(RaterModel(1), motion_seed=1).run(SessionEngine.start(reference, "P01"))
    expected = recorded(reference.url)
    reference.close()
    with make_study(tmp_path / "stopped", participants=("P01",), per_scene=1, exposure_s=1.0) as db:
        url = db.url
    path = url.removeprefix("sqlite:///")
    run = panostudy("session", "run", "--db", path, "--participant", "P01", "--backend", backend, "--simulate", "1",
                    "--pace", "0.05", "--no-console")
    wait_for_answers(url, 3, run)
    run.send_signal(stop)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 3 and not err.strip(), (out, err)
    assert f"interrupted at step" in out and reason in out
    resume_line = f"resume it with: panostudy session resume --db {path} --participant P01 --backend {backend}"
    assert resume_line in out
    with open_study(url) as db, db.Session() as session:
        events = session.scalars(sa.select(Event.detail).where(Event.kind == "interrupted")).all()
    assert [e["reason"] for e in events] == [reason]
    again = panostudy(*resume_line.split(": ", 1)[1].split()[1:], "--simulate", "1", "--no-console")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "completed" in out, (out, err)
    stored = recorded(url)
    if backend == "none":
        assert stored == expected       # the scripted answers and poses of an uninterrupted run, each once
    else:
        assert {k: stored[k] for k in ("answers", "ssq", "steps", "plans", "status")} == \
            {k: expected[k] for k in ("answers", "ssq", "steps", "plans", "status")}


FILLING_DISK = """
import sqlite3, sys
import sqlalchemy as sa
from study.engine import SessionEngine
real_submit = SessionEngine.submit
calls = []

def filling_up(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 4:
        raise sa.exc.OperationalError("INSERT INTO answer ...", {}, sqlite3.OperationalError("database or disk is full"))
    return real_submit(self, *args, **kwargs)

SessionEngine.submit = filling_up
from panostudy.cli import main
sys.argv = ["panostudy", *sys.argv[1:]]
main()
"""


def test_a_full_disk_in_the_viewer_runner_is_one_line_and_resumable(tmp_path):
    """The runner rewritten for the console still hands a full disk to the one error layer (console off).

    The run is a process of its own: its disk fills up at the fifth answer."""
    from viewer.backends.headless import HeadlessBackend

    if HeadlessBackend.why_not() is not None:
        pytest.skip(HeadlessBackend.why_not())
    make_study(tmp_path, participants=("P01",), per_scene=1, exposure_s=0.5).close()
    session = ("session", "--db", str(tmp_path / "study.sqlite"), "--participant", "P01", "--backend", "headless",
               "--simulate", "1", "--no-console")
    full = subprocess.run([sys.executable, "-c", FILLING_DISK, session[0], "run", *session[1:]], cwd=REPO, text=True,
                          capture_output=True, timeout=300)
    assert full.returncode == 2, full.stderr
    line, = full.stderr.strip().splitlines()
    assert "study.sqlite: the disk is full (database or disk is full); free some space" in line
    assert "every confirmed answer is kept; 'panostudy session resume' continues where it stopped" in line
    with open_study(tmp_path / "study.sqlite") as reopened:
        assert SessionEngine.load(reopened, "P01").progress()[0] == 4
    resumed = panostudy(session[0], "resume", *session[1:])
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "completed" in stdout, stderr


def test_a_run_lock_excludes_a_second_holder_even_in_the_same_process(tmp_path, db_target):
    from study.database import sqlite_file, sqlite_lock_holders, try_run_lock
    from study.store import running

    with make_study(tmp_path, participants=("P01", "P02"), db=db_target(tmp_path)) as db, open_study(db.url) as other:
        release = try_run_lock(db.url, db.engine, 7)
        assert release is not None
        assert try_run_lock(other.url, other.engine, 7) is None          # another connection, another descriptor
        second = try_run_lock(other.url, other.engine, 8)                 # another key is free
        assert second is not None
        path = sqlite_file(db.url)
        if path is not None:
            # the run lock's owner shows as pid -1 in /proc/locks: it is not reported as a lock holder
            assert not any("pid -1" in holder for holder in sqlite_lock_holders(path))
        release()
        second()
        again = try_run_lock(other.url, other.engine, 7)
        assert again is not None
        again()
        with running(db, "P01"):
            with pytest.raises(SessionError, match="participant 'P01' has a session running right now in another"):
                with running(other, "P01"):
                    pass
            with running(other, "P02"):
                pass
        with running(other, "P01"):
            pass
