"""`panostudy demo`: from the shipped masks to Table 1 in one command (what `make demo` runs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from panostudy.cli._console import console
from panostudy.cli._generate_stage2 import ControlNetOption, Diffusion360Option
from study.errors import PanostudyError

#: What a folder written by the demo holds; only such a folder is ever offered for replacement.
_DEMO_ENTRIES = {"stimuli", "study.sqlite", "study.sqlite-wal", "study.sqlite-shm", "report"}


def _make_room(out: Path) -> None:
    """Asks before replacing an earlier demo's folder; refuses anything else that is not empty."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    earlier_demo = out.is_dir() and {p.name for p in out.iterdir()} <= _DEMO_ENTRIES
    if not earlier_demo:
        raise PanostudyError(f"--out {out}: exists and holds files the demo did not write; choose another --out")
    if not sys.stdin.isatty():
        raise PanostudyError(
            f"--out {out}: holds an earlier demo (its study database included); remove it or choose another --out"
        )
    if not typer.confirm(f"{out} holds an earlier demo, its study database included. Delete it and start again?"):
        raise PanostudyError(f"--out {out}: kept as it is; choose another --out to run the demo again")
    shutil.rmtree(out)


def register(app: typer.Typer) -> None:
    """Adds ``demo`` to the root app."""

    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option(help="Output folder: stimuli/, study.sqlite, report/.")] = Path("out/demo"),
        participants: Annotated[int, typer.Option(help="Simulated participants (the paper had 32).")] = 32,
        per_scene: Annotated[int, typer.Option(help="Panoramas generated per scene.")] = 1,
        model: Annotated[
            Optional[str],
            typer.Option(help="Stage-1 model (hub id or local folder, GPU advised; with --diffusion360 or --controlnet); "
                              "omit for the offline placeholder model."),
        ] = None,
        controlnet: ControlNetOption = None,
        panorama_model: Annotated[
            Optional[str], typer.Option(help="Stage-2 base model (default: the stage-1 model).")
        ] = None,
        diffusion360: Diffusion360Option = None,
        seed: Annotated[int, typer.Option(help="Seed of the simulated raters and head motion.")] = 2025,
        screening: Annotated[str, typer.Option(help="Observer screening: none, bt500, p913 or mle.")] = "bt500",
    ) -> None:
        """Generate the four scene sets, run simulated participants in the headless viewer, print Table 1."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from panostudy.cli.analyze import report_study
        from panostudy.demo import DemoSettings, GenerationFailed, check_settings, run_demo

        # 1. Validate everything before writing anything.
        settings = DemoSettings(out=out, participants=participants, per_scene=per_scene, model=model,
                                controlnet=controlnet, panorama_model=panorama_model,
                                diffusion360=None if diffusion360 is None else str(diffusion360), seed=seed)
        if screening not in ("none", "bt500", "p913", "mle"):
            raise PanostudyError(f"--screening {screening!r} is unknown; choose one of none, bt500, p913, mle")
        check_settings(settings)
        _make_room(out)

        # 2. Generate (the generator draws its own progress bar and says when its images are placeholders), import,
        #    run participants.
        # Started on the first participant, so that it does not fight with the generator's own bar.
        progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        task = None

        def advance(code: str, done: int, total: int) -> None:
            nonlocal task
            if task is None:
                progress.start()
                task = progress.add_task("participants", total=total)
            progress.update(task, completed=done, description=f"participants (last: {code})" if code else "participants")

        try:
            result = run_demo(settings, advance)
        except GenerationFailed as failed:
            if failed.exit_code == 2:  # the generator's one-line error is above; a second line would only repeat it
                raise typer.Exit(2) from None
            raise
        finally:
            if progress.live.is_started:  # stopping a display that never started prints an empty line
                progress.stop()

        # 3. Analyse and report.
        report_study(result.db, screening=screening, out=out / "report")
        console.print(f"stimuli:  {result.stimuli} (manifest {result.manifest.name})", highlight=False, soft_wrap=True)
        console.print(f"study:    {result.db} ({len(result.participants)} participants)", highlight=False, soft_wrap=True)
        if settings.placeholder:
            console.print("Ratings were simulated with the paper's Table 1 as the true scene quality; "
                          "the images are placeholders from the tiny model.", highlight=False)
