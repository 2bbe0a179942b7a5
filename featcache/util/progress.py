"""Progress reporting for long stages: a silent default for library use and a rich bar for the CLI."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Reporter:
    """Silent reporter; subclasses show progress. Stages call ``start``/``advance``/``stop`` and ``message``."""

    def message(self, text: str) -> None:  # noqa: D401 - a hook
        pass

    def start(self, total: int, description: str, unit: str = "img",
              run: tuple[int, float | None] | None = None) -> None:
        """``run``: this bar is one epoch of a run, followed by ``run[0]`` more epochs of about ``run[1]`` seconds
        each (None: not known yet, estimated from this epoch's pace); the bar then shows the run's ETA too."""
        pass

    def advance(self, n: int = 1, **fields: object) -> None:
        pass

    def stop(self) -> None:
        pass


class RateColumn(ProgressColumn):
    """Items per second over the task's whole run (steadier than rich's windowed speed for bursty batches)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if not elapsed or not task.completed:
            return Text("-- /s", style="progress.data.speed")
        unit = task.fields.get("unit", "img")
        return Text(f"{task.completed / elapsed:,.0f} {unit}/s", style="progress.data.speed")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class RunEtaColumn(ProgressColumn):
    """The run's time left: this epoch's, plus the epochs after it at the pace of the epochs done (or, in the first
    epoch, of this one)."""

    def render(self, task: Task) -> Text:
        after, epoch_s = task.fields.get("run") or (None, None)
        left = task.time_remaining
        if after is None or left is None:
            return Text("")
        if epoch_s is None:  # no epoch finished yet: this one's projected length
            epoch_s = (task.elapsed or 0.0) + left
        return Text(f"run ETA {_clock(left + after * epoch_s)}", style="progress.remaining")


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None, transient: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.transient = transient
        self._progress: Progress | None = None
        self._task = None
        self.started = 0.0

    def message(self, text: str) -> None:
        self.console.print(text)

    def start(self, total: int, description: str, unit: str = "img",
              run: tuple[int, float | None] | None = None) -> None:
        self.stop()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            RunEtaColumn(),
            console=self.console,
            transient=self.transient,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, unit=unit, extra="", run=run)
        self.started = time.perf_counter()

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._progress is not None:
            extra = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task, advance=n, extra=extra)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
