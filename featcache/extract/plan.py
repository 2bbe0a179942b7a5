"""What an extract will do, computed without building the teacher: dataset, transform, weights, the key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featcache.cache.format import (
    FEATURE_DTYPES,
    LOGITS_DTYPES,
    PART_DATA,
    PART_NOISE,
    Manifest,
    make_key,
    projection_identity,
)
from featcache.cache.identity import cache_identity, teacher_identity
from featcache.cache.store import CacheStore
from featcache.config import ExtractConfig  # re-exported: the schema lives in featcache.config
from featcache.datasets import ImageDataset, get_dataset
from featcache.datasets.images import check_target_size
from featcache.errors import (
    ConfigError,
    check_at_least,
    check_choice,
    check_seed,
)
from featcache.models.teachers import Teacher, WeightsInfo, recorded_view, resolve_weights, teacher_entry
from featcache.transforms import RESIZE_MODES, NoiseSpec, TransformSpec, default_transform
from featcache.util import distributed
from featcache.util.runtime import PRECISIONS, check_workers, resolve_device, resolve_precision
from featcache.views import MAX_VIEWS, VIEW_POLICIES, ViewSpec

PROJECT_SAMPLE = 10_000  # rows of the split a projection is fitted on (all of a smaller split)
PROJECT_SEED = 0  # the seed that draws them


def project_sample(rows: int) -> int:
    return min(PROJECT_SAMPLE, rows)


def projection_spec(config: ExtractConfig, dataset: ImageDataset) -> dict[str, Any] | None:
    """What --project adds to the key's identity (None without it): how the projection is fitted."""
    if config.project is None:
        return None
    sample = project_sample(len(dataset))
    if config.project > sample:
        raise ConfigError(f"--project {config.project}: a projection is fitted on {sample:,} rows of the split, so it "
                          "has at most that many dims; lower --project", flag="--project")
    return projection_identity(config.project, sample, PROJECT_SEED)


@dataclass
class ExtractPlan:
    """What an extract will do, computed without building the teacher."""

    config: ExtractConfig
    dataset: ImageDataset
    transform: TransformSpec
    weights: WeightsInfo
    num_classes: int | None
    device: torch.device
    precision: str
    noise: NoiseSpec | None
    identity: dict[str, Any]
    key: str
    views: ViewSpec | None
    directory: Path
    teacher: Teacher | None = None  # a teacher built by the caller (featcache.api); None: built from the registry
    command: str | None = None  # how to reproduce the cache, when not an `featcache extract` command line
    # Where the shards are being written (featcache.extract.workdir): set by extract, renamed to ``directory`` once
    # the cache is complete.
    work: Path | None = None

    @property
    def store(self) -> Path:
        return self.directory.parent


@dataclass
class ExtractResult:
    key: str
    directory: Path
    manifest: Manifest
    reused: bool
    seconds: float = 0.0
    images: int = 0  # images run through the teacher in this call (0 when reused)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows(self) -> int:
        return self.manifest.rows.get(PART_DATA, 0)

    @property
    def noise_rows(self) -> int:
        return self.manifest.rows.get(PART_NOISE, 0)

    @property
    def bytes(self) -> int:
        return self.manifest.total_bytes()


def entry_recipe(entry) -> dict:
    """The input recipe an entry's weights declare (timm's pretrained_cfg); nothing for torchvision's defaults, so
    their transforms (and cache keys) stay what they were."""
    recipe: dict = {}
    if entry.mean is not None and entry.std is not None:
        recipe.update(mean=tuple(entry.mean), std=tuple(entry.std))
    if entry.interpolation != "bilinear":
        recipe["interpolation"] = entry.interpolation
    return recipe


def validate(config: ExtractConfig) -> None:
    """The flags' own checks, without data or a model (recipes run them at plan time, before anything trains)."""
    check_choice("--dtype", config.dtype, FEATURE_DTYPES)
    check_choice("--logits-dtype", config.logits_dtype, LOGITS_DTYPES)
    check_choice("--precision", config.precision, PRECISIONS)
    for flag, value, choices in (("--resize-mode", config.resize_mode, RESIZE_MODES),
                                 ("--view-policy", config.view_policy, VIEW_POLICIES)):
        if value is not None:
            check_choice(flag, value, choices)
    check_at_least("--batch-size", config.batch_size, 1)
    for flag, seed in (("--seed", config.seed), ("--noise-seed", config.noise_seed), ("--view-seed", config.view_seed)):
        check_seed(flag, seed)
    check_at_least("--shard-rows", config.shard_rows, 1)
    check_at_least("--noise", config.noise, 0)
    for flag, size in (("--image-size", config.image_size), ("--resize", config.resize)):
        if size is not None:
            check_target_size(flag, size)
    check_at_least("--views", config.views, 1)
    if config.views > MAX_VIEWS:
        raise ConfigError(f"--views {config.views}: at most {MAX_VIEWS} (each view caches every row of the split "
                          "again)", flag="--views")
    check_workers(config.workers)
    if config.topk_logits is not None:
        check_at_least("--topk-logits", config.topk_logits, 1)
    if config.project is not None:
        check_at_least("--project", config.project, 1)
    if config.blocks and config.dtype == "int8":
        raise ConfigError("--blocks with --dtype int8: blocks are stored in the features' dtype and int8 covers the "
                          "features only; extract blocks with --dtype float16", flag="--blocks")
    if config.blocks:
        check_at_least("--pool", config.pool, 1)
        if len(set(config.blocks)) != len(config.blocks):
            raise ConfigError(f"--blocks {','.join(config.blocks)}: a block is named twice", flag="--blocks")


