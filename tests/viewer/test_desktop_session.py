"""The desktop backend and the experimenter's console in a virtual X display, as a lab meets them.

1. A person drags and zooms during one stimulus: the next one starts at its start yaw and the protocol's
   field of view again, panels keep their own fixed view, and the field of view is stored with each pose.
2. ``panostudy session run --backend desktop`` with its console, driven with xdotool key presses in the
   two windows: pause, resume, abort with a reason (exit 3 and the resume command), resume, Escape asked
   and declined, and on to the end; every answer is stored once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from _studykit import make_study

from study.engine import SessionEngine
from study.export import load_answers
from study.store import open_study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def display():
    """A private Xvfb display, stopped by its pid afterwards."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    number = next(n for n in range(120, 200) if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"))
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1600x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}") and time.monotonic() < deadline:
        time.sleep(0.05)
    yield {**os.environ, "DISPLAY": f":{number}", "PYTHONPATH": str(ROOT)}
    server.terminate()
    server.wait(10)


def test_every_stimulus_starts_with_the_same_view_and_panels_have_their_own(tmp_path, display):
    make_study(tmp_path, exposure_s=1.0, pose_rate_hz=20.0, participants=("P01",), per_scene=1,
               breaks="every_trials = 99", ssq=False).close()
    probe = Path(__file__).with_name("_desktop_session_probe.py")
    done = subprocess.run([sys.executable, str(probe), str(tmp_path / "study.sqlite")], capture_output=True, text=True,
                          env=display, timeout=180)
    if done.stdout.startswith("skip:"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
    out = json.loads(done.stdout.splitlines()[0])
    assert out["completed"]
    low, high = out["trial0_yaw_range"]
    assert low == pytest.approx(-24.0, abs=0.01) and high == pytest.approx(0.0, abs=0.01)   # the drag was logged
    assert 100.0 in out["trial0_fov"]                                                      # so was the zoom
    assert set(out["first_yaw"].values()) == {0.0} and set(out["first_fov"].values()) == {90.0}
    assert out["panel_fov"] == [out["panel_view"]]                                         # zooming a panel did nothing


def _step(db_path: Path):
    """The current step of P01's open session, read as another process would."""
    with open_study(db_path) as db:
        try:
            engine = SessionEngine.load(db, "P01")
        except Exception:  # noqa: BLE001 - not planned yet
            return None
        return engine.current(), engine.status


def _window(env, name: str) -> str | None:
    found = subprocess.run(["xdotool", "search", "--name", name], capture_output=True, text=True, env=env)
    ids = found.stdout.split()
    return ids[0] if ids else None


def _keys(env, window: str, *keys: str) -> None:
    subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, check=True, timeout=10)
    for key in keys:
        subprocess.run(["xdotool", "key", key], env=env, check=True, timeout=10)
        time.sleep(0.15)


def _type(env, window: str, text: str) -> None:
    subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, check=True, timeout=10)
    subprocess.run(["xdotool", "type", "--delay", "30", text], env=env, check=True, timeout=20)


