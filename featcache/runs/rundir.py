"""The run directory: the one place that knows its files and reads them safely.

A run (``featcache distill`` or ``featcache train-teacher``) writes into one directory:

    config.json            what the run is: its DistillConfig, method, teachers, transform, datasets, model kwargs
    metrics.jsonl          one JSON line per finished epoch (appended; a torn last line after a kill is skipped)
    checkpoint-last.pt     everything --resume needs, replaced atomically after every epoch
    checkpoint-best.pt     the student at its best test accuracy (what `eval` and the `run` teacher load)
    summary.json           written once the run ends
    failed.json            written when an exception (not Ctrl-C) stopped the epochs; a later attempt supersedes it
    teacher.pt             train-teacher only: the weights `extract --weights` loads
    .lock                  held by the process training in it (featcache.util.locks)

Readers here turn every damaged or foreign file into a one-line ConfigError naming the file and what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from featcache.errors import ConfigError
from featcache.util import safeload
from featcache.util.fileio import loads_json, printable

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
TEACHER_FILE = "teacher.pt"
FAILED = "failed.json"
NAME_MAX = 255  # bytes in one file name: the limit of Linux's and macOS's file systems


def run_dir_exists(run_dir: Path, flag: str = "--run-dir") -> bool:
    """Whether the run directory exists; a name no file system takes (a part over NAME_MAX bytes) or a path that
    cannot be looked at is a one-line ConfigError naming ``flag``, not an OSError from deep inside the run."""
    for part in Path(run_dir).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ConfigError(f"{flag} {printable(str(run_dir), 80)}: its part {printable(part, 40)!r} is {size} bytes "
                              f"long, more than the {NAME_MAX} a file name may have; choose a shorter name", flag=flag)
    try:
        os.stat(run_dir)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{flag} {printable(str(run_dir), 80)}: cannot be used as a run directory "
                          f"({exc.strerror or exc}); choose another", flag=flag) from None
    return True


def read_json(path: Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from ``path``; missing, torn or foreign files are a one-line ConfigError."""
    try:
        obj = loads_json(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {Path(path).parent} is not a featcache distill run (nor a "
                          "train-teacher run) directory") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is unreadable ({' '.join(str(exc).split())[:120]}); the run directory is "
                          "damaged: re-run it into a fresh --run-dir") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {path} does not hold a JSON object; the run directory is damaged")
    return obj


