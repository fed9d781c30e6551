"""Progress display of the generation commands: one bar with elapsed time and ETA per stage, and a time estimate
from the first measured step before a long run.

The library reports progress as ``progress(stage, done, total)`` (see :mod:`generator.stage2`); this module turns
those calls into rich progress bars on stderr. A stage that has not started shows no bar; a finished one keeps
its bar, so the run's history stays on the screen.
"""

from __future__ import annotations

import time

#: A stage whose first step predicts more than this many seconds gets a one-line estimate.
LONG_RUN_S = 60.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class GenerationProgress:
    """Rich progress bars keyed by stage name; usable as ``progress(stage, done, total)``.

    Parameters
    ----------
    device : str
        Named in the estimate line (a long run on ``cpu`` is the one to warn about).
    hint : str
        Appended to the estimate line (e.g. how to get a quick preview).
    """

    def __init__(self, device: str = "cpu", hint: str = ""):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from panostudy.cli._console import err_console

        self._console = err_console
        self._progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
        )
        self._tasks: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._estimated: set[str] = set()
        self.device = device
        self.hint = hint
        self.estimates: dict[str, float] = {}

    def __enter__(self) -> GenerationProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Show ``done`` of ``total`` for ``stage``; ``done = 0`` (re)starts the stage's clock and bar."""
        task = self._tasks.get(stage)
        if task is None or done == 0:
            # A stage started again (the next panorama of a set) gets a fresh bar in place of its old one.
            if task is not None:
                self._progress.remove_task(task)
            self._tasks[stage] = self._progress.add_task(stage, total=total)
            if done == 0:
                self._started[stage] = time.perf_counter()
                self._estimated.discard(stage)
        self._progress.update(self._tasks[stage], completed=done, total=total)
        if done == 1 and total > 1 and stage in self._started and stage not in self._estimated:
            self._estimate(stage, total)

    def _estimate(self, stage: str, total: int) -> None:
        self._estimated.add(stage)
        first = time.perf_counter() - self._started[stage]
        remaining = first * (total - 1)
        self.estimates[stage] = first * total
        if remaining > LONG_RUN_S:
            self._progress.console.print(
                f"[yellow]{stage}:[/] the first of {total} took {_duration(first)}; about {_duration(first * total)} "
                f"in all on {self.device}.{(' ' + self.hint) if self.hint else ''}",
                highlight=False,
                soft_wrap=True,
            )