def _wait_for(predicate, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _run(env, db: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "panostudy", "session", mode, "--db", str(db), "--participant", "P01",
                             "--backend", "desktop", "--station", "pilot-1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_desktop_session_with_its_console_pauses_aborts_and_resumes(tmp_path, display):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (apt-get install xdotool)")
    pytest.importorskip("tkinter")
    make_study(tmp_path, exposure_s=1.0, pose_rate_hz=20.0, participants=("P01",), per_scene=1,
               breaks="every_trials = 99", ssq=False).close()
    db = tmp_path / "study.sqlite"
    env = display
    run = _run(env, db, "run")
    participant = _wait_for(lambda: _window(env, "panostudy – tiny"), what="the participant's window")
    console = _wait_for(lambda: _window(env, "experimenter console"), what="the console")
    subprocess.run(["xdotool", "windowmove", console, "700", "0"], env=env, check=True)
    plan = ["pause", "abort"]
    answered = 0

    def answer_current(process):
        """Answers whatever panel is up; returns False once the process has ended."""
        nonlocal answered
        if process.poll() is not None:
            return False
        current = _step(db)
        if current is None or current[0].kind == "stimulus":
            time.sleep(0.2)
            return True
        step, _ = current
        if step.kind == "rating":
            _keys(env, participant, "3", "Return")
            answered += 1
        else:
            _keys(env, participant, "Return")
        _wait_for(lambda: process.poll() is not None or _step(db)[0].key != step.key, 20, f"the step after {step.key}")
        return True

    # instructions, training instructions, then the training trial's first question: pause there
    while _step(db) is None or _step(db)[0].kind != "rating":
        answer_current(run)
    _keys(env, console, "p")
    _wait_for(lambda: _kind_count(db, "paused"), 20, "the pause")
    _keys(env, console, "r")
    _wait_for(lambda: _kind_count(db, "resumed_after_pause"), 20, "the resume")
    _keys(env, participant, "Return")                      # "ready?" → Continue
    _wait_for(lambda: _kind_count(db, "ready_confirmed"), 20, "the participant's Continue")
    for _ in range(3):
        answer_current(run)
    # abort with a reason, resumable
    _keys(env, console, "a")
    dialog = _wait_for(lambda: _window(env, "Abort the session"), 20, "the abort dialog")
    _type(env, dialog, "fire alarm")
    _keys(env, dialog, "Return")
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 3, output
    assert f"resume it with: panostudy session resume --db {db} --participant P01 --backend desktop" in output
    assert "fire alarm" in output

    resume = _run(env, db, "resume")
    participant = _wait_for(lambda: _window(env, "panostudy – tiny"), what="the participant's window again")
    _wait_for(lambda: _kind_count(db, "resumed"), 30, "the resume")
    time.sleep(1.5)
    _keys(env, participant, "Return")                      # "ready?" after a resume
    # Escape asks; Go on (the first button, picked with the arrows) keeps the session going
    _wait_for(lambda: _kind_count(db, "ready_confirmed") >= 2, 20, "ready after the resume")
    _keys(env, participant, "Escape")
    _wait_for(lambda: _kind_count(db, "stop_asked"), 20, "the stop question")
    _keys(env, participant, "Right", "Return")
    _wait_for(lambda: _kind_count(db, "stop_cancelled"), 20, "Go on")
    while answer_current(resume) and _step(db)[0].kind != "done":
        pass
    # the thank-you panel: Finish
    _wait_for(lambda: _step(db)[1] == "completed", 30, "the end")
    time.sleep(1.0)
    _keys(env, participant, "Return")
    output, _ = resume.communicate(timeout=60)
    assert resume.returncode == 0, output
    assert "completed" in output

    answers = load_answers(db)
    assert len(answers) == 3 * 3 and not answers.duplicated(["trial_index", "scale", "item"]).any()
    assert set(answers.station) == {"pilot-1"} and set(answers.value) == {3}
    commands = _console_commands(db)
    assert [c["command"] for c in commands] == ["pause", "resume", "abort"]
    assert commands[-1]["reason"] == "fire alarm" and commands[-1]["outcome"] == "resumable"


def _kind_count(db: Path, kind: str) -> int:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text("select count(*) from event where kind = :k"), {"k": kind})
    finally:
        engine.dispose()


def _console_commands(db: Path) -> list[dict]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return [json.loads(d) for d in connection.execute(
                sa.text("select detail from event where kind = 'console' order by id")).scalars()]
    finally:
        engine.dispose()


LOST_SESSION = """
import os, sys, time
from viewer.console_link import ConsoleLink

link = ConsoleLink(title="lost-session console")
link.start()
print(link._process.pid, flush=True)
time.sleep(float(sys.argv[1]))
os._exit(9)          # as a kill -9: no goodbye to the console
"""


def test_the_console_of_a_session_process_that_died_says_so_and_closes_at_once(display):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (apt-get install xdotool)")
    pytest.importorskip("tkinter")
    session = subprocess.Popen([sys.executable, "-c", LOST_SESSION, "8"], env=display, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    console_pid = int(session.stdout.readline())
    assert session.wait(60) == 9
    try:
        lost = _wait_for(lambda: _window(display, "SESSION PROCESS LOST"), 60, "the lost banner")
        # closing it asks nothing: there is no session left to stop
        subprocess.run(["xdotool", "windowclose", lost], env=display, check=False)
        _wait_for(lambda: not os.path.exists(f"/proc/{console_pid}"), 20, "the console's end")
    finally:
        if os.path.exists(f"/proc/{console_pid}"):
            os.kill(console_pid, 9)