# What the readers of config.json rely on, by type (the run directory may come from someone else).
_INFO_TYPES: dict[str, Any] = {"config": dict[str, Any], "transform": dict[str, Any], "student_kwargs": dict[str, Any],
                               "dataset": dict[str, dict[str, Any]], "teachers": list[dict[str, Any]], "kind": str,
                               "method": str, "head_classes": list[str], "labels": dict[str, Any] | None}


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, its fields checked by type (its ``config`` as strictly as the flags it records)."""
    from featcache.config import DistillConfig, typecheck

    path = Path(run_dir) / CONFIG
    info = read_json(path, "run config")
    if not isinstance(info.get("config"), dict):
        raise ConfigError(f"{path} lacks the run's 'config'; it was not written by featcache distill/train-teacher")
    try:
        for name, hint in _INFO_TYPES.items():
            if name in info:
                try:
                    typecheck.check(info[name], hint)
                except typecheck.TypeMismatch as exc:
                    raise typecheck.TypeMismatch(f"{name}: {exc}") from None
        known = {f.name for f in fields(DistillConfig)}
        typecheck.check_fields({k: v for k, v in info["config"].items() if k in known}, DistillConfig)
    except typecheck.TypeMismatch as exc:
        raise ConfigError(f"run config {path} is not what featcache writes ({exc}); the run directory is damaged or "
                          "foreign: re-run it into a fresh --run-dir") from None
    return info


# metrics.jsonl fields that readers compute with: numbers (or null), finite; accuracies within [0, 1].
_METRIC_NUMBERS = ("train_loss", "train_acc", "test_acc", "test_loss", "lr", "images_per_s", "epoch_seconds")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The finished epochs' records, in order. A last line that does not parse (the torn line of a run killed while
    appending) is skipped: the epoch it would have recorded is redone by --resume. Any other line that is not a
    record featcache writes is an error: a report must never be drawn from a silently edited curve."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            record = loads_json(line)
        except ValueError:
            if number == len(lines):
                continue
            record = None
        problem = _metric_problem(record, out[-1]["epoch"] if out else 0)
        if problem:
            raise ConfigError(f"{path} line {number}: {problem}; the run directory is damaged or foreign: re-run it "
                              "into a fresh --run-dir")
        out.append(record)
    return out


def _metric_problem(record: Any, previous: int) -> str | None:
    import math

    if not isinstance(record, dict):
        return "not a JSON object"
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch != previous + 1:
        return f"epoch {epoch!r} does not follow epoch {previous}"
    for name in _METRIC_NUMBERS:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} {value!r} is not a finite number"
        if name.endswith("_acc") and not 0 <= value <= 1:
            return f"{name} {value!r} is not within [0, 1]"
    return None


def truncate_metrics(run_dir: Path, keep_epochs: int) -> None:
    """Keep the records of epochs 1..keep_epochs (a resumed run rewrites what follows its checkpoint)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r["epoch"] <= keep_epochs]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """One line appended to metrics.jsonl; never through a link planted in its place, never into a FIFO or device
    (O_NOFOLLOW, O_NONBLOCK, then a regular file or a one-line StorageError)."""
    import errno
    import stat

    from featcache.errors import StorageError
    from featcache.util.fileio import unwritable

    path = Path(run_dir) / METRICS
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):  # ENXIO: a FIFO nobody reads
            raise unwritable(Path(run_dir), exc, "run directory") from None
        fd = None
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        raise StorageError(f"{printable(str(path))} is a symbolic link or not a regular file, not a metrics file "
                           "featcache wrote; it is never written through: remove it, then add --resume")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:  # a torn line is what --resume expects after this: it redoes the epoch
        raise unwritable(Path(run_dir), exc, "run directory") from None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """A run file (config.json, summary.json) replaced atomically: readers see the old file or the whole new one."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2) + "\n")


def record_failure(run_dir: Path, exc: BaseException, write: bool = True) -> None:
    """failed.json: what stopped the run's epochs (an exception; Ctrl-C and kill are interruptions, not failures),
    tied to the attempt it ended by config.json's ``started`` — a later attempt (--resume, or a fresh run into the
    directory) rewrites config.json and so supersedes it. Never raises: the run's own error is the one to report.
    ``write``: False on the ranks of a torchrun job other than 0."""
    import datetime as dt

    if not write:
        return
    try:
        started = loads_json((Path(run_dir) / CONFIG).read_text()).get("started")
    except (OSError, ValueError, AttributeError):
        started = None
    record = {"error": type(exc).__name__, "message": " ".join(str(exc).split())[:300],
              "started": started if isinstance(started, str) else None,
              "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        write_json(Path(run_dir) / FAILED, record)
    except Exception:  # a full or read-only disk (maybe what stopped the run): nothing more can be said here
        pass


_FAILURE_TYPES: dict[str, Any] = {"error": str, "message": str, "started": str | None, "time": str}


def read_failure(run_dir: Path) -> dict[str, Any] | None:
    """failed.json, its fields checked (None when there is none); whether it is current is the caller's to judge
    (its ``started`` against config.json's)."""
    from featcache.config import typecheck

    path = Path(run_dir) / FAILED
    if not path.is_file():
        return None
    record = read_json(path, "failure record")
    try:
        for name, hint in _FAILURE_TYPES.items():
            try:
                typecheck.check(record.get(name), hint)
            except typecheck.TypeMismatch as exc:
                raise typecheck.TypeMismatch(f"{name}: {exc}") from None
    except typecheck.TypeMismatch as exc:
        raise ConfigError(f"failure record {path} is not what featcache writes ({exc}); the run directory is damaged "
                          "or foreign") from None
    return record


def load_checkpoint(path: Path, map_location: Any = "cpu", hint: str = "") -> dict[str, Any]:
    """A run checkpoint (a dict written by featcache); a truncated or foreign file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; the run has not finished an epoch yet")
    try:
        # weights-only: a run directory may come from someone else (featcache writes tensors and numbers only).
        state = safeload.load(path, map_location)
    except safeload.PickledObjectError as exc:
        raise ConfigError(f"checkpoint {path} pickles Python objects besides tensors ({exc.name}); featcache never "
                          "writes those and will not unpickle them (the file could run code): do not use this run "
                          "directory") from None
    except safeload.UnreadableError as exc:
        raise ConfigError(f"checkpoint {path} is damaged ({str(exc)[:120]}){'; ' + hint if hint else ''}") from None
    if not isinstance(state, dict) or "student" not in state:
        raise ConfigError(f"checkpoint {path} was not written by featcache (no 'student' state)"
                          f"{'; ' + hint if hint else ''}")
    return state


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, rename: a kill or power loss leaves the old checkpoint or the new one. A full
    or read-only disk is a one-line StorageError and leaves no temp file (torch's own writer reports ENOSPC as an
    opaque RuntimeError, so the bytes are serialised in memory and written with plain file I/O)."""
    import io

    import torch

    from featcache.util.fileio import write_atomic

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(Path(path), buffer.getvalue(), flag=Path(path).name, what="run directory")


def atomic_write_text(path: Path, text: str) -> None:
    from featcache.cache.format import atomic_write_text as write

    write(Path(path), text)


# -- the checkpoints' schema ------------------------------------------------------------------------------------
# The training state: present in checkpoint-last.pt only.
_STATE = ("method", "optimizer", "scheduler", "translator_optimizer", "translator_scheduler", "scaler", "rng")


@dataclass
class Checkpoint:
    student: dict[str, Any]  # the model's state_dict
    epoch: int  # the last finished epoch, counted from 0
    test_acc: float  # its test accuracy
    best_acc: float = -1.0
    best_epoch: int = 0  # counted from 1 (0: none yet)
    elapsed: float = 0.0  # seconds of training and evaluation so far, every attempt included
    method: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    translator_optimizer: dict[str, Any] | None = None
    translator_scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None  # {"torch": the CPU generator's state}

    def save(self, path: Path, best: bool = False) -> None:
        """Atomically to ``path``; ``best``: the student and its epoch only (checkpoint-best.pt)."""
        keep = ("student", "epoch", "test_acc") if best else tuple(f.name for f in fields(self))
        atomic_save({name: getattr(self, name) for name in keep}, path)

    @classmethod
    def load(cls, path: Path, map_location: Any = "cpu", hint: str = "", full: bool = True) -> "Checkpoint":
        """A checkpoint read weights-only and checked; ``full``: the training state must be there (--resume)."""
        state = load_checkpoint(path, map_location=map_location, hint=hint)
        problem = _problem(state, full)
        if problem:
            raise ConfigError(f"checkpoint {path} {problem}; it was not written by this featcache"
                              f"{'; ' + hint if hint else ''}")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def _problem(state: dict[str, Any], full: bool) -> str | None:
    if not isinstance(state.get("student"), dict):
        return "holds no student state"
    if not isinstance(state.get("epoch"), int) or isinstance(state.get("epoch"), bool) or state["epoch"] < 0:
        return f"has no valid epoch ({state.get('epoch')!r})"
    if not isinstance(state.get("test_acc"), (int, float)):
        return "has no test accuracy"
    if full:
        missing = [k for k in _STATE if k not in state]
        if missing or not isinstance(state.get("rng"), dict) or "torch" not in state["rng"]:
            return f"lacks the training state --resume needs ({', '.join(missing) or 'rng'})"
        for k in ("best_acc", "best_epoch", "elapsed"):
            if not isinstance(state.get(k), (int, float)) or isinstance(state.get(k), bool):
                return f"has no valid {k}"
    return None