def _teacher_view(config: ExtractConfig, entry, dataset: ImageDataset, weights: WeightsInfo) -> TransformSpec:
    """The view the teacher sees (docs/guide.md, "Which view a teacher sees"): the flags' when given; else the view a
    featcache-trained teacher recorded; else, for a user's own checkpoint on images of one square size, those images
    as they are; else its recipe (size, crop fraction, resize mode, mean/std), small pre-centred images (a
    ``native_size`` dataset) resized whole."""
    flags = (config.image_size, config.resize, config.resize_mode) != (None, None, None)
    recorded = None if flags else recorded_view(entry, weights)
    if recorded is not None:
        return recorded
    image_size = config.image_size if config.image_size is not None else entry.default_image_size
    resized = bool(config.resize or config.resize_mode)  # the flags say how to resize: the images' size is not asked
    native = None if resized else dataset.native_size
    square = None if resized else dataset.square_size
    if not flags and weights.source == "file" and square is not None and square >= entry.min_image_size:
        image_size = square  # the size a user's teacher of these images was most likely trained at: no zoom
    if image_size < entry.min_image_size:
        raise ConfigError(
            f"--image-size {image_size} is below the {entry.min_image_size} px that {entry.name} accepts"
        )
    return default_transform(
        image_size,
        crop_fraction=entry.crop_fraction,
        resize_mode=config.resize_mode or entry.resize_mode,
        resize=config.resize,
        native_size=native,
        square_size=square,
        **entry_recipe(entry),
    )


def plan_extract(config: ExtractConfig, *, dataset: ImageDataset | None = None, teacher: Teacher | None = None,
                 transform: TransformSpec | None = None, command: str | None = None) -> ExtractPlan:
    """Resolve dataset, transform, weights and the cache key; cheap (no model is built).

    ``dataset`` and ``teacher`` (featcache.api) replace the registry's: the key then covers the teacher's weights
    (their hash) and feature layer and the dataset's identity exactly as for registry models and datasets;
    ``transform`` replaces the view derived from the teacher's recipe and the flags."""
    validate(config)
    entry = teacher.entry if teacher is not None else teacher_entry(config.teacher)
    if dataset is None:
        dataset = get_dataset(config.dataset, config.data_root, config.split, **config.dataset_options)
    if len(dataset) == 0:
        raise ConfigError(f"dataset {config.dataset!r} split {config.split!r} has no samples")
    weights = teacher.weights if teacher is not None else resolve_weights(entry.name, config.weights, config.seed)
    transform = transform or _teacher_view(config, entry, dataset, weights)
    image_size = transform.image_size
    num_classes = teacher.num_classes if teacher is not None else config.num_classes
    if num_classes is None and weights.source == "random":
        num_classes = dataset.num_classes  # a random teacher gets a head for this dataset
    device = distributed.local_device(resolve_device(config.device))
    precision = resolve_precision(config.precision, device)
    noise = NoiseSpec(config.noise, config.noise_seed, image_size) if config.noise else None
    views = None
    if config.views != 1:
        policy = config.view_policy or ("pad-crop-flip" if dataset.native_size else "rrc-flip")
        views = ViewSpec(config.views, policy, config.view_seed)
    identity = cache_identity(
        teacher=teacher_identity(entry.name, weights.identity(), num_classes,
                                 teacher.feature_layer if teacher is not None else "penultimate", image_size),
        dataset=dataset.identity(), transform=transform.to_dict(), dtype=config.dtype,
        logits_dtype=config.logits_dtype, precision=precision, noise=noise.to_dict() if noise else None,
        topk_logits=config.topk_logits, views=views.to_dict() if views else None,
        blocks={"names": list(config.blocks), "pool": config.pool} if config.blocks else None,
        projection=projection_spec(config, dataset),
    )
    key = make_key(identity, entry.name, dataset.name, dataset.split)
    directory = CacheStore(config.cache_dir, config.stores).path(key)
    return ExtractPlan(
        config=config,
        dataset=dataset,
        transform=transform,
        weights=weights,
        num_classes=num_classes,
        device=device,
        precision=precision,
        noise=noise,
        identity=identity,
        key=key,
        directory=directory,
        views=views,
        teacher=teacher,
        command=command,
    )
