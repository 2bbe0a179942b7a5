"""`featcache train-teacher`: fine-tune a registered teacher on a dataset, for `featcache extract --weights`.

The papers' teachers are fine-tuned on the target data (ResNet50 on CIFAR-10, NTS-Net on CUB/SOD, …) before their
features are transferred. This module trains one with the same loop as `distill` (``trainer.train``: metrics.jsonl,
best/last checkpoints, --resume, AMP) and writes ``teacher.pt``: the network's state_dict in the layout
``extract --weights`` loads, plus a ``featcache`` record of what produced it.

Losses: torchvision classifiers use cross-entropy on their logits. NTS-Net uses the losses of its paper (Yang et al.,
ECCV 2018, §3.4) as in its original train.py: CE on the whole-image logits, on the concatenated logits and on every
part's logits, plus the Navigator's ranking loss (hinge on the pairwise order of part scores vs part confidences).

Initialisation (``--init``): ``imagenet`` loads torchvision's ImageNet weights (downloading if needed; for NTS-Net
into its ResNet-50 backbone), ``random`` starts from scratch, ``auto`` (default) uses ImageNet weights when they are
already in the torch hub cache and random ones otherwise (it never downloads), and a path starts from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from featcache.config import TeacherConfig  # re-exported: the schema lives in featcache.config
from featcache.config.flags import copy_fields
from featcache.datasets import get_dataset
from featcache.datasets.base import (
    ClassSubset,
    check_disjoint,
    check_same_classes,
    check_trainable,
    read_class_list,
)
from featcache.distill.methods.base import Method, MethodParams
from featcache.distill.setup import validate as validate_distill
from featcache.distill.trainer import (
    BEST,
    DistillConfig,
    DistillSummary,
    Setup,
    claim_run_dir,
    train,
)
from featcache.errors import check_at_least
from featcache.extract import ExtractConfig, plan_extract
from featcache.losses import xent
from featcache.models.classifier import INITS, Classifier, build_classifier, resolve_init  # noqa: F401 - re-exported
from featcache.runs import rundir
from featcache.runs.rundir import TEACHER_FILE
from featcache.util.progress import Reporter
from featcache.util.runtime import bits_record, pinned_threads, resolve_device, resolve_precision


def ranking_loss(scores: torch.Tensor, part_loss: torch.Tensor) -> torch.Tensor:
    """NTS-Net's Navigator loss: for parts i, j of an image whose classification loss says j is more informative
    than i (part_loss_j < part_loss_i), hinge max(0, 1 − s_j + s_i); summed over pairs, averaged over images."""
    worse = part_loss.unsqueeze(2) > part_loss.unsqueeze(1)  # [B, i, j]: part i has the larger loss than part j
    margin = F.relu(1 - scores.unsqueeze(1) + scores.unsqueeze(2))  # 1 − s_j + s_i
    return (margin * worse).sum(dim=(1, 2)).mean()


class TeacherLoss(Method):
    """Cross-entropy on the teacher's logits; for NTS-Net the four losses of its paper (module docstring)."""

    name = "teacher"
    min_teachers = 0
    max_teachers = 0

    def loss(self, student, x, y, rows, epoch):
        model = student.model
        if hasattr(model, "forward_train"):
            out = model.forward_train(x)
            b, n, c = out.part_logits.shape
            raw = xent(out.raw_logits, y)
            concat = xent(out.concat_logits, y)
            part_ce = F.cross_entropy(out.part_logits.float().reshape(b * n, c), y.repeat_interleave(n),
                                      reduction="none")
            parts = part_ce.mean()
            rank = ranking_loss(out.top_n_prob.float(), part_ce.detach().view(b, n))
            total = raw + concat + parts + rank
            named = {"raw": raw.detach(), "concat": concat.detach(), "parts": parts.detach(), "rank": rank.detach()}
            return total, named, out.concat_logits
        logits = student(x)
        loss = xent(logits, y)
        return loss, {"xent": loss.detach()}, logits


