"""`panostudy session ...`: run, resume or withdraw one participant's session."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from panostudy.cli._console import console
from panostudy.cli.study_cmd import DbOption

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


def _check_backend(backend: str, scripted) -> None:
    from study.errors import BackendUnavailable, SessionError

    if backend not in BACKENDS:
        raise SessionError(f"--backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if backend == "none" and scripted is None:
        raise SessionError("--backend none has nobody to answer; pass --driver FILE or --simulate SEED")
    if backend != "none":
        # Checked before the session and its trial order are written, so an unusable backend leaves nothing.
        try:
            from viewer.backends.base import backend_class
        except ImportError as exc:
            raise BackendUnavailable(backend, f"the viewer cannot be loaded ({exc}); use --backend none") from None
        reason = backend_class(backend).why_not()
        if reason is not None:
            raise BackendUnavailable(backend, reason)


def _drive(engine, backend: str, scripted) -> None:
    if backend == "none":
        from rich.progress import Progress

        with Progress(console=console, transient=True) as progress:
            done, total = engine.progress()
            task = progress.add_task(f"session of {engine.participant_code}", completed=done, total=total)
            scripted.run(engine, on_step=lambda step: progress.update(task, completed=engine.progress()[0]))
    else:
        from viewer.session_runner import run_session

        summary = run_session(engine, backend, driver=scripted)
        if summary.interrupted:
            done, total = engine.progress()
            console.print(f"session of {engine.participant_code} interrupted after {done} of {total} steps: "
                          f"{summary.interrupted}; nothing is lost, continue with 'panostudy session resume'", soft_wrap=True)
            return
    done, total = engine.progress()
    console.print(f"session of {engine.participant_code}: {engine.status}, {done} of {total} steps done")


def _run_or_resume(mode: Literal["run", "resume"], db, participant, backend, driver, simulate, pace) -> None:
    from study.engine import SessionEngine
    from study.store import open_study

    # The answer file is read before the session is planned, so a bad file writes nothing.
    scripted = _scripted_driver(driver, simulate, pace)
    _check_backend(backend, scripted)
    with open_study(db) as study:
        if scripted is not None:
            scripted.check(study.protocol)
        engine = SessionEngine.start(study, participant) if mode == "run" else SessionEngine.resume(study, participant)
        if scripted is not None:
            # Exports and reports say who answered; a report built from simulated ratings carries a banner.
            source = {"source": "simulated", "seed": simulate} if simulate is not None else {"source": "replayed", "file": str(driver)}
            engine.record_event("answers_source", source)
        _drive(engine, backend, scripted)


@session_app.command("run")
def run(
    db: DbOption,
    participant: ParticipantOption,
    backend: BackendOption = "desktop",
    driver: DriverOption = None,
    simulate: SimulateOption = None,
    pace: PaceOption = 0.0,
) -> None:
    """Plan a participant's session (the full trial order is stored first) and run it."""
    _run_or_resume("run", db, participant, backend, driver, simulate, pace)


@session_app.command("resume")
def resume(
    db: DbOption,
    participant: ParticipantOption,
    backend: BackendOption = "desktop",
    driver: DriverOption = None,
    simulate: SimulateOption = None,
    pace: PaceOption = 0.0,
) -> None:
    """Continue a session at its first unanswered step (after a crash or a pause)."""
    _run_or_resume("resume", db, participant, backend, driver, simulate, pace)


@session_app.command("withdraw")
def withdraw(
    db: DbOption,
    participant: ParticipantOption,
    reason: Annotated[str, typer.Option("--reason", help="Why the session stopped (kept in the event log).")] = "participant withdrew",
) -> None:
    """Mark a session withdrawn; what was recorded is kept (use 'study delete-participant' to erase it)."""
    from study.engine import SessionEngine
    from study.store import open_study

    with open_study(db) as study:
        engine = SessionEngine.load(study, participant)
        step = engine.current().key
        engine.withdraw(reason)
    console.print(f"session of {participant} withdrawn at step '{step}'; its data is kept")


def register(app: typer.Typer) -> None:
    """Adds the ``session`` command group to the root app."""
    app.add_typer(session_app)
