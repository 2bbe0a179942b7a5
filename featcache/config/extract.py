"""`featcache extract`'s options: one field each, carrying its flag (featcache.config.flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.config.common import (
    DEFAULT_SHARD_ROWS,
    cache_dir_field,
    data_root_field,
    dataset_field,
    dataset_options_field,
    device_field,
    stores_field,
    workers_field,
)
from featcache.config.flags import command_line, opt


@dataclass
class ExtractConfig:
    """Everything `featcache extract` takes; each field declares its CLI flag and recipe key (config.flags)."""

    teacher: str = opt(help="Teacher name: resnet50, inceptionv3, nts-net, convnet, run, any torchvision classifier, "
                            "or timm:NAME (featcache[timm]).",
                       short="-t", recipe=False)
    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    split: str = opt("train", "train or test.", recipe=False)
    dataset_options: dict[str, Any] = dataset_options_field(recipe=False)
    weights: str | None = opt(None, "torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a checkpoint path, or "
                                    "'random'.", short="-w", recipe=False)
    num_classes: int | None = opt(None, "Classifier width when a checkpoint's head differs from the architecture "
                                        "default.")
    image_size: int | None = opt(None, "Input side in pixels (default: the view a featcache-trained teacher "
                                       "recorded; your own checkpoint: the images' size when they share one square "
                                       "size; else the teacher's, e.g. 224, 299, 448).")
    resize: int | None = opt(None, "Resize target before the centre crop (default: image size / crop fraction).")
    resize_mode: str | None = opt(None, "shorter (keep aspect) or square.")
    batch_size: int = opt(128, "Images per teacher forward pass.", short="-b")
    workers: int | None = workers_field(recipe=False)
    device: str = device_field(recipe=False)
    precision: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    dtype: str = opt("float16", "Stored feature dtype: float16, float32 or int8 (a float32 scale per row; read back "
                                "as float16).")
    logits_dtype: str = opt("float32", "Stored logits dtype: float32 or float16.")
    shard_rows: int = opt(DEFAULT_SHARD_ROWS, "Rows per HDF5 shard.")
    noise: int = opt(0, "Also cache N random images (TS-Learning's random-image augmentation).")
    noise_seed: int = opt(0, "Seed the random images are regenerated from.")
    seed: int = opt(0, "Seed of random initialisation (--weights random).")
    topk_logits: int | None = opt(None, "Store only each row's k largest logits and their classes (many-class "
                                        "datasets).")
    views: int = opt(1, "K > 1: also cache K-1 augmented views per sample, replayed exactly by distill.")
    view_policy: str | None = opt(None, "rrc-flip (photos) or pad-crop-flip (default for CIFAR-sized images).")
    view_seed: int = opt(0, "Seed of the views' augmentation parameters.")
    blocks: list[str] = opt(factory=list, help="Also cache these intermediate blocks, e.g. layer1,layer2,layer3 (for "
                                               "--method aka).", form="comma")
    pool: int = opt(4, "Block outputs are average-pooled to POOL x POOL.")
    project: int | None = opt(None, "Store the features projected to N dims (PCA fitted on up to 10,000 rows of the "
                                    "split first); ts then regresses the projected features.")
    cache_dir: Path | None = cache_dir_field(recipe=False)
    stores: list[Path] = stores_field(recipe=False)
    force: bool = opt(False, "Redo the extract even if the cache exists.", runtime=True, recipe=False)
    wait: bool = opt(True, "If another process is writing the same cache: wait (default) or exit.", negatable=True,
                     runtime=True, recipe=False)
    channels_last: bool = True  # a layout switch for experiments (library only)

    def command(self) -> str:
        """The CLI command that reproduces this config (recorded in the manifest, shown in hints)."""
        return command_line(self, "extract", positional_first=("teacher",))
