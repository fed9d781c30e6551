"""`panostudy study ...`: create a study database, import stimuli, enrol and delete participants, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from panostudy.cli._console import console

DbOption = Annotated[
    str, typer.Option("--db", help="Study database: a SQLite file path (created by 'study init') or a SQLAlchemy URL.")
]
CodeOption = Annotated[str, typer.Option("--code", help="Pseudonymous participant code of the protocol's pattern "
                                         "(default: letters then digits, e.g. P07, LAB2-013).")]

study_app = typer.Typer(
    name="study",
    help="Create a study database, import stimuli, enrol or delete participants, export answers.",
    no_args_is_help=True,
)


@study_app.command("init")
def init(
    db: DbOption,
    protocol: Annotated[
        Optional[Path], typer.Option("--protocol", help="Protocol TOML file (default: protocols/dong2025.toml).")
    ] = None,
) -> None:
    """Create a study database for a protocol (and import the protocol's training panoramas)."""
    from study.protocol import DEFAULT_PROTOCOL, load_protocol
    from study.store import create_study
    from viewer.panel import check_protocol

    path = protocol if protocol is not None else DEFAULT_PROTOCOL
    # every text must be drawable and fit its panel before the study exists
    check_protocol(load_protocol(path), str(path))
    with create_study(db, path) as study:
        loaded = study.protocol
        console.print(
            f"created study [bold]{loaded.name}[/] ({loaded.version}, protocol sha256 {loaded.sha256[:12]}) in {study.shown_url}",
            soft_wrap=True,
        )


@study_app.command("import-stimuli")
def import_stimuli(
    db: DbOption,
    source: Annotated[Path, typer.Argument(help="A folder (one sub-folder per scene), a generator manifest .jsonl, or the generator's output folder (read through its manifest.jsonl).")],
    scene: Annotated[Optional[str], typer.Option("--scene", help="Scene of every image (instead of sub-folder names).")] = None,
    training: Annotated[bool, typer.Option("--training", help="Import as training panoramas (excluded from analysis).")] = False,
    downscale_into: Annotated[
        Optional[Path], typer.Option("--downscale-into", help="Folder for 8192x4096 copies of larger images.")
    ] = None,
) -> None:
    """Validate panoramas (readable, 2:1, size) and add them to the study."""
    from rich.progress import Progress

    from study.export import placeholder_warning
    from study.store import import_stimuli as run_import
    from study.store import open_study

    generated = source.is_dir() and (source / "manifest.jsonl").is_file()
    if generated:  # the generator's own output: its manifest names the panoramas (the *_front.png are stage 1's)
        source = source / "manifest.jsonl"
    # Drawn only at a terminal: elsewhere the stopped display left an empty line before the output or the error.
    with open_study(db) as study, Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("checking images", total=None)
        report = run_import(
            study, source, scene=scene, training=training, downscale_into=downscale_into,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
        warning = placeholder_warning(study)
    scenes = ", ".join(f"{name}: {count}" for name, count in sorted(report.per_scene.items())) or "none"
    if generated:
        console.print(f"read the generator's manifest {source}", soft_wrap=True, highlight=False)
    console.print(f"imported {report.added} stimuli ({scenes}); {report.already_present} were already in the study")
    if warning is not None:
        console.print(warning, style="bold red", soft_wrap=True, highlight=False)


@study_app.command("migrate")
def migrate(db: DbOption) -> None:
    """Bring a study database of an older schema version to this panostudy's (a copy of the old file is kept)."""
    from study.database import database_url, shown
    from study.models import SCHEMA_VERSION
    from study.store import migrate_study

    old, backup = migrate_study(db)
    if old == SCHEMA_VERSION:
        console.print(f"{shown(database_url(db))} is at schema version {SCHEMA_VERSION} already; nothing to migrate",
                      soft_wrap=True)
        return
    kept = f"; the version-{old} file is kept as {backup}" if backup is not None else ""
    console.print(f"migrated {shown(database_url(db))} from schema version {old} to {SCHEMA_VERSION}{kept}", soft_wrap=True)


@study_app.command("add-participant")
def add_participant(
    db: DbOption,
    code: CodeOption,
    age: Annotated[Optional[int], typer.Option("--age", help="Age in years (optional), within the protocol's range.")] = None,
    gender: Annotated[Optional[str], typer.Option(
        "--gender", help="One of the protocol's choices (default: female, male, non-binary, prefer not to say; optional).")] = None,
    vision_correction: Annotated[
        Optional[str], typer.Option("--vision-correction", help="One of the protocol's choices (default: none, glasses, "
                                    "contact lenses; optional).")
    ] = None,
) -> None:
    """Enrol a participant under a pseudonymous code; the protocol's [enrolment] says which codes and values it takes."""
    from study.store import add_participant as enrol
    from study.store import open_study

    with open_study(db) as study:
        participant = enrol(study, code, age=age, gender=gender, vision_correction=vision_correction)
    console.print(f"enrolled participant {participant.code} (number {participant.number})")


@study_app.command("delete-participant")
def delete_participant(
    db: DbOption,
    code: CodeOption,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm that all of this participant's data is deleted.")] = False,
    vacuum_full: Annotated[
        bool, typer.Option("--vacuum-full", help="PostgreSQL: also rewrite the tables (VACUUM FULL) so their files no longer hold the rows.")
    ] = False,
) -> None:
    """Delete every record of one participant (data protection); this cannot be undone."""
    from study.errors import PanostudyError
    from study.store import delete_participant as remove
    from study.store import open_study

    if not yes:
        raise PanostudyError(f"deleting participant {code!r} removes all their data for good; add --yes to confirm")
    with open_study(db) as study:
        report = remove(study, code, vacuum_full=vacuum_full)
    done = "deleted participant" if report.deleted else "finished erasing participant"
    console.print(f"{done} {code} and all their data", soft_wrap=True)
    if report.verified_files:
        names = " and ".join(p.name for p in report.verified_files)
        console.print(f"verified: {names} hold nothing of {code}", highlight=False, soft_wrap=True)
    if report.remaining:
        console.print(f"[bold yellow]note:[/] {report.remaining}", highlight=False, soft_wrap=True)


@study_app.command("export")
def export(
    db: DbOption,
    out: Annotated[Path, typer.Option("--out", help="A folder (created) for the whole package: CSV tables, codebook.md, "
                                      "datapackage.json, protocol.toml; or one answers file .csv/.parquet/.sav/.xlsx.")],
    ssq: Annotated[Optional[Path], typer.Option("--ssq", help="With a file --out: also write SSQ answers to this file.")] = None,
    poses: Annotated[Optional[Path], typer.Option(
        "--poses", help="With a file --out: also write head poses to this file (those of interrupted showings marked).")] = None,
    flags: Annotated[Optional[Path], typer.Option(
        "--flags", help="With a file --out: also write the flagged trials (low pose rate, interrupted stimulus).")] = None,
    gaze: Annotated[Optional[Path], typer.Option(
        "--gaze", help="With a file --out: also write the eye-gaze samples of the trials (with stimulus and scene).")] = None,
    parquet: Annotated[bool, typer.Option("--parquet", help="Package: every table as Parquet too.")] = False,
    spss: Annotated[bool, typer.Option("--spss", help="Package: SPSS .sav files with the protocol's wording as labels.")] = False,
    xlsx: Annotated[bool, typer.Option("--xlsx", help="Package: one Excel workbook (every table but the poses).")] = False,
    no_poses: Annotated[bool, typer.Option("--no-poses", help="Package: leave the head-pose samples out.")] = False,
    no_gaze: Annotated[bool, typer.Option("--no-gaze", help="Package: leave the eye-gaze samples out (the validation "
                                          "results stay).")] = False,
    stimulus_root: Annotated[
        Optional[Path], typer.Option("--stimulus-root", help="Folder stimulus paths are made relative to (default: the "
                                     "deepest folder holding every stimulus).")
    ] = None,
) -> None:
    """Export the study: a documented package for R, Python and SPSS, or the answers alone in long format."""
    from study.errors import PanostudyError
    from study.export import (
        check_output_path,
        codebook_for_file,
        export_study,
        frame_writer,
        load_answers,
        load_flagged_trials,
        load_gaze,
        load_poses,
        load_ssq,
        study_has_gaze,
    )
    from study.outputs import check_distinct, write_all
    from study.store import open_study

    if stimulus_root is not None and not stimulus_root.is_dir():
        raise PanostudyError(f"--stimulus-root {stimulus_root}: not a folder; give the folder the stimulus paths "
                             "start at, or leave it out for the deepest folder holding every stimulus")
    if not out.suffix:
        if ssq is not None or poses is not None or flags is not None or gaze is not None:
            raise PanostudyError("--ssq, --poses, --flags and --gaze name files for a single-file export; a package "
                                 "folder holds them already")
        with open_study(db) as study:
            files = export_study(study, out, parquet=parquet, spss=spss, xlsx=xlsx, poses=not no_poses,
                                 gaze=not no_gaze, stimulus_root=stimulus_root)
        console.print(f"wrote {len(files)} files to {out}: " + ", ".join(sorted(files)), soft_wrap=True, highlight=False)
        return
    if parquet or spss or xlsx or no_poses or no_gaze:
        raise PanostudyError("--parquet, --spss, --xlsx, --no-poses and --no-gaze go with a package folder --out (no "
                             "suffix)")
    outputs = [(option, path) for option, path in (("--out", out), ("--ssq", ssq), ("--poses", poses), ("--flags", flags),
                                                   ("--gaze", gaze)) if path is not None]
    suffixes = {option: check_output_path(path, option) for option, path in outputs}
    codebooks = [(option, path.with_name(path.stem + ".codebook.md")) for option, path in outputs]
    check_distinct(outputs + codebooks)
    with open_study(db) as study:
        frames = [("answers", "--out", out, load_answers(study, stimulus_root=stimulus_root))]
        if ssq is not None:
            frames.append(("ssq", "--ssq", ssq, load_ssq(study)))
        if poses is not None:
            frames.append(("poses", "--poses", poses, load_poses(study, stimulus_root=stimulus_root, interrupted=True)))
        if flags is not None:
            frames.append(("flagged_trials", "--flags", flags, load_flagged_trials(study)))
        if gaze is not None:
            if not study_has_gaze(study):
                raise PanostudyError(
                    f"--gaze {gaze}: no session of study {study.protocol.name} recorded eye gaze (no eye tracker, or "
                    "the runtime reported no eye-gaze support; the sessions' 'gaze' events say which); leave --gaze out"
                )
            frames.append(("gaze", "--gaze", gaze, load_gaze(study, stimulus_root=stimulus_root, interrupted=True)))
    # All files or none: a failure writing the last one leaves the earlier ones unwritten too.
    writes = []
    for table, option, path, frame in frames:
        text = codebook_for_file(table, frame)
        writes += [(path, frame_writer(frame, suffixes[option])),
                   (path.with_name(path.stem + ".codebook.md"), lambda target, text=text: target.write_text(text, encoding="utf-8"))]
    write_all(writes)
    for table, option, path, frame in frames:
        console.print(f"wrote {len(frame)} rows to {path} (codebook: {path.stem}.codebook.md)", soft_wrap=True)


@study_app.command("info")
def info(db: DbOption) -> None:
    """Show the study's protocol, stimuli, participants and sessions."""
    import sqlalchemy as sa
    from rich.table import Table

    from study.models import SESSION_STATUSES, Participant, Stimulus
    from study.store import open_study, session_status_counts

    with open_study(db) as study:
        protocol = study.protocol
        with study.Session() as session:
            stimuli = session.execute(
                sa.select(Stimulus.scene, Stimulus.training, sa.func.count())
                .where(Stimulus.study_id == study.study_id)
                .group_by(Stimulus.scene, Stimulus.training)
            ).all()
            participants = session.scalar(sa.select(sa.func.count()).where(Participant.study_id == study.study_id))
        sessions = session_status_counts(study)
    console.print(f"[bold]{protocol.name}[/] {protocol.version} — protocol sha256 {protocol.sha256[:12]}, seed {protocol.seed}")
    table = Table("scene", "test stimuli", "training stimuli")
    for scene in sorted({row[0] for row in stimuli}):
        counts = {training: n for name, training, n in stimuli if name == scene}
        table.add_row(scene, str(counts.get(False, 0)), str(counts.get(True, 0)))
    console.print(table)
    status = ", ".join(f"{name} {sessions.get(name, 0)}" for name in SESSION_STATUSES)
    console.print(f"participants: {participants} of {protocol.participants} planned; sessions: {status}")


def register(app: typer.Typer) -> None:
    """Adds the ``study`` command group to the root app."""
    app.add_typer(study_app)
