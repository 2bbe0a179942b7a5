"""What a distill run is, before it trains: the checked config, datasets, caches, transform, student and method.

``setup(config)`` resolves everything a run needs (and refuses what cannot work) without starting the loop;
``featcache.distill.loop`` trains what it returns (with the parts ``featcache.distill.engine`` builds).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featcache.cache.format import PART_DATA
from featcache.cache.leases import Lease
from featcache.cache.reader import CONTENT_CHECKS
from featcache.cache.store import CacheStore
from featcache.config import DistillConfig
from featcache.datasets import ImageDataset, get_dataset
from featcache.datasets.base import check_disjoint, check_same_classes, check_trainable
from featcache.datasets.images import check_target_size
from featcache.distill.labels import LabelSubset, Sampling, check_spec, select
from featcache.distill.loader import MODES, SHUFFLES
from featcache.distill.methods import Method, MethodParams, get_method
from featcache.distill.optim import OPTIMIZERS, SCHEDULES
from featcache.distill.placement import Budget, resident_fits
from featcache.distill.resolve import TeacherData, resolve_teachers, with_data
from featcache.errors import ConfigError, check_at_least, check_choice, check_seed
from featcache.runs.loggers import check_loggers
from featcache.transforms import AUGMENTS, Augment, TransformSpec, default_transform
from featcache.util import distributed
from featcache.util.progress import Reporter
from featcache.util.runtime import (
    PRECISIONS,
    check_workers,
    parse_bytes,
    resolve_device,
    resolve_precision,
)

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass
class Setup:
    """Everything a run needs, resolved from a DistillConfig (shared by distill and eval)."""

    config: DistillConfig
    train: ImageDataset
    test: ImageDataset
    caches: list
    transform: TransformSpec
    model: torch.nn.Module  # what is trained: the student (distill) or the teacher being fine-tuned (train-teacher)
    method: Method
    device: torch.device
    precision: str
    student_kwargs: dict[str, Any]  # how load_run rebuilds the model: create_student(**kw) or, for kind "teacher",
    kind: str = "student"  # create_teacher(**kw) (featcache train-teacher)
    labels: LabelSubset | None = None  # the training labels the run may read (None: all)
    data_from: TeacherData | None = None  # the cache whose manifest gave the data (no --dataset), else None


def labels_of(config: DistillConfig, method_cls, train: ImageDataset) -> LabelSubset:
    """The labelled subset of the training split (``--labels``, ``--unlabeled``), checked against the method."""
    if config.unlabeled and config.labels != "all":
        raise ConfigError(f"--unlabeled and --labels {config.labels}: give one (--unlabeled is --labels none)",
                          flag="--labels")
    spec = "none" if config.unlabeled or not method_cls.uses_labels else config.labels
    if not method_cls.uses_labels and config.labels not in ("all", "none"):
        raise ConfigError(f"--labels {config.labels}: --method {method_cls.name} reads no label", flag="--labels")
    subset = select(spec, train.targets, train.sample_ids, train.num_classes)
    if method_cls.uses_labels and subset.count == 0:
        said = "--unlabeled" if config.unlabeled else f"--labels {spec}"
        raise ConfigError(f"{said}: --method {method_cls.name} needs labels; use --method aka")
    if config.labeled_share is not None and (subset.complete or subset.count == 0):
        raise ConfigError("--labeled-share mixes labelled and unlabelled samples: give --labels a subset "
                          "(e.g. 300/class)", flag="--labeled-share")
    return subset


def sampling_of(s: Setup) -> Sampling | None:
    """How epochs visit the split: a labelled subset alone (no teacher term to train the others), or a fixed share of
    every batch, or (None) every sample once."""
    if s.labels is None or s.labels.complete or s.labels.count == 0:
        return None
    only = not s.caches  # ce, or any run without a teacher: the unlabelled samples would add nothing
    if not only and s.config.labeled_share is None:
        return None
    return Sampling(s.labels.mask, s.config.labeled_share, only_labeled=only)


def _transform_for(config: DistillConfig, caches: list, train: ImageDataset, student_entry) -> TransformSpec:
    if caches:
        specs = [c.manifest.transform for c in caches]
        if any(s != specs[0] for s in specs[1:]) and not config.allow_inconsistent:
            sizes = ", ".join(f"{c.key}: {c.manifest.transform.image_size} px" for c in caches)
            raise ConfigError(
                f"the teachers' caches were extracted with different transforms ({sizes}); the student can only see "
                "one view: extract them with the same --image-size/--resize, or pass --allow-inconsistent to train "
                "on the first teacher's view"
            )
        spec = specs[0]
        if config.image_size is not None and config.image_size != spec.image_size:
            raise ConfigError(
                f"--image-size {config.image_size} differs from the {spec.image_size} px the teacher saw "
                f"(cache {caches[0].key}); drop --image-size to use the cache's view"
            )
        return spec
    size = config.image_size or train.native_size or (student_entry.default_image_size if student_entry else 224)
    # The same rule as extract: small pre-centred images (CIFAR) are resized whole at any size, never cropped, so a
    # run without a teacher sees the view a teacher's cache at that size would describe.
    return default_transform(size, native_size=train.native_size, square_size=train.square_size)


def setup(config: DistillConfig, lease: Lease | None = None, data_from: TeacherData | None = None,
          reporter: Reporter | None = None) -> Setup:
    """``lease``: the caller's Lease, which the teachers' caches join as soon as they are found (before a shard is
    read). A config without a dataset trains on its teachers' data (resolve.with_data; ``data_from``: the cache that
    gave it when the caller has resolved it already)."""
    from featcache.models.registry import get_entry

    config = config.resolved()  # --augment auto, --epochs unset: what this run does (distill resolved them already)
    method_cls = get_method(config.resolved_method())
    method_cls.check_teachers(len(config.teachers))
    store = CacheStore(config.cache_dir, config.stores, offline=config.offline, reporter=reporter)  # shows a pull
    if config.dataset is None:
        config, data_from = with_data(config, store)
    train, test = _splits(config)
    caches = resolve_teachers(config.teachers, train, store) if config.teachers else []
    if lease is not None:
        lease.add(caches)
    for c in caches:  # before anything is built: a stale cache is the first thing to hear about
        c.check_dataset(train)
        c.check_content(train, config.content_check, seed=config.seed)
    test, head = _head(config, method_cls, test, train)
    _check_method(config, method_cls, caches, train)
    transform = _transform_for(config, caches, train, get_entry("student", config.student))
    labels = labels_of(config, method_cls, train)
    params = MethodParams.from_config(config, found=method_cls.prepare(caches, train, head, config))
    student, student_kwargs = _student(config, method_cls, params, [c.num_features for c in caches], head, transform)
    method = method_cls(student, [c.num_features for c in caches], len(head), params)
    device = distributed.local_device(resolve_device(config.device))
    precision = resolve_precision(config.precision, device)
    return Setup(config, train, test, caches, transform, student, method, device, precision, student_kwargs,
                 labels=labels, data_from=data_from)


def _splits(config: DistillConfig) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits, checked to be the same classes, disjoint, and trainable."""
    assert config.dataset is not None  # resolve.with_data has chosen it
    train = get_dataset(config.dataset, config.data_root, "train", **config.dataset_options)
    test = get_dataset(config.dataset, config.data_root, "test", **config.dataset_options)
    check_same_classes(train, test, config.dataset)
    check_disjoint(train, test)
    check_trainable(train)
    return train, test


