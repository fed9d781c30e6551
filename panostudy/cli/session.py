"""`panostudy session ...`: run, resume or withdraw one participant's session.

Exit codes: 0 the session ran to its end, 2 bad input (nothing written), 3 the run was interrupted and
can be resumed (the exact ``session resume`` command is printed), 4 the session ended without
completing: the participant withdrew or declined consent.

A run holds the participant's run lock (:func:`study.store.running`) from before its first write to its
last: a second station asked to run, resume or withdraw the same participant meanwhile is refused with
one line. Ctrl-C and SIGTERM (a shutdown, ``kill``) stop a run the same way: what was confirmed is kept,
and the resume command is printed.
"""

from __future__ import annotations

import shlex
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from panostudy.cli._console import console
from panostudy.cli.study_cmd import DbOption

EXIT_INTERRUPTED = 3
EXIT_ENDED = 4

ParticipantOption = Annotated[str, typer.Option("--participant", help="The participant's pseudonymous code.")]
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        help="openxr or openvr (headset), desktop (window), headless (offscreen rendering) or none (scripted driver only, no rendering).",
    ),
]
DriverOption = Annotated[
    Optional[Path], typer.Option("--driver", help="Replay answers from a .csv/.json file (columns key, value).")
]
SimulateOption = Annotated[Optional[int], typer.Option("--simulate", help="Answer with the seeded rater model of this seed.")]
PaceOption = Annotated[float, typer.Option("--pace", help="Real seconds to wait before each scripted step.")]
StationOption = Annotated[
    Optional[str],
    typer.Option("--station", help="Name of this machine, recorded with the session (default: the host name)."),
]
def _session_number(default: str):
    return Annotated[Optional[int], typer.Option("--session", help=f"Which of the participant's sessions, from 1 "
                                                                    f"(default: {default}).")]


RunSessionOption = _session_number("the next one due")
OpenSessionOption = _session_number("the open one")
FullscreenOption = Annotated[bool, typer.Option("--fullscreen", help="Desktop backend: fill the primary screen.")]
ConsoleOption = Annotated[
    bool,
    typer.Option("--console/--no-console", help="Open the experimenter's console window (desktop and headset backends)."),
]

BACKENDS = ("openxr", "openvr", "desktop", "headless", "none")

session_app = typer.Typer(name="session", help="Run, resume or withdraw a participant's session.", no_args_is_help=True)


def _scripted_driver(driver: Path | None, simulate: int | None, pace: float):
    from study.driver import RaterModel, ReplayAnswers, ScriptedDriver
    from study.errors import SessionError

    if driver is not None and simulate is not None:
        raise SessionError("--driver and --simulate exclude each other; pass one of them")
    if driver is not None:
        return ScriptedDriver(ReplayAnswers.from_file(driver), pace_s=pace)
    if simulate is not None:
        return ScriptedDriver(RaterModel(simulate), motion_seed=simulate, pace_s=pace)
    return None


