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
_TEXT_COLUMNS = ("study", "protocol_hash", "participant", "stimulus", "stimulus_sha256", "scene", "scale", "item", "phase")


def _read_table(path: Path, option: str):
    import pandas as pd

    if not path.is_file():
        raise AnalysisError(f"{option} {path}: no such file; give a .csv or .parquet written by 'panostudy study export'")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=dict.fromkeys(_TEXT_COLUMNS, str))
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise AnalysisError(f"{option} {path}: cannot be read ({str(exc).splitlines()[0]}); export it again") from None
    raise AnalysisError(f"{option} {path}: unknown format '{suffix}'; give a .csv or .parquet file")


def _load_db(db: str):
    url = db if "://" in db else None
    if url is None and not Path(db).is_file():
        raise AnalysisError(f"--db {db}: no such database file; give the SQLite file of 'panostudy study init' or a URL")
    from study.export import load_answers, load_flagged_trials, load_poses, load_ssq
    from study.store import open_study

    with open_study(url or Path(db)) as study:
        return load_answers(study), load_ssq(study), load_poses(study), load_flagged_trials(study)


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
        out: Annotated[Path, typer.Option("--out", help="Report folder (replaced atomically).")] = Path("report"),
        study: Annotated[Optional[str], typer.Option("--study", help="Analyse only this study of the answers.")] = None,
    ) -> None:
        """Analyse the ratings: Table 1 with CIs, screening, mixed models, reliability, SSQ and an HTML report."""
        # 1. Validate the arguments before reading or writing anything.
        if (db is None) == (answers is None):
            raise AnalysisError("give exactly one of --db (study database) or --answers (exported .csv/.parquet)")
        if db is not None and (ssq is not None or poses is not None):
            raise AnalysisError("--ssq and --poses go with --answers; with --db they are read from the database")

        # 2. Load.
        flags = None
        if db is not None:
            answer_frame, ssq_frame, pose_frame, flags = _load_db(db)
        else:
            answer_frame = _read_table(answers, "--answers")
            ssq_frame = _read_table(ssq, "--ssq") if ssq is not None else None
            pose_frame = _read_table(poses, "--poses") if poses is not None else None
        if study is not None:
            if "study" not in answer_frame.columns or not (answer_frame["study"].astype(str) == study).any():
                known = sorted(answer_frame["study"].astype(str).unique()) if "study" in answer_frame.columns else []
                raise AnalysisError(f"--study {study}: no answers of that study; the answers hold {known or 'none'}")
            answer_frame = answer_frame[answer_frame["study"].astype(str) == study]

        # 3. Analyse, write and tell the user what came out.
        root = Path(db).resolve().parent if db is not None and "://" not in db else Path.cwd()
        analyse_and_report(answer_frame, ssq_frame, pose_frame, screening=screening.value, out=out, root=root, flags=flags)


def report_study(db: Path, *, screening: str, out: Path) -> Path:
    """Analyses a study database as ``panostudy analyze --db`` does; returns the report's HTML file."""
    answers, ssq, poses, flags = _load_db(str(db))
    return analyse_and_report(answers, ssq, poses, screening=screening, out=out, root=Path(db).resolve().parent,
                              flags=flags)


def analyse_and_report(answers, ssq, poses, *, screening: str, out: Path, root: Path, flags=None) -> Path:
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

        result = run_analysis(answers, ssq=ssq, poses=poses, screening=screening, progress=advance, flags=flags)
        files = write_report(result, out, thumbnails=stimulus_thumbnails(result.answers, root=root), progress=advance)
        progress.advance(task)

    console.print(to_rich(result.table1))
    for note in result.table1.notes:
        console.print(f"  • {note}", highlight=False)
    report_dir = files["report.html"].parent
    # Paths are printed unwrapped so that they can be copied whole.
    console.print(f"report: [bold]{files['report.html']}[/]", soft_wrap=True)
    console.print(f"tables: {report_dir}/table1.csv, table1.md, table1.tex and {len(files) - 4} more files "
                  f"(CSV tables, figures/*.png)", highlight=False, soft_wrap=True)
    return files["report.html"]