def _head(config: DistillConfig, method_cls, test: ImageDataset, train: ImageDataset):
    """The classes the student's logits cover (--classes: part of them, an aka component net) and the test split
    evaluated over them."""
    if config.classes is None:
        return test, list(train.classes)
    if method_cls.uses_labels:
        raise ConfigError("--classes: a head over part of the classes trains without labels; use --method aka")
    if len(config.classes) < 2:  # a one-class head is right on every image: a 100 % that means nothing
        raise ConfigError(f"--classes lists {len(config.classes)} class ({', '.join(config.classes)}); a head over "
                          "one class is 100 % accurate by construction: list at least 2 classes", flag="--classes")
    from featcache.datasets.base import ClassSubset

    return ClassSubset(test, config.classes), list(config.classes)  # evaluated on its own task


def _check_method(config: DistillConfig, method_cls, caches: list, train: ImageDataset) -> None:
    """What the method asks of the caches, and the fixed-teacher rule for augmentation."""
    if method_cls.needs_teacher_classes:
        for c in caches:
            if c.manifest.teacher.classes != list(train.classes):
                raise ConfigError(
                    f"--method {method_cls.name} needs teacher logits over the dataset's {train.num_classes} classes, "
                    f"but cache {c.key} covers {c.manifest.teacher.num_classes} "
                    f"({c.manifest.teacher.classes_source} classes); fine-tune the teacher on {train.name} first"
                )
    if config.augment != "none" and caches and not config.allow_inconsistent:
        raise ConfigError(
            f"--augment {config.augment}: the cached teacher rows describe the un-augmented view only; augmenting the "
            "student's input breaks the teacher/student correspondence. Pass --allow-inconsistent to train in this "
            "'fixed teacher' setting anyway (see docs/methods.md)"
        )


