"""`panostudy analyze`: Table 1 in the terminal, and a self-contained HTML report with every table and figure."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from panostudy.cli._console import console
from study.errors import AnalysisError


class Screening(str, Enum):
    none = "none"
    bt500 = "bt500"
    p913 = "p913"
    mle = "mle"


# Identifiers stay text: a participant code "007" must not turn into the number 7.
_TEXT_COLUMNS = ("study", "protocol_hash", "participant", "station", "stimulus", "stimulus_sha256", "scene", "scale", "item",
                 "phase")


# Numeric columns of each export (integer, float); a cell that is not a number is named by file, column and row.
_NUMERIC_COLUMNS = {
    "--answers": (("session", "session_number", "trial_index", "value", "scale_min", "scale_max"), ("response_time_s",)),
    "--ssq": (("session", "session_number", "item", "value"), ()),
    "--poses": (("session", "session_number", "trial_index", "presentation"),
                ("t", "yaw_deg", "pitch_deg", "roll_deg", "fov_h_deg", "fov_v_deg", "x_m", "y_m", "z_m")),
    "--gaze": (("session", "trial_index"), ("t", "yaw_deg", "pitch_deg")),
}


def _read_table(path: Path, option: str):
    import pandas as pd

    if not path.is_file():
        raise AnalysisError(f"{option} {path}: no such file; give a .csv or .parquet written by 'panostudy study export'")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=dict.fromkeys(_TEXT_COLUMNS, str))
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise AnalysisError(f"{option} {path}: unknown format '{suffix}'; give a .csv or .parquet file")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise AnalysisError(f"{option} {path}: cannot be read ({str(exc).splitlines()[0]}); export it again") from None
    _check_numbers(frame, path, option, first_row=2 if suffix == ".csv" else 1)
    _parse_times(frame, path, option, first_row=2 if suffix == ".csv" else 1)
    return frame


#: UTC time columns of the exports: text in a CSV, parsed here so that durations can be computed from them.
_TIME_COLUMNS = ("shown_at", "answered_at")


def _parse_times(frame, path: Path, option: str, first_row: int) -> None:
    import numpy as np
    import pandas as pd

    for column in _TIME_COLUMNS:
        if column not in frame.columns or isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            continue
        times = pd.to_datetime(frame[column], utc=True, errors="coerce", format="ISO8601")
        bad = times.isna() & frame[column].notna()
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            where = "line" if first_row == 2 else "row"
            raise AnalysisError(
                f"{option} {path}: column '{column}' holds {frame[column].iloc[position]!r} at {where} "
                f"{position + first_row}; every cell must be an ISO 8601 UTC time, fix it or export the file again"
            )
        frame[column] = times


def _check_numbers(frame, path: Path, option: str, first_row: int) -> None:
    import numpy as np
    import pandas as pd

    integers, floats = _NUMERIC_COLUMNS[option]
    for column in (*integers, *floats):
        if column not in frame.columns or frame.empty:
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = (numbers.isna() & frame[column].notna()) | ~np.isfinite(numbers.fillna(0))
        if column in integers:
            bad |= numbers.notna() & (numbers != numbers.round())
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            kind = "an integer" if column in integers else "a finite number"
            where = "line" if first_row == 2 else "row"
            raise AnalysisError(
                f"{option} {path}: column '{column}' holds {frame[column].iloc[position]!r} at {where} "
                f"{position + first_row}; every cell must be {kind}, fix it or export the file again"
            )


def _load_db(db: str):
    """Answers, SSQ, poses and the study context (protocol, participants, sessions, stimuli, flagged trials) of a
    database."""
    url = db if "://" in db else None
    if url is None and not Path(db).is_file():
        raise AnalysisError(f"--db {db}: no such database file; give the SQLite file of 'panostudy study init' or a URL")
    from analysis.report import StudyContext
    from study.export import (
        load_answers,
        load_flagged_trials,
        load_gaze,
        load_participants,
        load_poses,
        load_sessions,
        load_ssq,
        load_stimuli,
        load_validation,
    )
    from study.store import open_study

    with open_study(url or Path(db)) as study:
        context = StudyContext(protocol=study.protocol, participants=load_participants(study),
                               sessions=load_sessions(study), stimuli=load_stimuli(study),
                               flagged_trials=load_flagged_trials(study), gaze=load_gaze(study),
                               validation=load_validation(study), source=study.shown_url)
        return load_answers(study), load_ssq(study), load_poses(study), context


def _load_export(folder: Path):
    """The same from a folder written by 'panostudy study export'; returns the stimulus root as well."""
    import json

    from analysis.report import StudyContext
    from study.export import EXPORT_MARKER, read_table
    from study.protocol import parse_protocol

    descriptor = folder / EXPORT_MARKER
    if not descriptor.is_file():
        raise AnalysisError(f"--export {folder}: no {EXPORT_MARKER} there; give a folder written by 'panostudy study export'")
    root = Path(json.loads(descriptor.read_text(encoding="utf-8")).get("panostudy:stimulus_root", folder))

    def table(name: str):
        path = folder / f"{name}.csv"
        return read_table(path, name) if path.is_file() else None

    answers = table("answers")
    if answers is None:
        raise AnalysisError(f"--export {folder}: answers.csv is missing; export the study again")
    protocol_file = folder / "protocol.toml"
    protocol = (parse_protocol(protocol_file.read_text(encoding="utf-8"), source=str(protocol_file), check_files=False)
                if protocol_file.is_file() else None)
    context = StudyContext(protocol=protocol, participants=table("participants"), sessions=table("sessions"),
                           stimuli=table("stimuli"), flagged_trials=table("flagged_trials"), gaze=table("gaze"),
                           validation=table("validation"), source=f"export folder {folder}")
    return answers, table("ssq"), table("poses"), context, root


def register(app: typer.Typer) -> None:
    """Adds ``analyze`` to the root app."""

    @app.command("analyze")
    def analyze(
        db: Annotated[Optional[str], typer.Option("--db", help="Study database (SQLite file or SQLAlchemy URL).")] = None,
        answers: Annotated[
            Optional[Path], typer.Option("--answers", help="Exported answers (.csv or .parquet) instead of --db.")
        ] = None,
        ssq: Annotated[Optional[Path], typer.Option("--ssq", help="Exported SSQ answers, with --answers.")] = None,
        poses: Annotated[Optional[Path], typer.Option("--poses", help="Exported pose samples, with --answers.")] = None,
        screening: Annotated[
            Screening,
            typer.Option("--screening", help="Observer screening before Table 1: none, bt500 (ITU-R BT.500 β2, all "
                         "items pooled), p913 (P.913 §12.4 bias removal) or mle (P.910 Annex E model)."),
        ] = Screening.bt500,
        out: Annotated[Path, typer.Option("--out", help="Report folder (created; replaced atomically).")] = Path("report"),
        study: Annotated[Optional[str], typer.Option("--study", help="Analyse only this study of the answers.")] = None,
        export: Annotated[
            Optional[Path], typer.Option("--export", help="A folder written by 'panostudy study export' instead of --db.")
        ] = None,
        protocol: Annotated[
            Optional[Path], typer.Option("--protocol", help="With --answers: the protocol TOML (wording, name, SHA-256).")
        ] = None,
        exclude_flagged: Annotated[
            bool, typer.Option("--exclude-flagged", help="Leave out the answers of flagged trials (pose rate below 95 %, "
                               "stimulus interrupted); by default they are analysed and listed.")
        ] = False,
    ) -> None:
        """Analyse the ratings: Table 1 with CIs, screening, mixed models, reliability, SSQ and an HTML report."""
        from analysis.report import StudyContext

        # 1. Validate the arguments before reading or writing anything.
        if sum(x is not None for x in (db, answers, export)) != 1:
            raise AnalysisError("give exactly one of --db (study database), --export (export folder) or --answers "
                                "(exported .csv/.parquet)")
        if answers is None and (ssq is not None or poses is not None or protocol is not None):
            raise AnalysisError("--ssq, --poses and --protocol go with --answers; --db and --export hold them already")
        if exclude_flagged and answers is not None:
            raise AnalysisError("--exclude-flagged needs the flagged trials: use --db or --export (an answers file lacks them)")

        # 2. Load.
        root = Path.cwd()
        if db is not None:
            answer_frame, ssq_frame, pose_frame, context = _load_db(db)
            if "://" not in db:
                root = Path(db).resolve().parent
        elif export is not None:
            answer_frame, ssq_frame, pose_frame, context, root = _load_export(export)
        else:
            from study.protocol import load_protocol

            answer_frame = _read_table(answers, "--answers")
            ssq_frame = _read_table(ssq, "--ssq") if ssq is not None else None
            pose_frame = _read_table(poses, "--poses") if poses is not None else None
            context = StudyContext(protocol=load_protocol(protocol) if protocol is not None else None,
                                   source=f"answers file {answers}")
        if study is not None:
            if "study" not in answer_frame.columns or not (answer_frame["study"].astype(str) == study).any():
                known = sorted(answer_frame["study"].astype(str).unique()) if "study" in answer_frame.columns else []
                raise AnalysisError(f"--study {study}: no answers of that study; the answers hold {known or 'none'}")
            answer_frame = answer_frame[answer_frame["study"].astype(str) == study]

        # 3. Analyse, write and tell the user what came out.
        analyse_and_report(answer_frame, ssq_frame, pose_frame, screening=screening.value, out=out, root=root,
                           context=context, exclude_flagged=exclude_flagged)


def report_study(db: Path, *, screening: str, out: Path) -> Path:
    """Analyses a study database as ``panostudy analyze --db`` does; returns the report's HTML file."""
    answers, ssq, poses, context = _load_db(str(db))
    return analyse_and_report(answers, ssq, poses, screening=screening, out=out, root=Path(db).resolve().parent,
                              context=context)


