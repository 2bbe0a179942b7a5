"""`featcache runs ls`: the run directories under a folder, one line each — what they train and how far they got.

A run directory (runs.rundir) says what it is in config.json and how far it got in metrics.jsonl, summary.json,
checkpoint-last.pt, failed.json and its lock. Its status, decided in this order:

    running      a live process holds the directory's lock (probed without taking it: featcache.util.locks.holder)
    finished     summary.json is there and metrics.jsonl holds every epoch it counts
    failed       failed.json records an exception that stopped this attempt's epochs (the training loop writes it;
                 its ``started`` is config.json's: a later attempt supersedes it)
    empty        config.json, but no finished epoch and no checkpoint
    interrupted  anything else: stopped (Ctrl-C, kill, a lost machine) before its summary; --resume continues it

Every file is read as written by someone else (rundir's checked readers); nothing is unpickled — checkpoints are only
looked for. A directory that cannot be read is skipped with a one-line note.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from featcache.config import typecheck
from featcache.errors import ConfigError, FeatcacheError
from featcache.runs import rundir
from featcache.runs.rundir import CONFIG, LAST, SUMMARY
from featcache.util import locks

STATUSES = ("running", "finished", "interrupted", "failed", "empty")


@dataclass
class RunInfo:
    """One run directory, as `featcache runs ls` lists it (``--json``: these fields, in this order)."""

    path: str
    kind: str  # "student" (distill) or "teacher" (train-teacher)
    student: str  # the model trained (train-teacher: the teacher)
    method: str
    teachers: list[str] = field(default_factory=list)  # the caches' teacher names (their keys where unnamed)
    teacher_keys: list[str] = field(default_factory=list)
    labelled: int | None = None  # training labels the run read (None: not recorded)
    labelled_total: int | None = None  # training samples
    labelled_fraction: float | None = None
    epochs_done: int = 0
    epochs_planned: int | None = None
    best_acc: float | None = None  # test accuracy, in [0, 1]
    last_acc: float | None = None
    status: str = "empty"
    note: str = ""  # running: the lock's holder; failed: the error
    started: str | None = None  # config.json's: when the last attempt started (UTC, ISO 8601)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def labels_cell(self) -> str:
        if self.labelled is None or self.labelled_total is None:
            return "?"
        if self.labelled == self.labelled_total:
            return "all"
        return "none" if self.labelled == 0 else f"{self.labelled:,}/{self.labelled_total:,}"

    def epochs_cell(self) -> str:
        return f"{self.epochs_done}/{self.epochs_planned if self.epochs_planned is not None else '?'}"


def list_runs(root: Path | str = "runs", on_skip: Callable[[str], None] | None = None) -> list[RunInfo]:
    """The runs under ``root`` (searched recursively; hidden folders such as a recipe's .stale/ are left out),
    sorted by path. A directory that cannot be read, or whose files are damaged or foreign, is passed to
    ``on_skip`` as one line and left out."""
    root = Path(root)
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as exc:  # a name no file system takes, no permission to look
        raise ConfigError(f"{root}: cannot be read ({exc.strerror or exc}); give the folder holding the run "
                          "directories") from None
    if not exists:
        raise ConfigError(f"{root}: no such directory (runs ls looks for run directories under it; default ./runs)")
    if not is_dir:
        raise ConfigError(f"{root} is not a directory; give the folder holding the run directories")
    skip = on_skip or (lambda message: None)
    out = []
    for run_dir in find_run_dirs(root, skip):
        try:
            out.append(read_run(run_dir))
        except FeatcacheError as exc:
            skip(f"{run_dir}: {exc}")
    return out


def find_run_dirs(root: Path, on_skip: Callable[[str], None]) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a config.json, sorted; symlinks are not followed."""

    def unreadable(exc: OSError) -> None:
        on_skip(f"{exc.filename}: cannot be read ({exc.strerror or exc})")

    found = []
    for here, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if CONFIG in files:
            found.append(Path(here))
    return sorted(found)


def read_run(run_dir: Path) -> RunInfo:
    """One run directory's line; a damaged or foreign file is a one-line ConfigError."""
    run_dir = Path(run_dir)
    info = rundir.read_config(run_dir)
    config = info["config"]
    started = info.get("started")
    if started is not None and not isinstance(started, str):
        raise ConfigError(f"run config {run_dir / CONFIG}: 'started' is not a time; the run directory is damaged")
    method = info.get("method") or config.get("method") or "?"
    records = rundir.read_metrics(run_dir)
    curve = [r["test_acc"] for r in records if r.get("test_acc") is not None]
    done = len(records)
    summary = _summary(run_dir)
    planned = summary["epochs"] if summary is not None else planned_epochs(config, method)
    teachers = info.get("teachers") or []
    labelled, total = _labels(info)
    status, note = _status(run_dir, done, summary, started)
    return RunInfo(
        path=str(run_dir), kind=info.get("kind") or "student", student=str(config.get("student", "?")),
        method=method, teachers=[str(t.get("teacher") or t.get("key") or "?") for t in teachers],
        teacher_keys=[str(t.get("key") or "?") for t in teachers], labelled=labelled, labelled_total=total,
        labelled_fraction=labelled / total if labelled is not None and total else None,
        epochs_done=done, epochs_planned=planned, best_acc=max(curve) if curve else None,
        last_acc=curve[-1] if curve else None, status=status, note=note, started=started,
    )


def planned_epochs(config: dict[str, Any], method: str) -> int | None:
    """The epochs a run will train in all, from its recorded flags (Method.total_epochs without building the method:
    fitnets trains a hint stage, --hint-epochs or --epochs long, before its --epochs)."""
    epochs = config.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return None
    if method == "fitnets":
        hint = config.get("hint_epochs")
        return epochs + (hint if isinstance(hint, int) and not isinstance(hint, bool) else epochs)
    return epochs


_SUMMARY_TYPES: dict[str, Any] = {"epochs": int, "best_acc": float | None, "last_acc": float | None}


def _summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    summary = rundir.read_json(path, "run summary")
    for name, hint in _SUMMARY_TYPES.items():
        try:
            typecheck.check(summary.get(name), hint)
        except typecheck.TypeMismatch as exc:
            raise ConfigError(f"run summary {path}: {name}: {exc}; the run directory is damaged or foreign") from None
    return summary


def _labels(info: dict[str, Any]) -> tuple[int | None, int | None]:
    """(labels read, training samples): config.json's labels record (--labels), or every label of the train split
    when there is none (train-teacher)."""
    record = info.get("labels")
    if isinstance(record, dict):
        labelled, total = record.get("labeled"), record.get("total")
    else:
        train = (info.get("dataset") or {}).get("train") or {}
        labelled = total = train.get("num_samples")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (labelled, total)):
        return None, None
    return labelled, total


def _status(run_dir: Path, done: int, summary: dict[str, Any] | None, started: str | None) -> tuple[str, str]:
    """(status, note): see the module docstring."""
    holder = locks.holder(run_dir)
    if holder is not None:
        return "running", f"pid {holder}"
    if summary is not None and done >= summary["epochs"]:
        return "finished", ""
    failure = rundir.read_failure(run_dir)
    if failure is not None and failure["started"] == started:
        return "failed", f"{failure['error']}: {failure['message']}"
    if done == 0 and not (run_dir / LAST).is_file():
        return "empty", ""
    return "interrupted", ""
