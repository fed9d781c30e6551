"""`panostudy replay`: one trial as a video or contact sheet — the stimulus, the head viewport and the gaze over it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from panostudy.cli._console import console


def register(app: typer.Typer) -> None:
    """Adds ``replay`` to the root app."""

    @app.command("replay")
    def replay(
        db: Annotated[str, typer.Option("--db", help="Study database (SQLite file or SQLAlchemy URL).")],
        participant: Annotated[str, typer.Option("--participant", help="Participant code, e.g. P07.")],
        trial: Annotated[int, typer.Option("--trial", help="Trial index in the session (from 0, training first).")],
        out: Annotated[Path, typer.Option("--out", help="replay.mp4 or replay.gif; with --every, sheet.png or .jpg.")],
        gaze: Annotated[
            Optional[Path],
            typer.Option("--gaze", help="Gaze samples to draw instead of the study's own (.csv/.parquet: participant, "
                         "session, trial_index, t, yaw_deg, pitch_deg, valid; session is the database id)."),
        ] = None,
        session: Annotated[Optional[int], typer.Option(
            "--session", help="The participant's session number (1 for the first), if the trial is in several.")] = None,
        every: Annotated[
            Optional[float], typer.Option("--every", help="Write a contact sheet of one frame every N seconds instead.")
        ] = None,
        fps: Annotated[Optional[float], typer.Option("--fps", help="Frames per second (30 for .mp4, 10 for .gif).")] = None,
        width: Annotated[int, typer.Option("--width", help="Frame width in pixels (multiple of 32).")] = 1024,
        fov: Annotated[float, typer.Option("--fov", help="Field of view of the viewport outline, degrees.")] = 100.0,
    ) -> None:
        """Replay a trial in real time: the equirect stimulus, the head viewport outline, the gaze and the rating."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from analysis.replay import check_gaze_samples, check_replay_options, load_replay_trial, render_replay
        from panostudy.cli.analyze import _read_table

        # 1. Check the output and read the inputs before writing anything.
        check_replay_options(out, every_s=every, width=width, fps=fps, fov_deg=(fov, fov))
        gaze_frame = check_gaze_samples(_read_table(gaze, "--gaze"), f"--gaze {gaze}") if gaze is not None else None
        recorded = load_replay_trial(db, participant, trial, gaze=gaze_frame, session=session)

        # 2. Render with a progress bar.
        with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("frames", total=None)
            written = render_replay(
                recorded, out, width=width, fps=fps, every_s=every, fov_deg=(fov, fov),
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        what = "contact sheet" if every is not None else "replay"
        console.print(f"{what} of {participant} trial {trial} ({recorded.duration_s:.0f} s): [bold]{written}[/]",
                      soft_wrap=True)
