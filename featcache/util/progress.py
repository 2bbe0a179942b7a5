"""Progress reporting for long stages: for library use, no bars and every message through ``logging``; a rich bar
and the messages on the terminal for the CLI."""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

WARNING_PREFIX = "warning: "


class Reporter:
    """The library's reporter: no progress bars; each message goes to the logger of the featcache module that says
    it (``logging.getLogger("featcache.extract.manifest")``...; configure ``"featcache"`` to see them all) at INFO,
    or at WARNING for a line starting ``"warning: "``. Subclasses show progress (the CLI's ``RichReporter``). Stages
    call ``start``/``advance``/``stop`` and ``message``."""

    def message(self, text: str) -> None:
        # The caller's module names the logger, as if it had called logging.getLogger(__name__) itself.
        log = logging.getLogger(sys._getframe(1).f_globals.get("__name__", __name__))
        if text.startswith(WARNING_PREFIX):
            log.warning(text[len(WARNING_PREFIX):], stacklevel=2)
        else:
            log.info(text, stacklevel=2)

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
        self._task: TaskID | None = None
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
        if self._progress is not None and self._task is not None:  # set together by start
            extra = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task, advance=n, extra=extra)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
