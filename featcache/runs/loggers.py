"""Where a run's numbers go: metrics.jsonl always, and whatever ``--log`` adds (TensorBoard, or a lab's own logger).

The training loop (featcache.distill.loop, shared by distill and train-teacher) tells every logger of the run, on rank 0
only, three things:

    start(run_dir, config)      before the first epoch of this attempt (config: the run's flags, flat, as config.json)
    log_epoch(epoch, record)    after each epoch (epoch counts from 1; record: the epoch's line of metrics.jsonl)
    finish(summary)             once the run ended (summary: what summary.json holds)
    close()                     always, also when the run fails (flush and let go of files and connections)

A logger is a class with those methods (``Logger`` is the base with no-op ones). ``--log`` names loggers, comma-
separated: a registered name (``jsonl``, ``tensorboard``; ``@register_logger("name")`` adds one) or ``MODULE:CLASS``,
imported when the flags are checked (docs/pipelines.md#loggers has a 10-line MLflow logger). metrics.jsonl is written
whatever ``--log`` says: report, eval and --resume read it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Callable

from featcache.errors import ConfigError, FeatcacheError, StorageError
from featcache.runs import rundir
from featcache.util.fileio import printable

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard/: the event files of --log tensorboard
_METHODS = ("start", "log_epoch", "finish")


class Logger:
    """The interface the loop calls (module docstring); every method does nothing unless overridden."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        pass

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    @classmethod
    def check(cls) -> None:
        """Raise a one-line ConfigError when this logger cannot work here (a missing package); called when the
        flags are checked, before anything trains."""


LOGGERS: dict[str, type] = {}


def register_logger(name: str) -> Callable[[type], type]:
    """Register a logger class under ``name`` (``--log name``)."""

    def deco(cls: type) -> type:
        if name in LOGGERS:
            raise ValueError(f"logger {name!r} registered twice")
        LOGGERS[name] = cls
        return cls

    return deco