def _check_backend(backend: str, scripted, with_console: bool, fullscreen: bool = False) -> None:
    from study.errors import BackendUnavailable, SessionError

    if backend not in BACKENDS:
        raise SessionError(f"--backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if fullscreen and backend != "desktop":
        raise SessionError(f"--fullscreen fills the screen with the desktop backend's window; --backend {backend} "
                           "has none, so leave --fullscreen out")
    if backend in ("none", "headless") and scripted is None:
        raise SessionError(f"--backend {backend} has nobody to answer; pass --driver FILE or --simulate SEED")
    if backend != "none":
        # Checked before the session and its trial order are written, so an unusable backend leaves nothing.
        try:
            from viewer.backends.base import backend_class
        except ImportError as exc:
            raise BackendUnavailable(backend, f"the viewer cannot be loaded ({exc}); use --backend none") from None
        cls = backend_class(backend)
        reason = cls.why_not()
        if reason is not None:
            raise BackendUnavailable(backend, reason)
        if with_console and _interactive(cls.capabilities):
            from viewer.console_link import why_not

            # the console is the experimenter's only control in a headset: a session does not start without it
            reason = why_not()
            if reason is not None:
                raise SessionError(f"--console: the experimenter's console cannot open here: {reason}; or pass --no-console")


def _interactive(capabilities) -> bool:
    """A person looks at this backend's output (a window or a headset), so the console belongs beside it."""
    return capabilities.paced and not capabilities.returns_pixels


def _station(station: str | None) -> str:
    from study.errors import PanostudyError
    from study.store import STATION_NAME, check_station

    if station is not None:
        return check_station(station)
    host = socket.gethostname().split(".")[0]
    if not STATION_NAME.fullmatch(host):
        raise PanostudyError(f"the host name {host!r} is not a station name; pass --station NAME "
                             "(letters, digits, '.', '_' or '-')")
    return host


def _backend(backend: str, engine, fullscreen: bool, scripted):
    from viewer.backends.base import backend_class

    protocol = engine.protocol
    if backend == "headless":
        from panostudy.gaze_targets import synthetic_gaze, target_regions
        from viewer.backends.headless import HeadlessBackend

        # the scripted participant's eyes: the synthetic tracker, drawn towards the stimuli's masked objects
        return HeadlessBackend(gaze=synthetic_gaze(scripted.motion_seed, engine.participant_code, target_regions(engine.db)))
    if backend == "desktop":
        from viewer.backends.desktop import DesktopBackend

        width, height = protocol.view.window
        return DesktopBackend(width, height, fov_deg=protocol.view.fov_deg, fullscreen=fullscreen,
                              title=f"panostudy – {protocol.name}")
    return backend_class(backend)()


@dataclass(frozen=True)
class _Stopped:
    """How a scripted run without a viewer ended early (the viewer's runner returns its own summary)."""

    interrupted: str


#: The reason a run stopped by Ctrl-C records (the viewer's runner uses the same words).
CTRL_C = "interrupted from the terminal (Ctrl-C)"
SIGTERM_REASON = "stopped by SIGTERM (a shutdown or 'kill')"


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops a run as Ctrl-C does (a KeyboardInterrupt in the main thread); a second one while the run
    records its stop is ignored, so that the stop is recorded whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(SIGTERM_REASON)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drive(engine, backend: str, scripted, *, resumed: bool, station: str, fullscreen: bool, with_console: bool,
           fonts) -> object | None:
    if backend == "none":
        from rich.progress import Progress

        try:
            with Progress(console=console, transient=True) as progress:
                done, total = engine.progress()
                task = progress.add_task(f"session of {engine.participant_code}", completed=done, total=total)
                scripted.run(engine, on_step=lambda step: progress.update(task, completed=engine.progress()[0]))
        except KeyboardInterrupt as stop:
            reason = str(stop) or CTRL_C
            engine.record_event("interrupted", {"at_step": engine.current().key, "backend": "none", "reason": reason,
                                                "station": station})
            return _Stopped(reason)
        return None
    from viewer.session_runner import run_session

    instance = _backend(backend, engine, fullscreen, scripted)
    interactive = _interactive(instance.capabilities)
    if with_console and interactive:
        console.print("the experimenter's console opens in its own window: Pause (P), Resume (R), Break now (B), "
                      "Abort (A)", soft_wrap=True)
    return run_session(engine, instance, driver=scripted, console=with_console and interactive, resumed=resumed,
                       station=station, fonts=fonts)


def _report(engine, summary, db: str, participant: str, backend: str, station: str) -> None:
    done, total = engine.progress()
    what = f"session {engine.number} of {engine.sessions_in_protocol()} of participant {participant}"
    if engine.status == "declined":
        console.print(f"{what}: consent declined; nothing but that was recorded")
        raise typer.Exit(EXIT_ENDED)
    if engine.status == "withdrawn":
        reason = f" ({summary.interrupted})" if summary is not None and summary.interrupted else ""
        console.print(f"{what}: withdrawn{reason} at step {done + 1} of {total}; what was recorded is kept")
        raise typer.Exit(EXIT_ENDED)
    if engine.status == "completed":
        console.print(f"{what}: completed, {done} of {total} steps done")
        if engine.number < engine.sessions_in_protocol():
            console.print(f"the next session: panostudy session run --db {shlex.quote(db)} --participant {participant}",
                          soft_wrap=True)
        return
    reason = f": {summary.interrupted}" if summary is not None and summary.interrupted else ""
    console.print(f"{what}: interrupted at step {done + 1} of {total} ('{engine.current().key}'){reason}", soft_wrap=True)
    console.print(f"resume it with: panostudy session resume --db {shlex.quote(db)} --participant {participant} "
                  f"--backend {backend} --station {shlex.quote(station)}", soft_wrap=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _run_or_resume(mode: Literal["run", "resume"], db, participant, backend, driver, simulate, pace, *,
                   station=None, number=None, fullscreen=False, with_console=True) -> None:
    from study.engine import SessionEngine
    from study.store import open_study, running

    # The answer file is read before the session is planned, so a bad file writes nothing.
    scripted = _scripted_driver(driver, simulate, pace)
    _check_backend(backend, scripted, with_console, fullscreen)
    station = _station(station)
    with open_study(db) as study:
        if scripted is not None:
            scripted.check(study.protocol)
        fonts = None
        if backend != "none":
            from viewer.panel import check_protocol

            # this station's fonts must draw every text: checked before anything is written
            fonts = check_protocol(study.protocol, f"{study.shown_url} (its stored protocol)")
        if scripted is None:
            from study.export import placeholder_warning

            # a person is about to answer: say so at the desk if what they will rate is noise
            warning = placeholder_warning(study)
            if warning is not None:
                console.print(warning, style="bold red", soft_wrap=True, highlight=False)
        with running(study, participant), _sigterm_as_interrupt():
            if mode == "run":
                engine = SessionEngine.start(study, participant, station=station, number=number)
            else:
                engine = SessionEngine.resume(study, participant, number, station=station)
            if scripted is not None:
                # Exports and reports say who answered; a report built from simulated ratings carries a banner.
                source = {"source": "simulated", "seed": simulate} if simulate is not None else {"source": "replayed", "file": str(driver)}
                engine.record_event("answers_source", source)
            summary = _drive(engine, backend, scripted, resumed=mode == "resume", station=station,
                             fullscreen=fullscreen, with_console=with_console, fonts=fonts)
            # An interruption may have come between a commit and the engine's note of it: report what is stored.
            engine = SessionEngine.load(study, participant, engine.number)
            # the commands printed name the database as messages do: a password never shows
            _report(engine, summary, study.shown_url, participant, backend, station)


@session_app.command("run")
def run(
    db: DbOption,
    participant: ParticipantOption,
    backend: BackendOption = "desktop",
    driver: DriverOption = None,
    simulate: SimulateOption = None,
    pace: PaceOption = 0.0,
    station: StationOption = None,
    session: RunSessionOption = None,
    fullscreen: FullscreenOption = False,
    with_console: ConsoleOption = True,
) -> None:
    """Plan the participant's next due session (its full trial order is stored first) and run it."""
    _run_or_resume("run", db, participant, backend, driver, simulate, pace, station=station, number=session,
                   fullscreen=fullscreen, with_console=with_console)


@session_app.command("resume")
def resume(
    db: DbOption,
    participant: ParticipantOption,
    backend: BackendOption = "desktop",
    driver: DriverOption = None,
    simulate: SimulateOption = None,
    pace: PaceOption = 0.0,
    station: StationOption = None,
    session: OpenSessionOption = None,
    fullscreen: FullscreenOption = False,
    with_console: ConsoleOption = True,
) -> None:
    """Continue the participant's open session at its first unanswered step (after a stop or a crash)."""
    _run_or_resume("resume", db, participant, backend, driver, simulate, pace, station=station, number=session,
                   fullscreen=fullscreen, with_console=with_console)


@session_app.command("withdraw")
def withdraw(
    db: DbOption,
    participant: ParticipantOption,
    reason: Annotated[str, typer.Option("--reason", help="Why the session stopped (kept in the event log).")] = "participant withdrew",
    session: OpenSessionOption = None,
) -> None:
    """Mark a session withdrawn; what was recorded is kept (use 'study delete-participant' to erase it)."""
    from study.engine import SessionEngine
    from study.store import open_study, running

    with open_study(db) as study, running(study, participant):
        engine = SessionEngine.load(study, participant, session)
        step = engine.current().key
        engine.withdraw(reason)
    console.print(f"session {engine.number} of {participant} withdrawn at step '{step}'; its data is kept")


def register(app: typer.Typer) -> None:
    """Adds the ``session`` command group to the root app."""
    app.add_typer(session_app)