def _student(config: DistillConfig, method_cls, params: MethodParams, dims: list[int], head: list[str],
             transform: TransformSpec):
    """The student network (its feature layer as the method asks) and the kwargs that rebuild it (config.json)."""
    from featcache.models.students import create_student, student_block_channels

    options = method_cls.student_options(dims, params)
    if config.feature_dim is not None:
        if "feature_dim" in options and options["feature_dim"] != config.feature_dim:
            raise ConfigError(
                f"--feature-dim {config.feature_dim}: --method {method_cls.name} adapts the feature layer to the "
                f"teacher's {options['feature_dim']} dims; drop --feature-dim or use --method ts-translator"
            )
        options["feature_dim"] = config.feature_dim
    student_kwargs = {
        "name": config.student, "num_classes": len(head), "small_input": config.small_input,
        "image_size": transform.image_size, **options,
    }
    if config.zero_init_residual:  # (only then: the kwargs of runs without it stay what they were)
        student_kwargs["zero_init_residual"] = True
    student = create_student(**student_kwargs)
    if config.student_blocks:
        params.found.student_block_channels = student_block_channels(student, config.student_blocks,
                                                                     transform.image_size)
    return student, student_kwargs


def _positive(flag: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a finite number > 0, got {value}", flag=flag)


BN_RECALIBRATE_MAX = 65_536


def validate(config: DistillConfig) -> None:
    config = config.resolved()  # the defaults resolved per run are checked as the run would use them
    check_choice("--optimizer", config.optimizer, tuple(OPTIMIZERS))
    check_choice("--schedule", config.schedule, tuple(SCHEDULES))
    check_at_least("--epochs", config.resolved_epochs(), 1)
    check_at_least("--warmup-epochs", config.warmup_epochs or 0, 0)  # (resolved: never None here)
    check_seed("--seed", config.seed)
    check_at_least("--batch-size", config.batch_size or 0, 1)
    check_at_least("--step-size", config.step_size, 1)
    check_at_least("--noise-per-batch", config.noise_per_batch, 0)
    check_at_least("--bn-recalibrate", config.bn_recalibrate, 0)
    if config.bn_recalibrate > BN_RECALIBRATE_MAX:  # the sample is held decoded on the device
        raise ConfigError(f"--bn-recalibrate {config.bn_recalibrate}: at most {BN_RECALIBRATE_MAX:,} images (a few "
                          "thousand estimate the statistics; the sample is held decoded in memory)",
                          flag="--bn-recalibrate")
    check_choice("--compile", config.compile, COMPILE_MODES)
    check_choice("--content-check", config.content_check, CONTENT_CHECKS)
    check_choice("--precision", config.precision, PRECISIONS)
    _positive("--lr", config.lr)
    _positive("--translator-lr", config.translator_lr)
    _positive("--gamma", config.gamma)
    if not (math.isfinite(config.momentum) and 0 <= config.momentum < 1):
        raise ConfigError(f"--momentum must lie in [0, 1), got {config.momentum}", flag="--momentum")
    decay = config.weight_decay if config.weight_decay is not None else 0.0
    if not (math.isfinite(decay) and decay >= 0):
        raise ConfigError(f"--weight-decay must be a finite number >= 0, got {config.weight_decay}",
                          flag="--weight-decay")
    if config.image_size is not None:
        check_target_size("--image-size", config.image_size)
    if config.feature_dim is not None:
        check_at_least("--feature-dim", config.feature_dim, 1)
    check_workers(config.workers)
    # Checked here even when this run would not use them (resident, RAM tables): a typo fails now, not next time.
    check_choice("--shuffle", config.shuffle, SHUFFLES)
    check_choice("--cache-mode", config.cache_mode, MODES)
    parse_bytes(config.cache_ram)
    check_spec(config.labels, config.labeled_share)
    MethodParams.from_config(config).check()
    Augment(config.augment)  # validates the name
    check_loggers(config.log)  # known or importable, and their package installed (before anything trains)


def default_run_dir(config: DistillConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.dataset}-{config.student}-{config.resolved_method()}-s{config.seed}-{stamp}"


# -- where the split lives (featcache.distill.placement decides from the budget) -----------------------------------


def resident_need(s: Setup, caches: list) -> int:
    """Bytes a resident split holds: its uint8 images and every teacher's data rows."""
    size = s.transform.image_size
    return len(s.train) * 3 * size * size + sum(c.num_rows(PART_DATA) * c.row_bytes() for c in caches)


def resident_default(config: DistillConfig, s: Setup, caches: list, budget: Budget | None = None) -> bool:
    """--resident when not given: on the CPU (where DataLoader workers compete with the training threads for the
    same cores) hold the split in RAM when it fits the budget (featcache.distill.placement.resident_fits), the flags
    ask for nothing only streaming gives (cached views, --cache-mode disk, block shuffle, --workers above 0) and the
    augmentation has a batched form; never on a GPU, whose host path is left as it is."""
    if s.device.type != "cpu" or (config.workers or 0) > 0:
        return False
    if config.cache_mode == "disk" or config.shuffle not in ("auto", "full") or config.augment not in AUGMENTS:
        return False
    if config.views and any(c.manifest.views for c in caches):
        return False
    return resident_fits(resident_need(s, caches), budget or Budget.of(config.cache_ram))
