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

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from featcache.datasets import get_dataset
from featcache.datasets.base import ClassSubset, check_disjoint, read_class_list
from featcache.distill.methods.base import Method, MethodParams, xent
from featcache.distill.trainer import (
    BEST,
    DistillConfig,
    DistillSummary,
    Setup,
    claim_run_dir,
    train,
)
from featcache.config import TeacherConfig  # re-exported: the schema lives in featcache.config
from featcache.errors import ConfigError, WeightsError
from featcache.extract import ExtractConfig, plan_extract
from featcache.models.base import FeatureModel
from featcache.progress import Reporter
from featcache import rundir
from featcache.rundir import TEACHER_FILE
from featcache.runtime import resolve_device, resolve_precision

INITS = ("auto", "imagenet", "random")


class Classifier(nn.Module):
    """A teacher network trained as a classifier: ``forward(x)`` gives logits (what the training loop expects)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]

    def describe(self) -> str:
        return f"{type(self.model).__name__}: {self.num_features}-d features, {self.num_classes} classes"

    def weights_state_dict(self) -> dict[str, torch.Tensor]:
        """The state_dict `extract --weights` loads: torchvision's own key layout, or NTS-Net's."""
        if hasattr(self.model, "torchvision_state_dict"):
            return self.model.torchvision_state_dict()
        return self.model.state_dict()


def _imagenet_member(teacher: str):
    from featcache.models.teachers import ALIASES, _tv_weights_enum, teacher_entry

    entry = teacher_entry(teacher)
    tv_name = "resnet50" if entry.name == "nts-net" else ALIASES.get(entry.name, entry.name)
    try:
        return _tv_weights_enum(tv_name, "DEFAULT")
    except Exception:  # noqa: BLE001 - a model without published weights
        return None


def _hub_has(member) -> bool:
    from featcache.models.teachers import hub_checkpoint_dir

    return member is not None and (hub_checkpoint_dir() / os.path.basename(urlparse(member.url).path)).is_file()


def resolve_init(teacher: str, init: str) -> str:
    """``auto`` -> ``imagenet`` when the weights are in the hub cache, else ``random``; paths are checked."""
    if init == "auto":
        return "imagenet" if _hub_has(_imagenet_member(teacher)) else "random"
    if init in INITS:
        if init == "imagenet" and _imagenet_member(teacher) is None:
            raise WeightsError(f"--init imagenet: torchvision publishes no ImageNet weights for {teacher}; use random")
        return init
    if not Path(init).expanduser().is_file():
        raise ConfigError(f"--init {init!r}: choose auto, imagenet, random or an existing checkpoint file")
    return str(Path(init).expanduser().resolve())


def build_classifier(teacher: str, num_classes: int, image_size: int | None = None, seed: int = 0,
                     init: str = "random") -> Classifier:
    """The teacher network with a ``num_classes`` head, initialised per ``init`` (already resolved)."""
    from featcache.models.teachers import create_teacher, teacher_entry

    entry = teacher_entry(teacher)
    nts = entry.name == "nts-net"
    if init == "imagenet" and not nts:
        t = create_teacher(teacher, weights="DEFAULT", seed=seed, image_size=image_size)
    elif init not in ("imagenet", "random"):  # a checkpoint path: its head decides unless replaced below
        t = create_teacher(teacher, weights=init, seed=seed, image_size=image_size)
    else:
        t = create_teacher(teacher, weights="random", num_classes=num_classes, seed=seed, image_size=image_size)
        if nts and init == "imagenet":
            member = _imagenet_member(teacher)
            state = member.get_state_dict(progress=False)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            t.model.pretrained_model.load_state_dict(state, strict=False)
    model = t.model
    if model.num_classes != num_classes:
        if nts:
            raise WeightsError(
                f"--init {init}: the checkpoint has {model.num_classes} classes, the dataset {num_classes}; NTS-Net's "
                "three heads cannot be swapped here — start from imagenet or random"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.head = nn.Linear(model.num_features, num_classes)
        model.num_classes = num_classes
    return Classifier(model)


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
            part_ce = F.cross_entropy(out.part_logits.float().reshape(b * n, c), y.repeat_interleave(n), reduction="none")
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
    return DistillConfig(
        student=tc.teacher, dataset=tc.dataset, data_root=tc.data_root, dataset_options=dict(tc.dataset_options),
        teachers=[], method="teacher", epochs=tc.epochs, batch_size=tc.batch_size, lr=lr, optimizer=tc.optimizer,
        weight_decay=tc.weight_decay, schedule=tc.schedule, image_size=tc.image_size, augment=tc.augment,
        seed=tc.seed, device=tc.device, precision=tc.precision, workers=tc.workers, run_dir=run_dir,
        resume=tc.resume, shuffle="full", cache_mode="ram",
    )


def train_teacher(tc: TeacherConfig, reporter: Reporter | None = None) -> tuple[DistillSummary, Path]:
    """Fine-tune ``tc.teacher`` on ``tc.dataset``; returns the run summary and the path of ``teacher.pt``."""
    init = resolve_init(tc.teacher, tc.init)
    lr = tc.lr if tc.lr is not None else (1e-4 if init == "imagenet" else 1e-3)
    config = _run_config(tc, lr)
    with claim_run_dir(config):
        # The teacher's evaluation view: the one `featcache extract` would use for this teacher and dataset.
        transform = plan_extract(ExtractConfig(
            teacher=tc.teacher, dataset=tc.dataset, data_root=tc.data_root, dataset_options=dict(tc.dataset_options),
            weights="random", image_size=tc.image_size,
        )).transform
        train_ds = get_dataset(tc.dataset, tc.data_root, "train", **tc.dataset_options)
        test_ds = get_dataset(tc.dataset, tc.data_root, "test", **tc.dataset_options)
        if train_ds.classes != test_ds.classes:
            raise ConfigError(f"dataset {tc.dataset}: train and test splits list different classes")
        check_disjoint(train_ds, test_ds)
        if tc.classes is not None:
            names = read_class_list(tc.classes) if isinstance(tc.classes, (str, Path)) else list(tc.classes)
            train_ds, test_ds = ClassSubset(train_ds, names), ClassSubset(test_ds, names)
        kwargs = {"teacher": tc.teacher, "num_classes": train_ds.num_classes, "image_size": transform.image_size}
        model = build_classifier(**kwargs, seed=tc.seed, init=init)
        method = TeacherLoss(model, [], train_ds.num_classes, MethodParams())
        device = resolve_device(tc.device)
        s = Setup(config, train_ds, test_ds, [], transform, model, method, device, resolve_precision(tc.precision, device),
                  kwargs, kind="teacher")
        summary = train(s, reporter)
        best = rundir.load_checkpoint(Path(config.run_dir) / BEST)
        model.load_state_dict(best["student"])
        path = Path(config.run_dir) / TEACHER_FILE
        torch.save({
            "state_dict": model.weights_state_dict(),
            "featcache": {
                "teacher": tc.teacher, "init": init, "num_classes": train_ds.num_classes, "classes": list(train_ds.classes),
                "dataset": train_ds.identity(), "transform": transform.to_dict(), "epoch": best["epoch"] + 1,
                "test_acc": best["test_acc"],
            },
        }, path.with_name(path.name + ".tmp"))
        path.with_name(path.name + ".tmp").replace(path)  # atomically: a recipe treats teacher.pt as "done"
    return summary, path
