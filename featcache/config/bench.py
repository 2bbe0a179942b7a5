"""The options of the `featcache bench` commands (extract, distill, join, trust, store, scale, peers): fields
carrying their flags, like every command's (the shared ones — dataset, data root, -o, device, workers — are common.py's
declarations, with their help texts). A bench is never a recipe stage, so no field is a recipe's."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.config.common import data_root_field, dataset_field, dataset_options_field, device_field, workers_field
from featcache.config.flags import opt

bench_opt = functools.partial(opt, recipe=False)

JSON_HELP = "Also write the results as JSON."


def _json_out(help: str = JSON_HELP):
    return bench_opt(None, help)


@dataclass
class BenchExtractConfig:
    """`featcache bench extract`: extract images/s vs the bare teacher forward pass."""

    teachers: list[str] = bench_opt(factory=list, help="Repeat for several (default resnet50); one row each.",
                                    name="--teacher", short="-t", form="repeat")
    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    split: str = bench_opt("train", "train or test.")
    dataset_options: dict[str, Any] = dataset_options_field(recipe=False)
    weights: str = bench_opt("random", "Weights do not change the speed; random needs no files.", short="-w")
    image_size: int | None = bench_opt(None, "Input side in pixels (default: the teacher's or student's).")
    batch_size: int = bench_opt(256, "Images per forward pass.", short="-b")
    workers: int | None = workers_field(recipe=False)
    device: str = device_field(recipe=False)
    precision: str = bench_opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    iters: int = bench_opt(20, "Timed forward iterations for the limit (at least 3 s of them).")
    rounds: int = bench_opt(3, "Interleaved rounds of forward + extract; medians are shown.")
    min_seconds: float = bench_opt(3.0, "Time the bare forward for at least this long.")
    json_out: Path | None = _json_out(JSON_HELP)


@dataclass
class BenchDistillConfig:
    """`featcache bench distill`: student training images/s and peak memory, alone and with cached or online
    teachers, each next to a bare PyTorch loop."""

    student: str = bench_opt("mobilenetv3", "The student trained (a registry name).", short="-s")
    teachers: list[str] = bench_opt(
        factory=list, help="Repeat for several (default resnet50; none: the student alone); extracted into a scratch "
                           "store first (not timed).", name="--teacher", short="-t", form="repeat")
    method: str = bench_opt("ts", "The method with one teacher (several: multi).", short="-m")
    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    dataset_options: dict[str, Any] = dataset_options_field(recipe=False)
    weights: str = bench_opt("random", "Teacher weights; they do not change the speed.", short="-w")
    image_size: int | None = bench_opt(None, "Input side in pixels (default: the teacher's or student's).")
    batch_size: int = bench_opt(128, "Images (or rows) per batch.", short="-b")
    workers: int | None = workers_field(recipe=False)
    device: str = device_field(recipe=False)
    precision: str = bench_opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    steps: int = bench_opt(50, "Timed training steps per setting and round.")
    warmup: int = bench_opt(10, "Untimed steps before timing.")
    rounds: int = bench_opt(3, "Interleaved rounds (every setting once per round); medians are shown.")
    resident: bool | None = bench_opt(None, "Device-resident images and rows (default as distill's).", negatable=True)
    compile: str = bench_opt("none", "torch.compile mode of the training step.")
    e2e_epochs: int = bench_opt(2, "Each round, also train the student alone with the real distill for N epochs "
                                   "(set-up, evaluation, checkpoints included) next to the bare loop; 0: skip.")
    json_out: Path | None = _json_out(JSON_HELP)


@dataclass
class BenchJoinConfig:
    """`featcache bench join`: rows/s of the feature join, each next to its limit, and the naive peers."""

    rows: int = bench_opt(100_000, "Rows in the scratch cache.")
    dim: int = bench_opt(2048, "Feature width (fp16).")
    classes: int = bench_opt(10, "Logits per row (float32).")
    batch_size: int = bench_opt(128, "Images (or rows) per batch.", short="-b")
    pt_files: int = bench_opt(5000, "Per-sample .pt files written for that anchor.")
    limit: float = bench_opt(20.0, "Seconds at most per method.")
    scratch: Path | None = bench_opt(None, "Where to write the scratch files (default: the temp dir).")
    cold: bool = bench_opt(False, "Drop the shards from the page cache before each disk measurement.")
    json_out: Path | None = _json_out()


@dataclass
class BenchTrustConfig:
    """`featcache bench trust`: the cost of the trust checks as a fraction of the extract's time."""

    teacher: str = bench_opt("resnet18", "The teacher whose extract is timed.", short="-t")
    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    split: str = bench_opt("train", "train or test.")
    dataset_options: dict[str, Any] = dataset_options_field(recipe=False)
    image_size: int | None = bench_opt(None, "Input side in pixels (default: the teacher's or student's).")
    batch_size: int = bench_opt(128, "Images (or rows) per batch.", short="-b")
    workers: int | None = workers_field(recipe=False)
    device: str = device_field(recipe=False)
    repeats: int = bench_opt(3, "Timings per check (the median is shown).")
    json_out: Path | None = _json_out()


