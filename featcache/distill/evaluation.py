"""Test accuracy (Eq. 6 of the multi-teacher paper): per epoch for the training loop, and of a finished run rebuilt from
its directory (``featcache eval``)."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from featcache.cache.store import default_cache_dir
from featcache.cache.usage import record_use
from featcache.config import DistillConfig
from featcache.datasets import ImageDataset, get_dataset
from featcache.distill.loader import shutdown_workers
from featcache.errors import ConfigError
from featcache.runs import rundir
from featcache.runs.rundir import BEST, CONFIG, LAST
from featcache.transforms import Geometry, Normalizer, TransformSpec
from featcache.util.runtime import autocast, default_workers, resolve_device, resolve_precision


@dataclass(frozen=True)
class Accuracy:
    """Correct / total (Eq. 6) and the mean cross-entropy over ``n`` test images."""

    acc: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunEvaluation:
    """A run's checkpoint on its test split (``featcache eval``), and on each class part asked for."""

    run_dir: str
    checkpoint: str
    epoch: int
    acc: float
    loss: float
    n: int
    parts: dict[str, Accuracy] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_loader(dataset: ImageDataset, transform: TransformSpec, batch_size: int, workers: int, device: torch.device):
    dataset.with_transform(Geometry(transform))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


@torch.no_grad()
def evaluate(student, loader, transform: TransformSpec, device, precision: str,
             channels_last: bool = True) -> Accuracy:
    """Test accuracy = correct / (correct + incorrect) over the whole split (Eq. 6) and mean cross-entropy."""
    normalize = Normalizer(transform, device)
    was_training = student.training
    student.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for images, labels, _ in loader:
        x = normalize(images, channels_last=channels_last)
        y = labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = student(x)
        correct += (logits.argmax(1) == y).sum()
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        n += len(y)
    student.train(was_training)
    return Accuracy(acc=correct.item() / max(n, 1), loss=loss_sum.item() / max(n, 1), n=n)


# -- the run ---------------------------------------------------------------------------------------------------------


def build_model(info: dict[str, Any]):
    """The network a run trained, rebuilt with fresh weights from its config.json (``read_config``): a classifier for a
    train-teacher run, a student otherwise. Load a checkpoint's ``student`` state into it."""
    kwargs = info.get("student_kwargs")
    if not isinstance(kwargs, dict):
        raise ConfigError("the run's config.json lacks 'student_kwargs'; it was not written by this featcache")
    if info.get("kind", "student") == "teacher":
        from featcache.models.classifier import build_classifier as build
    else:
        # ignored: the two builders take other keywords (checked by bind below), both give an nn.Module
        from featcache.models.students import create_student as build  # type: ignore[assignment]
    try:
        inspect.signature(build).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"the run's config.json has student_kwargs the model does not take ({exc}); it was not "
                          "written by this featcache") from None
    return build(**kwargs)


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "auto", data_root: Path | None = None):
    """Rebuild a run's student and test data from config.json and a checkpoint (no cache is needed)."""

    run_dir = Path(run_dir)
    info = rundir.read_config(run_dir)
    config = DistillConfig.from_dict(info["config"])
    if data_root is not None:
        config.data_root = data_root
    ckpt = run_dir / (BEST if checkpoint == "best" else LAST)
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt} not found; the run has not finished an epoch yet")
    if config.dataset is None:  # a run records the data it trained on (its teachers' when no --dataset named it)
        raise ConfigError(f"{run_dir / CONFIG}: names no dataset; it was not written by a finished featcache distill")
    test = get_dataset(config.dataset, config.data_root, "test", **config.dataset_options)
    subset = info["dataset"]["test"].get("params", {}).get("class_subset")
    if subset:  # a teacher trained on part of the classes (train-teacher --classes)
        from featcache.datasets.base import ClassSubset

        test = ClassSubset(test, subset)
    recorded = info["dataset"]["test"]
    ours = test.identity()
    # The file fingerprint is left out: a copied dataset (new mtimes) is the same test set; evaluate_run says so.
    if ({k: v for k, v in ours.items() if k != "fingerprint"}
            != {k: v for k, v in recorded.items() if k != "fingerprint"}):
        raise ConfigError(
            f"the test split at --data-root {config.data_root} differs from the one the run was trained with "
            "(sample ids, labels or classes changed)"
        )
    student = build_model(info)
    state = rundir.Checkpoint.load(ckpt, hint="evaluate --checkpoint last, or re-run the training", full=False)
    student.load_state_dict(state.student)
    dev = resolve_device(device)
    return (student, test, TransformSpec.from_dict(info["transform"]), dev, resolve_precision(config.precision, dev),
            state, config)


def evaluate_run(run_dir: Path, checkpoint: str = "best", device: str = "auto", batch_size: int = 256,
                 workers: int | None = None, data_root: Path | None = None,
                 parts: dict[str, list[str]] | None = None) -> RunEvaluation:
    """Test accuracy (Eq. 6) of a run's checkpoint on the dataset's test split; with ``parts`` (name -> class
    names) also the accuracy on each part: its test images, predicted among that part's classes only (a task, as in
    the per-task tables of adaptive knowledge amalgamation)."""
    from featcache.datasets.base import ClassSubset
    from featcache.errors import check_at_least
    from featcache.util.runtime import check_workers

    check_workers(workers)
    check_at_least("--batch-size", batch_size, 1)
    student, test, transform, dev, precision, state, config = load_run(run_dir, checkpoint, device, data_root)
    _record_teacher_use(run_dir, config)
    student = student.to(dev)
    w = default_workers(dev) if workers is None else workers
    head = list(test.classes)  # what the checkpoint's logits cover
    base = test.base if isinstance(test, ClassSubset) else test
    jobs: list[tuple[str, Any, list[int] | None]] = [("all", test, None)]
    for name, classes in (parts or {}).items():
        outside = [c for c in classes if c not in head]
        if outside:
            raise ConfigError(f"--classes {name}: class {outside[0]!r} is not covered by the run's head "
                              f"({len(head)} classes)")
        jobs.append((name, ClassSubset(base, classes), [head.index(c) for c in classes]))
    overall: Accuracy | None = None
    per_part: dict[str, Accuracy] = {}
    for name, ds, cols in jobs:
        loader = eval_loader(ds, transform, batch_size, w, dev)
        try:
            model = student if cols is None else _Columns(student, cols)
            ev = evaluate(model, loader, transform, dev, precision, config.channels_last)
        finally:
            shutdown_workers(loader)
        if cols is None:
            overall = ev
        else:
            per_part[name] = ev
    assert overall is not None  # jobs[0] is the whole split
    return RunEvaluation(run_dir=str(run_dir), checkpoint=checkpoint, epoch=state.epoch + 1,
                         acc=overall.acc, loss=overall.loss, n=overall.n, parts=per_part)


def _record_teacher_use(run_dir: Path, config: DistillConfig) -> None:
    """An eval reads no cache, but it is a use of the run's teachers: recorded for `cache ls` and `cache gc` (the keys
    come from a file anyone may have written: record_use ignores what is not a cache name)."""
    keys = [t.get("key") for t in rundir.read_config(run_dir).get("teachers") or []]
    record_use(config.cache_dir if config.cache_dir is not None else default_cache_dir(), keys)


class _Columns(torch.nn.Module):
    """A model's logits restricted to some columns (prediction among one task's classes)."""

    def __init__(self, model: torch.nn.Module, cols: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits.index_select(1, self.cols.to(logits.device))
