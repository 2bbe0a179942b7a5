"""One schema per stage: the configs of extract, distill and train-teacher, and the flags they declare.

Each field carries its CLI flag, help and recipe rules (featcache.flags); the CLI, recipe validation and the
reproducing command lines are derived from here. Torch-free, so that ``featcache --help`` starts fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from featcache.flags import command_line, opt

DEFAULT_SHARD_ROWS = 4096  # rows per HDF5 shard (extract --shard-rows)

# Kept literal so that --help needs no torch import; tests/test_cli.py checks they name every registered student and
# method.
STUDENTS_HELP = ("alexnet, convnet_small, inceptionv3, lenet5, mobilenetv2, mobilenetv3, mobilenetv3_small, resnet18 "
                 "(`featcache students` describes them), or timm:NAME with featcache[timm].")

# Shared stores: searched after the personal one for every cache a command reads; recipes set them in [pipeline]
# stores = [...], `featcache run` and the cache commands take the same --store.
STORES_HELP = "A shared cache store searched after the personal one (repeat; also FEATCACHE_PATH=/a:/b)."

METHODS_HELP = "ce, kd, fitnets, ts, ts-translator, multi, aka (default: ts with a teacher, ce without)."


@dataclass
class ExtractConfig:
    """Everything `featcache extract` takes; each field declares its CLI flag and recipe key (featcache.flags)."""

    teacher: str = opt(help="Teacher name: resnet50, inceptionv3, nts-net, convnet, run, any torchvision classifier, "
                            "or timm:NAME (featcache[timm]).",
                       short="-t", recipe=False)
    dataset: str = opt("synthetic", "cifar10, cifar100, cub200, sod, folder or synthetic.", short="-d", recipe=False)
    data_root: Path | None = opt(None, "Directory holding the dataset in its official layout.", recipe=False)
    split: str = opt("train", "train or test.", recipe=False)
    dataset_options: dict[str, Any] = opt(
        factory=dict, help="Extra dataset option key=value (repeatable), e.g. num_train=500 for synthetic.",
        name="--dataset-opt", short="-o", form="keyvalue", recipe=False)
    weights: str | None = opt(None, "torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a checkpoint path, or "
                                    "'random'.", short="-w", recipe=False)
    num_classes: int | None = opt(None, "Classifier width when a checkpoint's head differs from the architecture "
                                        "default.")
    image_size: int | None = opt(None, "Input side in pixels (default: the teacher's, e.g. 224, 299, 448).")
    resize: int | None = opt(None, "Resize target before the centre crop (default: image size / crop fraction).")
    resize_mode: str | None = opt(None, "shorter (keep aspect) or square.")
    batch_size: int = opt(128, short="-b")
    workers: int | None = opt(None, "DataLoader worker processes (default: min(8, cores) on a GPU, 0 on a small CPU).",
                              runtime=True, recipe=False)
    device: str = opt("auto", "auto, cpu, cuda, cuda:N.", recipe=False)
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
    cache_dir: Path | None = opt(None, "Cache store (default $FEATCACHE_HOME or ~/.cache/featcache).", runtime=True,
                                 recipe=False)
    stores: list[Path] = opt(factory=list, help=STORES_HELP, name="--store", form="repeat", runtime=True,
                             recipe=False)
    force: bool = opt(False, "Redo the extract even if the cache exists.", runtime=True, recipe=False)
    wait: bool = opt(True, "If another process is writing the same cache: wait (default) or exit.", negatable=True,
                     runtime=True, recipe=False)
    channels_last: bool = True  # a layout switch for experiments (library only)

    def command(self) -> str:
        """The CLI command that reproduces this config (recorded in the manifest, shown in hints)."""
        return command_line(self, "extract", positional_first=("teacher",))


@dataclass
class DistillConfig:
    """Everything `featcache distill` takes; each field declares its CLI flag and recipe key (featcache.flags)."""

    student: str = opt("mobilenetv3", STUDENTS_HELP, short="-s", recipe=False)
    dataset: str = opt("synthetic", short="-d", recipe=False)
    data_root: Path | None = opt(None, recipe=False)
    dataset_options: dict[str, Any] = opt(factory=dict, help="Dataset option key=value (repeatable).",
                                          name="--dataset-opt", short="-o", form="keyvalue", recipe=False)
    teachers: list[str] = opt(factory=list, help="A cached teacher: NAME (looked up for this dataset), KEY (or unique "
                                                 "prefix) or NAME:KEY. Repeat for several.",
                              name="--teacher", short="-t", form="repeat", recipe=False)
    method: str | None = opt(None, METHODS_HELP, short="-m", recipe=False)
    epochs: int = opt(30)
    batch_size: int = opt(128, short="-b")
    lr: float = opt(1e-3)
    translator_lr: float | None = opt(None, "Learning rate of the translator optimizer (default: --lr).")
    optimizer: str = opt("adam", "adam, adamw or sgd.")
    momentum: float = opt(0.9)
    weight_decay: float = opt(0.0)
    schedule: str = opt("cosine", "cosine, step or none.")
    step_size: int = opt(50, "step schedule: epochs between decays.")
    gamma: float = opt(0.1, "step schedule: decay factor.")
    lambda_xent: float = opt(1.0)
    lambda_mse: float = opt(1.0)
    lambda_kd: float = opt(1.0)
    temperature: float = opt(4.0, "kd: softmax temperature.")
    translator: str = opt("linear", "ts-translator/multi: linear or upsample.")
    hint_epochs: int | None = opt(None, "fitnets: epochs of the hint stage (default: --epochs).")
    feature_dim: int | None = opt(None, "Width of the student's feature layer (ts sets it to the teacher's).")
    small_input: bool | None = opt(None, "CIFAR-style stems (default: when images are <= 64 px).", negatable=True)
    image_size: int | None = opt(None, "Without a teacher: input size (default: the dataset's native size or 224).")
    augment: str = opt("none", "none, flip, pad-crop-flip (with teachers only with --allow-inconsistent).")
    allow_inconsistent: bool = opt(False, "Allow augmentation/views the cached rows do not describe (the "
                                          "fixed-teacher setting).")
    noise_per_batch: int = opt(0, "Add N cached random images per batch (TS-Learning augmentation).")
    seed: int = opt(0, recipe=False)
    device: str = opt("auto", runtime=True)
    precision: str = opt("auto")
    workers: int | None = opt(None, runtime=True)
    cache_dir: Path | None = opt(None, runtime=True, recipe=False)
    stores: list[Path] = opt(factory=list, help=STORES_HELP, name="--store", form="repeat", runtime=True,
                             recipe=False)
    cache_ram: str = opt("auto", "RAM budget for teacher tables, e.g. 8G (auto: half of available).", runtime=True)
    cache_mode: str = opt("auto", "auto, ram or disk (out of core).", runtime=True)
    shuffle: str = opt("auto", "auto, full, block or none.")
    run_dir: Path | None = opt(None, "Where metrics and checkpoints go (default "
                                     "runs/<dataset>-<student>-<method>-s<seed>-<time>).", runtime=True, recipe=False)
    resume: bool = opt(False, "Continue the run in --run-dir from its last checkpoint.", runtime=True, recipe=False)
    channels_last: bool = True  # a layout switch for experiments (library only)
    # Images, labels and rows held on the device; None = auto: on the CPU when the split fits (see resident_default).
    resident: bool | None = opt(None, "Hold images, labels and teacher rows on the device, augmentation there too "
                                      "(default: on the CPU when the split fits in RAM; never on a GPU unless asked).",
                                negatable=True, runtime=True)
    compile: str = opt("none", "torch.compile the training step: none, default, reduce-overhead (CUDA graphs), "
                               "max-autotune.", runtime=True)
    unlabeled: bool = opt(False, "Never read the training labels (aka; implied by it). The same as --labels none.")
    labels: str = opt("all", "Which training labels the run reads: all, none, N/class (the first N of each class), a "
                             "fraction in (0, 1) of each class, or ids:FILE. The others train through the teacher "
                             "terms only (docs/methods.md).")
    labeled_share: float | None = opt(None, "Part of every batch drawn from the labelled samples (default: the "
                                            "natural mix, each sample once per epoch).")
    aka_dim: int | None = opt(None, "aka: width of the aligned features (default: the student's).")
    tag: str = opt("", "A label for reports and run-directory names (recipes set it per [[distill]] block).",
                   cli=False, recipe=False)
    # The student's head covers these classes only (an aka component net; set by amalgamate, never by a user).
    classes: list[str] | None = opt(None, cli=False, recipe=False)
    student_blocks: list[str] = opt(factory=list, help="aka: student body modules matched, in order, to the teachers' "
                                                       "cached --blocks (e.g. layer2,layer3).", form="comma")
    views: bool = opt(True, "Replay the caches' augmented views (extract --views), one per sample per epoch.",
                      negatable=True)
    content_check: str = opt("sample", "Re-hash images against the digests the caches recorded: sample (256 images, "
                                       "default), full or off.")
    # Run the caches' teachers on every batch instead of reading their rows: the losslessness comparison only (it
    # costs what the cache saves); the caches still name the teachers and are checked against the dataset.
    online: bool = opt(False, "Run the caches' teachers on every batch instead of reading their rows (to compare "
                              "with the cache; costs what the cache saves).")

    def resolved_method(self) -> str:
        return self.method or ("ts" if self.teachers else "ce")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, list):
                d[k] = [str(x) if isinstance(x, Path) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("data_root", "cache_dir", "run_dir"):
            if d.get(k) is not None:
                d[k] = Path(d[k])
        if d.get("stores"):
            d["stores"] = [Path(p) for p in d["stores"]]
        return cls(**d)


@dataclass
class TeacherConfig:
    """Everything `featcache train-teacher` takes; each field declares its CLI flag and recipe key."""

    teacher: str = opt(help="A registered teacher or torchvision classifier.", short="-t", recipe=False)
    dataset: str = opt("synthetic", short="-d", recipe=False)
    data_root: Path | None = opt(None, recipe=False)
    # recipes may train the teacher on a larger set of the same classes (e.g. more synthetic samples)
    dataset_options: dict[str, Any] = opt(factory=dict, help="Dataset option key=value (repeatable).",
                                          name="--dataset-opt", short="-o", form="keyvalue")
    init: str = opt("auto", "auto (ImageNet weights if in the torch hub cache, else random), imagenet, random, or a "
                            "checkpoint path.")
    image_size: int | None = opt(None, "Default: the view `extract` uses for this teacher and dataset.")
    epochs: int = opt(30)
    batch_size: int = opt(64, short="-b")
    lr: float | None = opt(None, "Default 1e-4 from ImageNet weights, 1e-3 from scratch.")
    optimizer: str = opt("adam")
    weight_decay: float = opt(0.0)
    schedule: str = opt("cosine")
    augment: str = opt("flip", "none, flip or pad-crop-flip (teachers train on augmented views).")
    seed: int = opt(0)
    device: str = opt("auto", runtime=True, recipe=False)
    precision: str = opt("auto")
    workers: int | None = opt(None, runtime=True, recipe=False)
    run_dir: Path | None = opt(None, "Default runs/teacher-<dataset>-<teacher>-s<seed>-<time>.", runtime=True,
                               recipe=False)
    resume: bool = opt(False, runtime=True, recipe=False)
    # train on these classes only: a class-subset file (CLI) or the names (recipes: "partN" of [classes])
    classes: Path | list[str] | None = opt(None, "Train on these classes only: a file of class names (featcache "
                                                 "split-classes).", cli_type=Path)
