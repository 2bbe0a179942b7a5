"""`featcache train-teacher`'s options: one field each, carrying its flag (featcache.config.flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.config.common import (
    bn_recalibrate_field,
    data_root_field,
    dataset_field,
    dataset_options_field,
    device_field,
    log_field,
    workers_field,
)
from featcache.config.flags import opt


@dataclass
class TeacherConfig:
    """Everything `featcache train-teacher` takes; each field declares its CLI flag and recipe key."""

    teacher: str = opt(help="A registered teacher or torchvision classifier.", short="-t", recipe=False)
    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    # recipes may train the teacher on a larger set of the same classes (e.g. more synthetic samples)
    dataset_options: dict[str, Any] = dataset_options_field()
    init: str = opt("auto", "auto (ImageNet weights if in the torch hub cache, else random), imagenet, random, or a "
                            "checkpoint path.")
    image_size: int | None = opt(None, "Default: the view `extract` uses for this teacher and dataset.")
    epochs: int = opt(30, "Epochs of teacher training.")
    batch_size: int = opt(64, "Images per step.", short="-b")
    lr: float | None = opt(None, "Default 1e-4 from ImageNet weights, 1e-3 from scratch.")
    optimizer: str = opt("adam", "adam, adamw or sgd.")
    weight_decay: float = opt(0.0, "Weight decay of the optimizer.")
    schedule: str = opt("cosine", "cosine, step or none.")
    augment: str = opt("flip", "none, flip or pad-crop-flip (teachers train on augmented views).")
    seed: int = opt(0, "Seed of the initialisation, the epoch order and augmentation.")
    # a teacher's bits depend on its thread count (CPU reductions add in another order): a recipe pins it
    threads: int | None = opt(None, "CPU threads of the training (default: the cores the workers leave, or "
                                    "$FEATCACHE_THREADS); recorded in teacher.pt with what else changes its bits.")
    bn_recalibrate: int = bn_recalibrate_field()
    device: str = device_field(runtime=True, recipe=False)
    precision: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    workers: int | None = workers_field(recipe=False)
    run_dir: Path | None = opt(None, "Default runs/teacher-<dataset>-<teacher>-s<seed>-<time>.", runtime=True,
                               recipe=False)
    resume: bool = opt(False, "Continue the run in --run-dir from its last checkpoint.", runtime=True, recipe=False)
    log: list[str] = log_field()
    # train on these classes only: a class-subset file (CLI) or the names (recipes: "partN" of [classes])
    classes: Path | list[str] | None = opt(None, "Train on these classes only: a file of class names (featcache "
                                                 "split-classes).", cli_type=Path)
