"""Progress display of the generation commands: one bar with elapsed time and ETA per stage, and a time estimate
before a long run.

The library reports progress as ``progress(stage, done, total)`` (see :mod:`generator.stage2`); this module turns
those calls into rich progress bars on stderr. A stage that has not started shows no bar; a finished one keeps
its bar, so the run's history stays on the screen.

The first step of a stage carries the warm-up (kernels compiled, weights paged in, caches filled): it took 56 s
where the next ones took under a second. Estimates are therefore made from the steps after the first only
(:func:`estimate_remaining`), both the one-line estimate and the bar's ETA, which follows each new step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

#: A stage whose steps predict more than this many seconds still to go gets a one-line estimate.
LONG_RUN_S = 60.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_remaining(times: Sequence[float], total: int) -> float | None:
    """Seconds still to go in a stage, from the mean duration of its steps after the first.

    ``times[0]`` is the stage's start, ``times[i]`` the end of step ``i``; ``total`` the stage's step count.
    remaining = (total − k) · (times[k] − times[1]) / (k − 1) after k ≥ 2 steps; the first step (warm-up) is left
    out. None while fewer than two steps have ended (nothing yet to base it on), 0 when the stage is done.
    """
    done = len(times) - 1
    if done >= total:
        return 0.0
    if done < 2:
        return None
    return (total - done) * (times[done] - times[1]) / (done - 1)


class GenerationProgress:
    """Rich progress bars keyed by stage name; usable as ``progress(stage, done, total)``.

    Parameters
    ----------
    device : str
        Named in the estimate line (a long run on ``cpu`` is the one to warn about).
    hint : str
        Appended to the estimate line (e.g. how to get a quick preview).
    notice : str
        Printed (on stderr, in yellow) when the first bar appears: after every check of the command has passed.
    """

    def __init__(self, device: str = "cpu", hint: str = "", notice: str = ""):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        from panostudy.cli._console import err_console

        clock = self._clock

        class RemainingColumn(ProgressColumn):
            """``eta`` from :func:`estimate_remaining`, counting down between steps; ``-:--:--`` until known."""

            def render(self, task) -> Text:
                times = task.fields.get("times", ())
                remaining = estimate_remaining(times, int(task.total or 0))
                if remaining is None:
                    return Text("eta -:--:--", style="progress.remaining")
                if remaining > 0:
                    remaining = max(1.0, remaining - (clock() - times[-1]))
                minutes, seconds = divmod(int(round(remaining)), 60)
                hours, minutes = divmod(minutes, 60)
                return Text(f"eta {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

        self._console = err_console
        self._progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            RemainingColumn(),
            console=err_console,
        )
        self._tasks: dict[str, int] = {}
        self._times: dict[str, list[float]] = {}
        self._estimated: set[str] = set()
        self.device = device
        self.hint = hint
        self.notice = notice
        self.estimates: dict[str, float] = {}

    @staticmethod
    def _clock() -> float:
        return time.perf_counter()

    def __enter__(self) -> GenerationProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        # Started with the first bar only: a display started and stopped empty leaves a blank line (before an error).
        if self._progress.live.is_started:
            self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Show ``done`` of ``total`` for ``stage``; ``done = 0`` (re)starts the stage's clock and bar."""
        if not self._progress.live.is_started:
            if self.notice:
                self._progress.console.print(self.notice, style="yellow", markup=False, highlight=False, soft_wrap=True)
            self._progress.start()
        task = self._tasks.get(stage)
        if task is None or done == 0:
            # A stage started again (the next panorama of a set) gets a fresh bar in place of its old one.
            if task is not None:
                self._progress.remove_task(task)
            self._tasks[stage] = self._progress.add_task(stage, total=total)
            self._times[stage] = [self._clock()] if done == 0 else []
        times = self._times[stage]
        if times and done == len(times):  # the next step ended: its time counts
            times.append(self._clock())
        self._progress.update(self._tasks[stage], completed=done, total=total, times=tuple(times))
        if done == 2 and total > 2 and len(times) == 3 and stage not in self._estimated:
            self._estimate(stage, times, total)

    def _estimate(self, stage: str, times: list[float], total: int) -> None:
        # Once per stage name: the stages of every panorama of a set after the first would repeat it.
        self._estimated.add(stage)
        remaining = estimate_remaining(times, total)
        step = times[2] - times[1]
        self.estimates[stage] = times[2] - times[0] + remaining
        if remaining > LONG_RUN_S:
            self._progress.console.print(
                f"[yellow]{stage}:[/] {_duration(step)} a step after the first (which took {_duration(times[1] - times[0])}"
                f" with the warm-up); about {_duration(remaining)} more on {self.device}."
                f"{(' ' + self.hint) if self.hint else ''}",
                highlight=False,
                soft_wrap=True,
            )