@dataclass
class BenchStoreConfig:
    """`featcache bench store`: `cache export` / `cache import` MB/s next to shutil.copyfile, `cache pull` from an
    HTTP mirror next to a plain download, and `cache ls`."""

    size_mib: int = bench_opt(512, "Size of the synthetic cache exported and imported.")
    repeats: int = bench_opt(3, "Rounds (copy, export, import each); medians are shown.")
    keys: int = bench_opt(1000, "Tiny caches listed by the `cache ls` timing.")
    pull: bool = bench_opt(True, "Also time `cache pull` of the cache from a local HTTP mirror next to a plain urllib "
                                 "download of its files.")
    distill_images: int = bench_opt(2000, "Also time a 1-epoch distill from a cache on the HTTP mirror, pulled on use "
                                          "vs pulled first, on this many synthetic images (0: not timed).")
    scratch: Path | None = bench_opt(
        None, "Where to write the scratch store (default: the temp dir; its disk is measured).")
    json_out: Path | None = _json_out(JSON_HELP)


@dataclass
class BenchScaleConfig:
    """`featcache bench scale`: an ImageNet-sized synthetic cache, each of its steps next to its limit."""

    store: Path = bench_opt(help="Where the synthetic cache is written (and kept with --keep).")
    rows: int = bench_opt(1_280_000, "Rows per view (ImageNet-1k's train split: 1,281,167).")
    dim: int = bench_opt(2048, "Feature width.")
    classes: int = bench_opt(10, "Logits per row (float32).")
    views: int = bench_opt(1, "K: the data part plus K-1 cached views.")
    dtype: str = bench_opt("float16", "Features: float16, float32 or int8 (per-row scales).")
    seed: int = bench_opt(0, "Seed of the synthetic rows.")
    only: list[str] = bench_opt(
        factory=list, help="Repeat to run only these steps: write, join, ram, verify, commands, reuse, store.",
        form="repeat")
    batch_size: list[int] = bench_opt(factory=list, help="Repeat (default 128 and 256).", short="-b", form="repeat")
    repeats: int = bench_opt(3, "Rounds of every timed step.")
    cold: bool = bench_opt(True, "Also measure with the shards' pages dropped.", off="--warm-only")
    kill_at: float = bench_opt(0.5, "Write a missing cache in a child killed (-9) once this share of its shards is "
                                    "recorded, then resume it here; 0: write it directly.")
    keep: bool = bench_opt(False, "Keep the cache afterwards (default: remove it).", off="--remove")
    json_out: Path | None = _json_out()


@dataclass
class BenchPeersConfig:
    """`featcache bench peers`: featcache next to torchdistill (featcache[peers]) on one distillation task."""

    data_root: Path | None = bench_opt(
        None, "A folder holding train/ and test/ class folders of images, e.g. CIFAR-10 as JPEGs (cifar10-jpg/).")
    images: int = bench_opt(5000, "Training images taken from it, spread evenly over the classes.")
    test_images: int = bench_opt(1000, "Test images of the common evaluation.")
    epochs: int = bench_opt(5, "Epochs of every student run.")
    repeats: int = bench_opt(3, "Interleaved rounds of all the arms (seed = round).")
    students: int = bench_opt(5, "S of the total 'one teacher, then S students'.")
    threads: int = bench_opt(1, "CPU threads of every run's process.")
    teacher_checkpoint: Path | None = bench_opt(
        None, "The resnet18 teacher's weights (a state dict with the dataset's classes, e.g. train-teacher's "
              "teacher.pt); default: a seeded random init (the speeds hold, accuracies stay near chance).")
    view_samples: int = bench_opt(64, "Samples of the augmented-view check (0: skip it).")
    views: int = bench_opt(4, "featcache's extract --views K in that check.")
    scratch: Path | None = bench_opt(None, "Where the runs write (default: a temporary folder, removed after).")
    keep: bool = bench_opt(False, "Keep the scratch folder (runs, logs, caches) afterwards.")
    json_out: Path | None = _json_out()