def _run_config(tc: TeacherConfig, lr: float) -> DistillConfig:
    run_dir = tc.run_dir
    if run_dir is None:
        import datetime as _dt

        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"teacher-{tc.dataset}-{tc.teacher}-s{tc.seed}-{stamp}"
    # The shared fields by name; a teacher trains in RAM over a full shuffle, its classes applied as a dataset subset.
    # A teacher's loop takes no student recipe: what train-teacher has no flag for keeps the papers' setting.
    return copy_fields(tc, DistillConfig, rename={"teacher": "student"}, classes=None, teachers=[], method="teacher",
                       lr=lr, run_dir=run_dir, shuffle="full", cache_mode="ram", warmup_epochs=0,
                       zero_init_residual=False)


def default_lr(init: str) -> float:
    """--lr when not given, by the resolved --init: fine-tuning ImageNet weights takes smaller steps."""
    return 1e-4 if init == "imagenet" else 1e-3


def validate(tc: TeacherConfig) -> DistillConfig:
    """What train_teacher checks before it trains, without data or a model (recipes run it at plan time): --init
    and the training loop's flags. Returns the loop's config, as the run's config.json will record it."""
    config = _run_config(tc, tc.lr if tc.lr is not None else default_lr(resolve_init(tc.teacher, tc.init)))
    validate_distill(config)
    if tc.threads is not None:
        check_at_least("--threads", tc.threads, 1)
    return config


def train_teacher(tc: TeacherConfig, reporter: Reporter | None = None) -> tuple[DistillSummary, Path]:
    """Fine-tune ``tc.teacher`` on ``tc.dataset``; returns the run summary and the path of ``teacher.pt``."""
    init = resolve_init(tc.teacher, tc.init)
    lr = tc.lr if tc.lr is not None else default_lr(init)
    config = _run_config(tc, lr)
    with claim_run_dir(config):
        # The teacher's evaluation view: the one `featcache extract` would use for this teacher and dataset.
        transform = plan_extract(ExtractConfig(
            teacher=tc.teacher, dataset=tc.dataset, data_root=tc.data_root, dataset_options=dict(tc.dataset_options),
            weights="random", image_size=tc.image_size,
        )).transform
        train_ds = get_dataset(tc.dataset, tc.data_root, "train", **tc.dataset_options)
        test_ds = get_dataset(tc.dataset, tc.data_root, "test", **tc.dataset_options)
        check_same_classes(train_ds, test_ds, tc.dataset)
        check_disjoint(train_ds, test_ds)
        if tc.classes is not None:
            names = read_class_list(tc.classes) if isinstance(tc.classes, (str, Path)) else list(tc.classes)
            train_ds, test_ds = ClassSubset(train_ds, names), ClassSubset(test_ds, names)
        check_trainable(train_ds)
        kwargs: dict[str, Any] = {"teacher": tc.teacher, "num_classes": train_ds.num_classes,
                                  "image_size": transform.image_size}
        model = build_classifier(**kwargs, seed=tc.seed, init=init)
        method = TeacherLoss(model, [], train_ds.num_classes, MethodParams())
        device = resolve_device(tc.device)
        s = Setup(config, train_ds, test_ds, [], transform, model, method, device,
                  resolve_precision(tc.precision, device), kwargs, kind="teacher")
        with pinned_threads(tc.threads):
            summary = train(s, reporter)
            bits = bits_record(device)  # the thread count the loop used, with the rest that changes the bits
        path = Path(config.run_dir) / TEACHER_FILE
        if config.resume and path.is_file():  # a finished run resumed again: its teacher.pt stays as it is
            return summary, path
        best = rundir.Checkpoint.load(Path(config.run_dir) / BEST, full=False)
        model.load_state_dict(best.student)
        rundir.atomic_save({  # atomically: a recipe treats teacher.pt as "done"
            "state_dict": model.weights_state_dict(),
            "featcache": {
                "teacher": tc.teacher, "init": init, "num_classes": train_ds.num_classes,
                "classes": list(train_ds.classes), "dataset": train_ds.identity(), "transform": transform.to_dict(),
                "epoch": best.epoch + 1, "test_acc": best.test_acc,
                "draw": {"seed": tc.seed, **bits},  # what makes this teacher one draw among others (plan, report)
            },
        }, path)
    return summary, path
