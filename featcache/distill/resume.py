"""What ``--resume`` may continue: the same run, and only while it is unfinished.

A run directory records what the run is (config.json) and how far it got (checkpoint-last.pt, summary.json). Resuming
with other flags would silently produce a run that is neither the old one nor the new one (a cosine schedule over
other epochs, another seed, another teacher), so those are refused with what differs. A finished run is reported as
finished and nothing in its directory is touched: resuming it again must not rewrite its summary.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from featcache.config import DistillConfig
from featcache.config.distill import AUGMENT_AUTO, OPTIMIZER_AUTO, PER_STUDENT_FIELDS, as_recorded
from featcache.config.flags import flag_name, runtime_fields
from featcache.errors import ConfigError
from featcache.runs import rundir
from featcache.util.fileio import printable

# Not compared from the flags: where the data lives (compared by the dataset's identity instead), the teachers as
# typed (compared by the cache keys they resolve to) and what says where/how to run.
_NOT_COMPARED = {"data_root", "teachers", "resume", "run_dir"}
# The dataset identity fields a resumed run must share (the file fingerprint may differ after a copy of the data).
_DATASET_FIELDS = ("name", "split", "num_samples", "num_classes", "ids_sha256", "labels_sha256", "classes_sha256",
                   "params")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _method(d: dict[str, Any]) -> str:
    return d.get("method") or ("ts" if d.get("teachers") else "ce")


def resolved(config: DistillConfig) -> DistillConfig:
    """``config.resolved()``; with --resume, a default resolved per run and left unset (``--augment auto``, the
    PER_STUDENT_FIELDS) continues what the run recorded, so a run started under other defaults resumes with its
    own (a field the run predates: what it did then, RECORDED_BEFORE)."""
    path = Path(config.run_dir) / rundir.CONFIG if config.run_dir is not None else None
    try:
        recorded = config.resume and path is not None and path.is_file()
    except OSError:  # a name the file system refuses: the run-dir check says so in one line
        recorded = False
    if recorded and path is not None:
        stored = as_recorded(rundir.read_config(path.parent)["config"])
        kept: dict[str, Any] = {}
        # Values from the file are kept only when they are what the flag takes: anything else is left to
        # check_same_flags, which refuses the run in one line.
        if config.augment == AUGMENT_AUTO and isinstance(stored.get("augment"), str):
            kept["augment"] = stored["augment"]
        for name in PER_STUDENT_FIELDS:
            value = stored.get(name)
            if getattr(config, name) in (None, OPTIMIZER_AUTO) and _takes(name, value):
                kept[name] = value
        config = replace(config, **kept)
    return config.resolved()


def _takes(name: str, value: Any) -> bool:
    """Whether a recorded value is of the kind the flag takes (the numbers' ranges are checked with the flags)."""
    if name in ("epochs", "batch_size", "warmup_epochs"):
        return isinstance(value, int) and not isinstance(value, bool)
    if name in ("lr", "weight_decay"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "zero_init_residual":
        return isinstance(value, bool)
    return isinstance(value, str) and value != OPTIMIZER_AUTO


def check_same_flags(run_dir: Path, config: DistillConfig) -> None:
    """Refuse ``--resume`` with flags that change what the run produces (one line listing what differs)."""
    stored = as_recorded(rundir.read_config(run_dir)["config"])
    now = _plain(config.to_dict())
    now["method"], stored = config.resolved_method(), {**stored, "method": _method(stored)}
    skip = runtime_fields(DistillConfig) | _NOT_COMPARED
    names = {f.name: flag_name(f) for f in fields(DistillConfig)}
    if _ids_spec(stored.get("labels")) and _ids_spec(now.get("labels")):
        skip = skip | {"labels"}  # one ids file under two paths: its contents are compared (check_same_inputs)
    diffs = [f"{names[k]} {_show(stored[k])} (now {_show(now[k])})" for k in now
             if k not in skip and k in stored and _plain(stored[k]) != now[k]]
    if diffs:
        more = f" (and {len(diffs) - 2} more)" if len(diffs) > 2 else ""
        raise ConfigError(f"--resume: {run_dir} was started with {'; '.join(diffs[:2])}{more}; resume it with the "
                          f"flags it started with ({rundir.CONFIG} records them), or start a fresh --run-dir")


def _ids_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("ids:")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def check_same_inputs(run_dir: Path, teacher_keys: list[str], datasets: dict[str, dict[str, Any]],
                      labels: dict[str, Any] | None = None) -> None:
    """Refuse ``--resume`` when the teachers resolve to other caches, the splits are other samples or labels, or
    ``labels`` (what ``LabelSubset.record`` gives now) is another subset or read from an edited ids file."""
    info = rundir.read_config(run_dir)
    before = [str(t.get("key")) for t in info.get("teachers") or [] if isinstance(t, dict)]
    if before != list(teacher_keys):
        raise ConfigError(f"--resume: {run_dir} was trained from the caches {', '.join(before) or '(none)'}, the "
                          f"--teacher flags now give {', '.join(teacher_keys) or '(none)'}; name the same caches "
                          "(by key) or start a fresh --run-dir")
    recorded = info.get("dataset") or {}
    for split, identity in datasets.items():
        old = recorded.get(split)
        if not isinstance(old, dict):
            continue
        changed = [k for k in _DATASET_FIELDS if k in old and _plain(old[k]) != _plain(identity.get(k))]
        if changed:
            raise ConfigError(f"--resume: the {split} split is not the one {run_dir} started with ({changed[0]} "
                              "differs); resume it on the same data, or start a fresh --run-dir")
    _check_same_labels(run_dir, info.get("labels"), labels)  # after the data: other data selects other ids too


def _check_same_labels(run_dir: Path, before: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
    """The ids file's bytes where both runs hashed them; else which samples are labelled (recorded by every run
    that recorded its labels)."""
    if not isinstance(before, dict) or now is None:
        return
    spec = str(now.get("spec", ""))
    old_file, new_file = before.get("file_sha256"), now.get("file_sha256")
    if old_file and new_file and old_file != new_file:
        raise ConfigError(f"--resume: the ids file {printable(spec[4:])} (--labels) changed since {run_dir} started "
                          f"(sha256 {printable(str(old_file))[:12]}…, now {new_file[:12]}…); put back the file it "
                          "started with, or start a fresh --run-dir", flag="--labels")
    old_ids = before.get("ids_sha256")
    if old_ids and old_ids != now.get("ids_sha256"):
        what = f"the ids file {printable(spec[4:])} now lists" if _ids_spec(spec) else f"--labels {spec} now selects"
        raise ConfigError(f"--resume: {what} other samples than {run_dir} started with ({now.get('labeled')} "
                          f"labelled, then {printable(str(before.get('labeled')))}); resume it with the labels it "
                          "started with, or start a fresh --run-dir", flag="--labels")


def finished(epoch: int, total_epochs: int) -> bool:
    """Whether a checkpoint of (0-based) ``epoch`` is the run's last (nothing is left to resume)."""
    return epoch + 1 >= total_epochs


def images_per_s(metrics: list[dict[str, Any]]) -> float:
    """The run's training throughput from its epoch records: every epoch trains on the same number of images, so
    the run's rate is the harmonic mean of the epochs' rates."""
    rates = [r["images_per_s"] for r in metrics if isinstance(r.get("images_per_s"), (int, float))
             and r["images_per_s"] > 0]
    return len(rates) / sum(1 / r for r in rates) if rates else 0.0