def analyse_and_report(answers, ssq, poses, *, screening: str, out: Path, root: Path, context=None,
                       exclude_flagged: bool = False) -> Path:
    """Runs the analysis with a progress bar, writes the report, prints Table 1; returns the HTML file."""
    from rich.progress import BarColumn, Progress, TextColumn

    from analysis.report import ANALYSIS_STEPS, REPORT_STEPS, analyze as run_analysis, stimulus_thumbnails
    from analysis.report import write_report
    from analysis.table1 import to_rich

    steps = ANALYSIS_STEPS + REPORT_STEPS
    with Progress(TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=console, transient=True) as progress:
        task = progress.add_task("analysing", total=len(steps))
        seen = []

        def advance(name: str) -> None:
            if seen:
                progress.advance(task)
            seen.append(name)
            progress.update(task, description=name)

        result = run_analysis(answers, ssq=ssq, poses=poses, screening=screening, context=context,
                              exclude_flagged=exclude_flagged, root=root, progress=advance)
        images = stimulus_thumbnails(result.answers, root=root, per="stimulus") if result.gaze is not None else None
        files = write_report(result, out, thumbnails=stimulus_thumbnails(result.answers, root=root),
                             stimulus_images=images, progress=advance)
        progress.advance(task)

    for banner in result.banners:
        console.print(f"[bold white on red] {banner} [/]", highlight=False)
    console.print(to_rich(result.table1))
    for note in result.table1.notes:
        console.print(f"  • {note}", highlight=False)
    for warning in result.warnings:
        console.print(f"  [bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    report_dir = files["report.html"].parent
    # Paths are printed unwrapped so that they can be copied whole.
    console.print(f"report: [bold]{files['report.html']}[/]", soft_wrap=True)
    console.print(f"tables: {report_dir}/table1.csv, table1.md, table1.tex, datasheet.md and {len(files) - 5} more "
                  f"files (CSV tables, figures/*.png)", highlight=False, soft_wrap=True)
    return files["report.html"]
