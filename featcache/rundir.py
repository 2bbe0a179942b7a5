"""The run directory: the one place that knows its files and reads them safely.

A run (``featcache distill`` or ``featcache train-teacher``) writes into one directory:

    config.json            what the run is: its DistillConfig, method, teachers, transform, datasets, model kwargs
    metrics.jsonl          one JSON line per finished epoch (appended; a torn last line after a kill is skipped)
    checkpoint-last.pt     everything --resume needs, replaced atomically after every epoch
    checkpoint-best.pt     the student at its best test accuracy (what `eval` and the `run` teacher load)
    summary.json           written once the run ends
    teacher.pt             train-teacher only: the weights `extract --weights` loads
    .lock                  held by the process training in it (featcache.locks)

Readers here turn every damaged or foreign file into a one-line ConfigError naming the file and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from featcache import safeload
from featcache.errors import ConfigError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
TEACHER_FILE = "teacher.pt"


def read_json(path: Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from ``path``; missing, torn or foreign files are a one-line ConfigError."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {Path(path).parent} is not a featcache distill run (nor a "
                          "train-teacher run) directory") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is unreadable ({' '.join(str(exc).split())[:120]}); the run directory is "
                          "damaged: re-run it into a fresh --run-dir") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {path} does not hold a JSON object; the run directory is damaged")
    return obj


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    info = read_json(path, "run config")
    if not isinstance(info.get("config"), dict):
        raise ConfigError(f"{path} lacks the run's 'config'; it was not written by featcache distill/train-teacher")
    return info


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The finished epochs' records, in order. A line that does not parse (the torn last line of a run killed while
    appending) is skipped: the epoch it would have recorded is redone by --resume."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            out.append(record)
    return out


def truncate_metrics(run_dir: Path, keep_epochs: int) -> None:
    """Keep the records of epochs 1..keep_epochs (a resumed run rewrites what follows its checkpoint)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r["epoch"] <= keep_epochs]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


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
    """torch.save to a temp file, fsync, rename: a kill or power loss leaves the old checkpoint or the new one."""
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def atomic_write_text(path: Path, text: str) -> None:
    from featcache.cache.format import atomic_write_text as write

    write(Path(path), text)