def logger_class(name: str) -> type:
    """The class ``--log NAME`` means: a registered name, or ``MODULE:CLASS`` (imported now); else a ConfigError."""
    if name in LOGGERS:
        return LOGGERS[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"--log {name}: unknown logger; choose {', '.join(sorted(LOGGERS))}, or MODULE:CLASS for a "
                          "logger of your own (docs/pipelines.md#loggers)", flag="--log")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"--log {name}: cannot import {module} ({exc}); is it installed or on PYTHONPATH?",
                          flag="--log") from None
    except AttributeError:
        raise ConfigError(f"--log {name}: module {module} has no {attr}", flag="--log") from None
    except Exception as exc:  # the module's own code failed while it was imported
        raise failed(name, f"importing {module}", exc) from None
    missing = [m for m in _METHODS if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise ConfigError(f"--log {name}: not a logger class (it needs {', '.join(missing or _METHODS)}; subclass "
                          "featcache.runs.loggers.Logger)", flag="--log")
    return cls


def logger_names(log: list[str] | str) -> list[str]:
    """``--log``'s names, once each (the Python API may give the CLI's ``"a,b"`` as one string)."""
    names = log.split(",") if isinstance(log, str) else log
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def check_loggers(log: list[str] | str) -> None:
    """What ``validate`` checks of ``--log``: every name known or importable, and its package installed."""
    for name in logger_names(log):
        check = getattr(logger_class(name), "check", None)
        if check is not None:
            guarded(name, check)


def failed(name: str, doing: str, exc: BaseException) -> ConfigError:
    """One line for a logger of ``--log`` that raised: which one, in what, and what it raised."""
    what = printable(" ".join(str(exc).split()), 200)
    return ConfigError(f"--log {printable(name, 80)}: the logger raised {type(exc).__name__} in {doing}"
                       f"{': ' + what if what else ''}; fix it or drop it from --log (--resume continues a run it "
                       "stopped from its last checkpoint)", flag="--log")


def guarded(name: str, call: Callable, *args: Any, doing: str | None = None) -> Any:
    """``call(*args)`` for the logger ``name``: a featcache error passes as it is; any other exception (the logger is
    anyone's code) becomes ``failed``'s one line, which stops the run like any other error."""
    try:
        return call(*args)
    except FeatcacheError:
        raise
    except Exception as exc:
        raise failed(name, doing or str(getattr(call, "__name__", "it")), exc) from None


class RunLoggers:
    """The loggers of one run: metrics.jsonl first, then those ``--log`` adds, each told every event in order.
    Empty on ranks other than 0 (``RunLoggers()``). A logger that raises stops the run with one line naming it
    (``guarded``)."""

    def __init__(self, loggers: list | None = None, names: list[str] | None = None) -> None:
        self.loggers = list(loggers or [])
        self.names = list(names) if names is not None else [type(x).__name__ for x in self.loggers]

    @classmethod
    def open(cls, log: list[str] | str, run_dir: Path, config: dict[str, Any]) -> "RunLoggers":
        chosen = ["jsonl"] + [n for n in logger_names(log) if n != "jsonl"]
        run = cls([], [])
        try:
            for name in chosen:
                run.loggers.append(guarded(name, logger_class(name), doing="__init__"))
                run.names.append(name)
            run._tell("start", Path(run_dir), config)
        except BaseException:
            run.close(quiet=True)
            raise
        return run

    def _tell(self, method: str, *args: Any) -> None:
        for name, logger in zip(self.names, self.loggers, strict=True):
            guarded(name, getattr(logger, method), *args, doing=method)

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self._tell("log_epoch", epoch, record)

    def finish(self, summary: dict[str, Any]) -> None:
        try:
            self._tell("finish", summary)
        except BaseException:
            self.close(quiet=True)
            raise
        self.close()

    def close(self, quiet: bool = False) -> None:
        """Close every logger, even after one raised; the first error is raised once all are closed, unless
        ``quiet`` (the run is already failing: its own error is the one to report)."""
        first = None
        for name, logger in zip(self.names, self.loggers, strict=True):
            close = getattr(logger, "close", None)
            if close is None:
                continue
            try:
                guarded(name, close, doing="close")
            except FeatcacheError as exc:
                first = first or exc
        if first is not None and not quiet:
            raise first


def open_loggers(s: Any, run_dir: Path) -> RunLoggers:
    """The loggers of a prepared run (featcache.distill.setup.Setup): its ``--log``, told its flags."""
    config = {**s.config.to_dict(), "method": s.method.name, "kind": s.kind}
    return RunLoggers.open(s.config.log, run_dir, config)


@register_logger("jsonl")
class JsonlLogger(Logger):
    """metrics.jsonl, one JSON line per epoch (runs.rundir; the loop empties it on a fresh start and cuts it back
    to the checkpoint on --resume)."""

    run_dir: Path

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = run_dir

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        rundir.append_metrics(self.run_dir, record)


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: acc/train, acc/test, loss/train (the total), loss/test,
    loss/<term> for each of the method's terms (train_<term>), speed/images_per_s, speed/epoch_seconds; the others
    (lr, noise_images, ranks) as they are."""
    if key.endswith("_acc"):
        return "acc/" + key.removesuffix("_acc")
    if key in ("train_loss", "test_loss"):
        return "loss/" + key.removesuffix("_loss")
    if key.startswith("train_"):
        return "loss/" + key.removeprefix("train_")
    if key in ("images_per_s", "epoch_seconds"):
        return "speed/" + key
    return key


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers by tag (the epoch itself is the step; text, flags and missing values are left out)."""
    return {scalar_tag(k): float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def hparams_of(config: dict[str, Any]) -> dict[str, Any]:
    """The run's flags TensorBoard's hparams table can show: numbers, text, booleans, lists as a,b,c."""
    out: dict[str, Any] = {}
    for k, v in sorted(config.items()):
        if isinstance(v, list):
            v = ",".join(map(str, v))
        if isinstance(v, (bool, str)) or (isinstance(v, (int, float)) and math.isfinite(v)):
            out[k] = v
    return out


@register_logger("tensorboard")
class TensorBoardLogger(Logger):
    """Event files under RUN_DIR/tensorboard/: every number of each epoch's record (``scalar_tag``), the flags as
    text at the start, and at the end the flags as hparams with the final accuracies (final/best_acc,
    final/last_acc) as their metrics. A resumed run writes on into the same directory; TensorBoard drops what the
    interrupted attempt had logged from the resumed epoch on (``purge_step``)."""

    writer: Any = None

    @classmethod
    def check(cls) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--log tensorboard needs the tensorboard package: pip install 'featcache[tensorboard]' "
                              "(or pip install tensorboard)", flag="--log")

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.check()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(f"--log tensorboard: torch.utils.tensorboard does not import ({exc}); pip install "
                              "'featcache[tensorboard]'", flag="--log") from None
        self._writer_class, self.log_dir, self.config = SummaryWriter, run_dir / TENSORBOARD_DIR, config
        if self.log_dir.is_symlink() or (self.log_dir.exists() and not self.log_dir.is_dir()):
            # the event files are written into it: never through a link planted in the run directory
            raise StorageError(f"{printable(str(self.log_dir))} is a symbolic link or not a directory, not one "
                               "featcache made; its event files are never written through it: remove it, then re-run")

    def _writer(self, step: int):
        # Opened at the first event, whose step is where this attempt starts: a resumed run's earlier events from
        # that step on are the interrupted attempt's, and TensorBoard hides them.
        if self.writer is None:
            self.writer = self._writer_class(str(self.log_dir), purge_step=step)
            self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=1, default=str) + "\n```", step)
        return self.writer

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        writer = self._writer(epoch)
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = int(summary.get("epochs") or 0)
        writer = self._writer(step)
        metrics = {f"final/{k}": float(summary[k]) for k in ("best_acc", "last_acc") if summary.get(k) is not None}
        for part in hparams(hparams_of(self.config), metrics):
            writer.file_writer.add_summary(part)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
