"""The `featcache` command line. Thin: parse flags, call the library, render with rich, map errors to one line.

User mistakes (FeatcacheError) print ``error: <one line>`` and exit with status 2; set FEATCACHE_DEBUG=1 for the
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from featcache.errors import ConfigError, FeatcacheError

app = typer.Typer(
    help="Run a teacher once, cache its features, distil many students from the cache.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
cache_app = typer.Typer(help="List, inspect, verify and remove feature caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
bench_app = typer.Typer(help="Measure throughput against its limit on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

EXIT_USER_ERROR = 2


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn FeatcacheError into one red line and exit status 2 (the huggingface_hub CLI pattern)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeatcacheError as exc:
            if os.environ.get("FEATCACHE_DEBUG") == "1":
                raise
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: re-run the same command to resume where it stopped")
            raise typer.Exit(130) from None

    return wrapper


def _main_rank() -> bool:
    """False on ranks other than 0 of a torchrun job (they stay quiet)."""
    from featcache import distributed

    return distributed.context().is_main


def parse_options(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they look like it (numbers, true/false), else strings."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected key=value")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


# Kept literal so that --help needs no torch import; tests/test_cli.py checks it names every registered student.
STUDENTS_HELP = ("alexnet, convnet_small, inceptionv3, lenet5, mobilenetv2, mobilenetv3, mobilenetv3_small, resnet18 "
                 "(`featcache students` describes them).")


# -- extract -------------------------------------------------------------------------------------------------------


@app.command()
@user_errors
def extract(
    teacher: str = typer.Option(..., "--teacher", "-t", help="Teacher name: resnet50, inceptionv3, nts-net or any torchvision classifier."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d", help="cifar10, cifar100, cub200, sod, folder or synthetic."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Directory holding the dataset in its official layout."),
    split: str = typer.Option("train", "--split", help="train or test."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="Pin your own train/test split (sod): lines '<split> <id>'."),
    download: bool = typer.Option(False, "--download", help="Download the dataset where supported (cifar) and the network allows."),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o", help="Extra dataset option key=value (repeatable), e.g. num_train=500 for synthetic."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a checkpoint path, or 'random'."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classifier width when a checkpoint's head differs from the architecture default."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input side in pixels (default: the teacher's, e.g. 224, 299, 448)."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Resize target before the centre crop (default: image size / crop fraction)."),
    resize_mode: Optional[str] = typer.Option(None, "--resize-mode", help="shorter (keep aspect) or square."),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes (default: min(8, cores))."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored feature dtype: float16 or float32."),
    logits_dtype: str = typer.Option("float32", "--logits-dtype", help="Stored logits dtype: float32 or float16."),
    shard_rows: int = typer.Option(4096, "--shard-rows", help="Rows per HDF5 shard."),
    noise: int = typer.Option(0, "--noise", help="Also cache N random images (TS-Learning's random-image augmentation)."),
    noise_seed: int = typer.Option(0, "--noise-seed", help="Seed the random images are regenerated from."),
    seed: int = typer.Option(0, "--seed", help="Seed of random initialisation (--weights random)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache store (default $FEATCACHE_HOME or ~/.cache/featcache)."),
    force: bool = typer.Option(False, "--force", help="Redo the extract even if the cache exists."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="If another process is writing the same cache: wait (default) or exit."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Also cache these intermediate blocks, e.g. layer1,layer2,layer3 (for --method aka)."),
    pool: int = typer.Option(4, "--pool", help="Block outputs are average-pooled to POOL x POOL."),
    topk_logits: Optional[int] = typer.Option(None, "--topk-logits", help="Store only each row's k largest logits and their classes (many-class datasets)."),
    views: int = typer.Option(1, "--views", help="K > 1: also cache K-1 augmented views per sample, replayed exactly by distill."),
    view_policy: Optional[str] = typer.Option(None, "--view-policy", help="rrc-flip (photos) or pad-crop-flip (default for CIFAR-sized images)."),
    view_seed: int = typer.Option(0, "--view-seed", help="Seed of the views' augmentation parameters."),
) -> None:
    """Run a teacher once over a dataset split and cache its features and logits."""
    from featcache.cache import requests
    from featcache.cache.store import default_cache_dir

    options = parse_options(dataset_opt, "--dataset-opt")
    if split_file is not None:
        options["split_file"] = split_file
    if download:
        options["download"] = True
    # What determines the cache (everything but how the work is done: workers, waiting, where the store is).
    request = {
        "teacher": teacher, "dataset": dataset, "data_root": str(data_root.expanduser().resolve()) if data_root else None,
        "split": split, "dataset_options": {k: str(v) for k, v in options.items()}, "weights": weights,
        "num_classes": num_classes, "image_size": image_size, "resize": resize, "resize_mode": resize_mode,
        "batch_size": batch_size, "device": device, "precision": precision, "dtype": dtype,
        "logits_dtype": logits_dtype, "shard_rows": shard_rows, "noise": noise, "noise_seed": noise_seed,
        "seed": seed, "blocks": blocks, "pool": pool, "topk_logits": topk_logits, "views": views,
        "view_policy": view_policy, "view_seed": view_seed,
    }
    store = (cache_dir or default_cache_dir()).expanduser()
    alone = "WORLD_SIZE" not in os.environ  # under torchrun every rank takes the full path together
    if alone and not force:
        hit = requests.recall(store, request)
        if hit is not None:  # answered without importing torch (see featcache/cache/requests.py)
            noise_part = f" + {hit['noise_rows']:,} noise" if hit["noise_rows"] else ""
            out.print(f"cache [bold]{hit['key']}[/] exists ({hit['rows']:,} rows{noise_part}, "
                      f"{human_bytes(hit['bytes'])}); nothing to do (--force to redo)", highlight=False)
            return
    inputs = requests.tree_signature(requests.request_inputs(request)) if alone else None  # before anything is read

    from featcache.extract import ExtractConfig
    from featcache.extract import extract as run_extract
    from featcache.progress import RichReporter

    config = ExtractConfig(
        teacher=teacher, dataset=dataset, data_root=data_root, split=split, dataset_options=options,
        weights=weights, num_classes=num_classes, image_size=image_size, resize=resize, resize_mode=resize_mode,
        batch_size=batch_size, workers=workers, device=device, precision=precision, dtype=dtype,
        logits_dtype=logits_dtype, shard_rows=shard_rows, noise=noise, noise_seed=noise_seed, seed=seed,
        cache_dir=cache_dir, force=force, wait=wait,
        blocks=[b.strip() for b in blocks.split(",") if b.strip()] if blocks else [], pool=pool,
        views=views, view_policy=view_policy, view_seed=view_seed, topk_logits=topk_logits,
    )
    main = _main_rank()
    result = run_extract(config, reporter=RichReporter(err) if main else None)
    if not main:
        return
    if inputs is not None:
        _remember_request(store, request, result, config, inputs)
    m = result.manifest
    noise_part = f" + {result.noise_rows:,} noise" if result.noise_rows else ""
    if result.reused:
        out.print(f"cache [bold]{result.key}[/] exists ({result.rows:,} rows{noise_part}, {human_bytes(result.bytes)}); "
                  "nothing to do (--force to redo)", highlight=False)
        return
    acc = f" · teacher top-1 {m.teacher_accuracy:.2%}" if m.teacher_accuracy is not None else ""
    out.print(
        f"cache [bold]{result.key}[/]: {result.rows:,} rows{noise_part} · {m.teacher.num_features}-d {m.dtype} · "
        f"{human_bytes(result.bytes)} · {m.timing.get('images_per_s') or 0:,.0f} img/s over "
        f"{m.timing.get('seconds', 0):.1f} s on {m.timing.get('device')}"
        f"{f' (this run finished {result.images:,} of them)' if result.images < result.rows else ''}{acc}"
        + (f" · blocks {', '.join(b['name'] for b in m.blocks)}: "
           f"+{human_bytes(sum(b['dim'] for b in m.blocks) * (2 if m.dtype == 'float16' else 4))} per sample"
           if m.blocks else "")
        + (f" · {m.views['count']} views ({m.views['policy']}): "
           f"{human_bytes(sum(sh.bytes for sh in m.shards if sh.part == 'view1'))} per extra view" if m.views else ""),
        highlight=False,
    )


def _remember_request(store: Path, request: dict, result, config, inputs: str) -> None:
    """Let the next identical extract answer without torch (featcache/cache/requests.py): file datasets with a
    sample of rows to re-hash, datasets with no files (synthetic) as they are; pixel-array datasets (CIFAR
    pickles) are fingerprinted by their pixels, which only the full path computes, so they are not remembered."""
    import numpy as np

    from featcache.cache import requests
    from featcache.cache.reader import CONTENT_SAMPLE
    from featcache.datasets import get_dataset

    ds = get_dataset(config.dataset, config.data_root, config.split, **config.dataset_options)
    paths = ds.image_paths()
    if paths is None and ds.root is not None:
        return
    sample = None
    if paths is not None:
        rows = np.random.default_rng().choice(len(paths), size=min(CONTENT_SAMPLE, len(paths)), replace=False)
        sample = [(int(r), paths[r]) for r in np.sort(rows)]
    requests.remember(store, request, result.key, inputs, sample)


# -- distill -------------------------------------------------------------------------------------------------------


@app.command()
@user_errors
def distill(
    student: str = typer.Option("mobilenetv3", "--student", "-s", help=STUDENTS_HELP),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="sod: your own train/test split."),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o", help="Dataset option key=value (repeatable)."),
    teacher: Optional[List[str]] = typer.Option(None, "--teacher", "-t", help="A cached teacher: NAME (looked up for this dataset), KEY (or unique prefix) or NAME:KEY. Repeat for several."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="ce, kd, fitnets, ts, ts-translator, multi, aka (default: ts with a teacher, ce without)."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    lr: float = typer.Option(1e-3, "--lr"),
    translator_lr: Optional[float] = typer.Option(None, "--translator-lr", help="Learning rate of the translator optimizer (default: --lr)."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam, adamw or sgd."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine, step or none."),
    step_size: int = typer.Option(50, "--step-size", help="step schedule: epochs between decays."),
    gamma: float = typer.Option(0.1, "--gamma", help="step schedule: decay factor."),
    lambda_xent: float = typer.Option(1.0, "--lambda-xent"),
    lambda_mse: float = typer.Option(1.0, "--lambda-mse"),
    lambda_kd: float = typer.Option(1.0, "--lambda-kd"),
    temperature: float = typer.Option(4.0, "--temperature", help="kd: softmax temperature."),
    translator: str = typer.Option("linear", "--translator", help="ts-translator/multi: linear or upsample."),
    hint_epochs: Optional[int] = typer.Option(None, "--hint-epochs", help="fitnets: epochs of the hint stage (default: --epochs)."),
    feature_dim: Optional[int] = typer.Option(None, "--feature-dim", help="Width of the student's feature layer (ts sets it to the teacher's)."),
    small_input: Optional[bool] = typer.Option(None, "--small-input/--no-small-input", help="CIFAR-style stems (default: when images are <= 64 px)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Without a teacher: input size (default: the dataset's native size or 224)."),
    augment: str = typer.Option("none", "--augment", help="none, flip, pad-crop-flip (with teachers only with --allow-inconsistent)."),
    allow_inconsistent: bool = typer.Option(False, "--allow-inconsistent", help="Allow augmentation/views the cached rows do not describe (the fixed-teacher setting)."),
    noise_per_batch: int = typer.Option(0, "--noise-per-batch", help="Add N cached random images per batch (TS-Learning augmentation)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    cache_ram: str = typer.Option("auto", "--cache-ram", help="RAM budget for teacher tables, e.g. 8G (auto: half of available)."),
    cache_mode: str = typer.Option("auto", "--cache-mode", help="auto, ram or disk (out of core)."),
    shuffle: str = typer.Option("auto", "--shuffle", help="auto, full, block or none."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where metrics and checkpoints go (default runs/<dataset>-<student>-<method>-s<seed>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last checkpoint."),
    resident: Optional[bool] = typer.Option(None, "--resident/--no-resident", help="Hold images, labels and teacher rows on the device, augmentation there too (default: on the CPU when the split fits in RAM; never on a GPU unless asked)."),
    compile_mode: str = typer.Option("none", "--compile", help="torch.compile the training step: none, default, reduce-overhead (CUDA graphs), max-autotune."),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Never read the training labels (aka; implied by it)."),
    aka_dim: Optional[int] = typer.Option(None, "--aka-dim", help="aka: width of the aligned features (default: the student's)."),
    views: bool = typer.Option(True, "--views/--no-views", help="Replay the caches' augmented views (extract --views), one per sample per epoch."),
    student_blocks: Optional[str] = typer.Option(None, "--student-blocks", help="aka: student body modules matched, in order, to the teachers' cached --blocks (e.g. layer2,layer3)."),
    content_check: str = typer.Option("sample", "--content-check", help="Re-hash images against the digests the caches recorded: sample (256 images, default), full or off."),
    online: bool = typer.Option(False, "--online", help="Run the caches' teachers on every batch instead of reading their rows (to compare with the cache; costs what the cache saves)."),
) -> None:
    """Train a student from cached teacher rows (no teacher network is loaded)."""
    from featcache.distill.trainer import DistillConfig
    from featcache.distill.trainer import distill as run_distill
    from featcache.progress import RichReporter

    options = parse_options(dataset_opt, "--dataset-opt")
    if split_file is not None:
        options["split_file"] = split_file
    config = DistillConfig(
        student=student, dataset=dataset, data_root=data_root, dataset_options=options, teachers=list(teacher or []),
        method=method, epochs=epochs, batch_size=batch_size, lr=lr, translator_lr=translator_lr, optimizer=optimizer,
        momentum=momentum, weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma,
        lambda_xent=lambda_xent, lambda_mse=lambda_mse, lambda_kd=lambda_kd, temperature=temperature,
        translator=translator, hint_epochs=hint_epochs, feature_dim=feature_dim, small_input=small_input,
        image_size=image_size, augment=augment, allow_inconsistent=allow_inconsistent,
        noise_per_batch=noise_per_batch, seed=seed, device=device, precision=precision, workers=workers,
        cache_dir=cache_dir, cache_ram=cache_ram, cache_mode=cache_mode, shuffle=shuffle, run_dir=run_dir,
        resume=resume, resident=resident, compile=compile_mode, unlabeled=unlabeled, aka_dim=aka_dim,
        student_blocks=[b.strip() for b in student_blocks.split(",") if b.strip()] if student_blocks else [],
        views=views, content_check=content_check, online=online,
    )
    main = _main_rank()
    summary = run_distill(config, reporter=RichReporter(err, transient=True) if main else None)
    if main:
        out.print(summary.line(), highlight=False)


@app.command("train-teacher")
@user_errors
def train_teacher_cmd(
    teacher: str = typer.Option(..., "--teacher", "-t", help="A registered teacher or torchvision classifier."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="sod: your own train/test split."),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o", help="Dataset option key=value (repeatable)."),
    init: str = typer.Option("auto", "--init", help="auto (ImageNet weights if in the torch hub cache, else random), imagenet, random, or a checkpoint path."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the view `extract` uses for this teacher and dataset."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default 1e-4 from ImageNet weights, 1e-3 from scratch."),
    optimizer: str = typer.Option("adam", "--optimizer"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule"),
    augment: str = typer.Option("flip", "--augment", help="none, flip or pad-crop-flip (teachers train on augmented views)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default runs/teacher-<dataset>-<teacher>-s<seed>-<time>."),
    resume: bool = typer.Option(False, "--resume"),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Train on these classes only: a file of class names (featcache split-classes)."),
) -> None:
    """Fine-tune a teacher on a dataset; writes RUN_DIR/teacher.pt for `extract --weights`."""
    from featcache.progress import RichReporter
    from featcache.teach import TeacherConfig, train_teacher

    options = parse_options(dataset_opt, "--dataset-opt")
    if split_file is not None:
        options["split_file"] = split_file
    tc = TeacherConfig(
        teacher=teacher, dataset=dataset, data_root=data_root, dataset_options=options, init=init, image_size=image_size,
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
        augment=augment, seed=seed, device=device, precision=precision, workers=workers, run_dir=run_dir, resume=resume,
        classes=classes,
    )
    summary, path = train_teacher(tc, reporter=RichReporter(err, transient=True))
    out.print(summary.line(), highlight=False)
    out.print(f"teacher weights: {path}  (featcache extract --teacher {teacher} --weights {path} ...)", highlight=False)


@app.command("split-classes")
@user_errors
def split_classes_cmd(
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o"),
    parts: int = typer.Option(2, "--parts", help="How many disjoint class parts."),
    seed: int = typer.Option(0, "--seed"),
    out_dir: Path = typer.Option(Path("."), "--out", help="Where part1.txt … partN.txt go."),
) -> None:
    """Split a dataset's classes into disjoint parts (one file of class names each), for teachers of class subsets."""
    from featcache.datasets import get_dataset
    from featcache.datasets.base import split_classes

    ds = get_dataset(dataset, data_root, "train", **parse_options(dataset_opt, "--dataset-opt"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, names in enumerate(split_classes(ds.classes, parts, seed), start=1):
        path = out_dir / f"part{k}.txt"
        path.write_text(f"# {dataset} classes, part {k} of {parts} (seed {seed})\n" + "".join(n + "\n" for n in names))
        out.print(f"{path}: {len(names)} classes", highlight=False)


@app.command()
@user_errors
def amalgamate(
    teacher: List[str] = typer.Option(..., "--teacher", "-t", help="Source teacher caches (NAME, KEY or NAME:KEY), repeatable."),
    classes: List[Path] = typer.Option(..., "--classes", help="One file of class names per task (featcache split-classes), repeatable."),
    student: str = typer.Option("resnet18", "--student", "-s", help="Architecture of the component nets and the target."),
    component_student: Optional[str] = typer.Option(None, "--component-student", help="Component architecture (default --student)."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o"),
    epochs: int = typer.Option(30, "--epochs", help="Target-net epochs."),
    component_epochs: Optional[int] = typer.Option(None, "--component-epochs", help="Component-net epochs (default --epochs)."),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    lr: float = typer.Option(1e-3, "--lr"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    run_dir: Path = typer.Option(Path("runs/amalgamate"), "--run-dir"),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
) -> None:
    """Dual-stage adaptive knowledge amalgamation without labels: source teachers → component nets → target net."""
    from featcache.amalgamate import AmalgamateConfig
    from featcache.amalgamate import amalgamate as run_amalgamate
    from featcache.datasets.base import read_class_list
    from featcache.progress import RichReporter

    cfg = AmalgamateConfig(
        teachers=list(teacher), parts={p.stem: read_class_list(p) for p in classes}, student=student,
        component_student=component_student, dataset=dataset, data_root=data_root,
        dataset_options=parse_options(dataset_opt, "--dataset-opt"), epochs=epochs, component_epochs=component_epochs,
        options={"batch_size": batch_size, "lr": lr}, cache_dir=cache_dir, run_dir=run_dir, device=device, workers=workers,
    )
    r = run_amalgamate(cfg, reporter=RichReporter(err, transient=True), log=lambda m: out.print(m, highlight=False))
    _print_task_table(r["table"], f"per-task test accuracy (%) — {run_dir}")


def _print_task_table(rows: list[dict], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("task", "classes", "source teacher(s)", "component", "target"):
        table.add_column(col, justify="left" if col in ("task", "source teacher(s)") else "right")
    for row in rows:
        src = ", ".join(f"{100 * a:.2f}" for a in row["sources"].values()) or "—"
        table.add_row(row["task"], str(row["classes"]), src, f"{100 * row['component']:.2f}", f"{100 * row['target']:.2f}")
    out.print(table)


@app.command("eval")
@user_errors
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A distill run directory."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Override the dataset location recorded in the run."),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    as_json: bool = typer.Option(False, "--json"),
    classes: Optional[List[Path]] = typer.Option(None, "--classes", help="Also report accuracy per class part (a file of class names; repeatable)."),
) -> None:
    """Test accuracy (correct / total, Eq. 6 of the multi-teacher paper) of a run's checkpoint."""
    from featcache.datasets.base import read_class_list
    from featcache.distill.trainer import evaluate_run

    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r}: choose best or last")
    parts = {p.stem: read_class_list(p) for p in classes or []}
    r = evaluate_run(run_dir, checkpoint=checkpoint, device=device, batch_size=batch_size, workers=workers,
                     data_root=data_root, parts=parts)
    if as_json:
        out.print_json(json.dumps(r))
    else:
        out.print(f"{run_dir} ({checkpoint}, epoch {r['epoch']}): test accuracy {r['acc']:.2%} on {r['n']:,} images "
                  f"· test loss {r['loss']:.4f}", highlight=False)
        for name, ev in r.get("parts", {}).items():
            out.print(f"  {name}: {ev['acc']:.2%} on {ev['n']:,} images (predicted among its {len(parts[name])} classes)",
                      highlight=False)


def _print_rows(rows, title: str) -> None:
    from featcache.report import COLUMNS

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)  # no side borders: fits 80 columns
    cells = [row.cells() for row in rows]
    for col in COLUMNS:
        numeric = col.endswith("%") or col in ("seeds", "epochs")
        # On a narrow terminal the numbers wrap at their spaces ("59.17 ±" / "23.72") and the names stay whole:
        # a truncated "convnet…" could be any of several models.
        words = col.split() + [w for c in cells for w in (c[col].split() if numeric else [c[col]])]
        width = max(len(w) for w in words)  # no word is ever cut
        table.add_column(col, justify="right" if numeric else "left", min_width=width, no_wrap=not numeric)
    for c in cells:
        table.add_row(*(c[col] for col in COLUMNS))
    out.print(table)


@app.command()
@user_errors
def report(
    runs: List[Path] = typer.Argument(..., help="Run directories, or directories holding runs (e.g. runs/)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as markdown to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of test accuracy per epoch (needs matplotlib)."),
    title: Optional[str] = typer.Option(None, "--title"),
    per_seed: bool = typer.Option(False, "--per-seed", help="One row per run instead of mean ± std over seeds."),
) -> None:
    """Table of best/final test accuracy per run (rich + markdown) and PNG accuracy curves."""
    from featcache.report import build_rows, find_runs, load_record, markdown_table, plot_curves

    records = [load_record(d) for d in find_runs(runs)]
    rows = build_rows(records, group_seeds=not per_seed)
    _print_rows(rows, title or f"{len(records)} run(s)")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_table(rows))
        out.print(f"markdown table: {markdown}", highlight=False)
    if plot is not None:
        out.print(f"accuracy curves: {plot_curves(records, plot, title)}", highlight=False)


@app.command("run")
@user_errors
def run_cmd(
    recipe: Path = typer.Argument(..., help="A pipeline recipe (TOML), e.g. pipelines/cifar10-quick.toml."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Override the recipe's [dataset] data_root."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Override the recipe's runs_dir."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only."),
) -> None:
    """Run a recipe: teachers → extracts → distill runs → report; stages whose outputs exist are skipped."""
    from featcache.pipeline import load_pipeline

    pipeline = load_pipeline(recipe, data_root=data_root, runs_dir=runs_dir)
    _run_pipeline(pipeline, cache_dir=cache_dir, device=device, workers=workers, dry_run=dry_run)


@app.command()
@user_errors
def demo(
    runs_dir: Path = typer.Option(Path("runs/demo"), "--runs-dir", help="Where the demo's runs, cache, table and PNG go."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Student seeds, comma-separated."),
    device: str = typer.Option("cpu", "--device", help="cpu by default: the demo is sized for a laptop CPU."),
    workers: Optional[int] = typer.Option(0, "--workers"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only."),
) -> None:
    """Offline, CPU, minutes: train a small teacher, cache it, distill a student with and without it, compare."""
    from featcache.demo import DEMO_THREADS, demo_recipe, seed_gains

    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seed_list:
        raise ConfigError("--seeds: give at least one seed")
    pipeline = demo_recipe(runs_dir, seeds=seed_list)
    # Two torch threads whatever the core count: float sums split over another thread count round differently, and
    # the demo should print the same numbers on every machine of a kind (docs/results.md says what still differs).
    pinned = os.environ.get("FEATCACHE_THREADS")
    os.environ["FEATCACHE_THREADS"] = pinned or str(DEMO_THREADS)
    try:
        _run_pipeline(pipeline, cache_dir=runs_dir / "cache", device=device, workers=workers, dry_run=dry_run)
    finally:
        if pinned is None:
            os.environ.pop("FEATCACHE_THREADS", None)
    if not dry_run:
        for seed, alone, helped in seed_gains(pipeline):
            out.print(f"seed {seed}: alone {alone:.2%} · with the cached teacher {helped:.2%} · "
                      f"{(helped - alone) * 100:+.2f} points", highlight=False)


def _run_pipeline(pipeline, *, cache_dir, device, workers, dry_run) -> dict:
    from featcache.pipeline import describe_plan, plan, run_pipeline
    from featcache.progress import RichReporter

    stages = plan(pipeline, cache_dir=cache_dir, device=device, workers=workers)
    out.print(f"plan for {pipeline.name} ({len(stages)} stages, outputs in {pipeline.runs_dir}):", highlight=False)
    for line in describe_plan(stages):
        out.print("  " + line, highlight=False, markup=False)
    if dry_run:
        return {}
    result = run_pipeline(pipeline, cache_dir=cache_dir, device=device, workers=workers,
                          reporter=RichReporter(err, transient=True), log=lambda m: out.print(m, highlight=False, markup=False))
    if result.get("rows"):
        _print_rows(result["rows"], pipeline.report.get("title", pipeline.name))
    if result.get("amalgamate"):
        _print_task_table(result["amalgamate"], f"amalgamation: per-task test accuracy (%) — {pipeline.runs_dir / 'amalgamate'}")
    for k in ("markdown", "plot"):
        if result.get(k):
            out.print(f"{k}: {result[k]}", highlight=False)
    return result


# -- cache ---------------------------------------------------------------------------------------------------------


def _store(cache_dir: Path | None):
    from featcache.cache import CacheStore

    return CacheStore(cache_dir)


@cache_app.command("ls")
@user_errors
def cache_ls(
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the caches in the store."""
    store = _store(cache_dir)
    entries = store.entries()
    if as_json:
        rows = []
        for e in entries:
            m = e.manifest
            rows.append({"key": e.key, "status": e.status, "teacher": m.teacher.name if m else None,
                         "dataset": m.dataset.get("name") if m else None, "split": m.dataset.get("split") if m else None,
                         "rows": m.rows if m else None, "bytes": m.total_bytes() if m else None})
        out.print_json(json.dumps(rows))
        return
    if not entries:
        out.print(f"no caches in {store.root}")
        return
    table = Table(title=f"caches in {store.root}", title_justify="left")
    for col in ("key", "teacher", "dataset", "split", "rows", "dim", "size", "image", "status"):
        table.add_column(col, justify="right" if col in ("rows", "dim", "size") else "left", overflow="fold" if col == "key" else "ellipsis")
    for e in entries:
        m = e.manifest
        if m is None:
            table.add_row(e.key, "-", "-", "-", "-", "-", "-", "-", f"[red]{e.status}[/]")
            continue
        rows = f"{m.rows.get('data', 0):,}" + (f" +{m.rows['noise']:,}n" if m.rows.get("noise") else "")
        status = "[green]complete[/]" if m.complete else f"[yellow]{e.status}[/]"
        table.add_row(e.key, m.teacher.name, m.dataset.get("name", "?"), m.dataset.get("split", "?"), rows,
                      str(m.teacher.num_features), human_bytes(m.total_bytes()), str(m.transform.get("image_size")), status)
    out.print(table)


@cache_app.command("info")
@user_errors
def cache_info(
    key: str = typer.Argument(..., help="Cache key or unique prefix."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show what produced a cache: teacher, weights, dataset, transform, shards, timing."""
    from featcache.cache import Manifest
    from featcache.transforms import TransformSpec

    store = _store(cache_dir)
    full = store.resolve(key)
    m = Manifest.load(store.path(full))
    if as_json:
        out.print_json(json.dumps(m.to_dict()))
        return
    t = m.teacher
    table = Table(show_header=False, title=f"cache {m.key}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    weights = t.weights.get("ref", "?")
    if t.weights.get("sha256"):
        weights += f" (sha256 {t.weights['sha256'][:12]})"
    rows = [
        ("status", "complete" if m.complete else f"partial: {len(m.shards)}/{len(m.expected_shards())} shards"),
        ("directory", str(store.path(full))),
        ("teacher", f"{t.name} · {t.feature_layer} · D={t.num_features} · C={t.num_classes}"),
        ("weights", f"{t.weights.get('source')}: {weights}"),
        ("teacher classes", t.classes_source),
        ("dataset", f"{m.dataset.get('name')} / {m.dataset.get('split')} · {m.dataset.get('num_samples'):,} samples · "
                    f"{m.dataset.get('num_classes')} classes"),
        ("sample ids sha256", m.dataset.get("ids_sha256", "")[:16]),
        ("transform", TransformSpec.from_dict(m.transform).describe()),
        ("stored", f"features {m.dtype}, logits {m.logits_dtype}, computed in {m.precision}"),
        ("rows", ", ".join(f"{p}: {n:,}" for p, n in m.rows.items())),
        ("noise", f"{m.noise['count']:,} images, seed {m.noise['seed']}" if m.noise else "none"),
        ("shards", f"{len(m.shards)} × ≤{m.shard_rows:,} rows · {human_bytes(m.total_bytes())}"),
        ("teacher top-1", f"{m.teacher_accuracy:.2%}" if m.teacher_accuracy is not None else "n/a"),
        ("timing", ", ".join(f"{k}={v}" for k, v in m.timing.items()) or "n/a"),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ("created", f"{m.created} → {m.finished or '...'}"),
        ("command", m.command),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table, highlight=False)


@cache_app.command("verify")
@user_errors
def cache_verify(
    key: Optional[str] = typer.Argument(None, help="Cache key or prefix (default: every cache)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
) -> None:
    """Recompute shard checksums; report corrupt, truncated and missing shards (exit 1 if any)."""
    store = _store(cache_dir)
    keys = [store.resolve(key)] if key else [e.key for e in store.entries()]
    if not keys:
        out.print(f"no caches in {store.root}")
        return
    failed = False
    orphans = {e.key: e for e in store.entries() if e.manifest is None}
    for k in keys:
        if k in orphans:
            failed = True
            out.print(f"[red]FAILED[/] {k}: {escape(orphans[k].error or 'unreadable manifest')}", highlight=False)
            continue
        report = store.verify(k)
        for c in report.checks:
            if c.status != "ok":
                colour = "yellow" if c.status == "leftover" else "red"
                out.print(f"  [{colour}]{c.status}[/] {c.file}: {c.detail}", highlight=False)
        ok_count = sum(c.status == "ok" for c in report.checks)
        state = "" if report.complete else f", incomplete: {report.missing} shard(s) not written yet"
        if report.ok:
            out.print(f"[green]ok[/] {k}: {ok_count} shard(s) verified{state}", highlight=False)
        else:
            failed = True
            out.print(f"[red]FAILED[/] {k}: {len(report.bad)} bad shard(s){state}; re-run its extract command "
                      "(it redoes bad shards after `featcache cache rm`, or use --force)", highlight=False)
    if failed:
        raise typer.Exit(1)


@cache_app.command("rm")
@user_errors
def cache_rm(
    keys: List[str] = typer.Argument(..., help="Cache keys or unique prefixes."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
) -> None:
    """Remove caches (refuses one that is being written)."""
    store = _store(cache_dir)
    for key in keys:
        full = store.resolve(key)
        freed = store.remove(full)
        out.print(f"removed {full} ({human_bytes(freed)})", highlight=False)


# -- bench ---------------------------------------------------------------------------------------------------------


@bench_app.command("extract")
@user_errors
def bench_extract_cmd(
    teacher: Optional[List[str]] = typer.Option(None, "--teacher", "-t", help="Repeat for several (default resnet50); one row each."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    split: str = typer.Option("train", "--split"),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o"),
    weights: str = typer.Option("random", "--weights", "-w", help="Weights do not change the speed; random needs no files."),
    image_size: Optional[int] = typer.Option(None, "--image-size"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision"),
    iters: int = typer.Option(20, "--iters", help="Timed forward iterations for the limit (at least 3 s of them)."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds of forward + extract; medians are shown."),
    min_seconds: float = typer.Option(3.0, "--min-seconds", help="Time the bare forward for at least this long."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write the results as JSON."),
) -> None:
    """Extract images/s vs the bare teacher forward pass (same batch, precision, threads), in one process."""
    from featcache.bench import bench_extract
    from featcache.extract import ExtractConfig
    from featcache.progress import RichReporter

    results = []
    for name in teacher or ["resnet50"]:
        config = ExtractConfig(
            teacher=name, dataset=dataset, data_root=data_root, split=split,
            dataset_options=parse_options(dataset_opt, "--dataset-opt"), weights=weights, image_size=image_size,
            batch_size=batch_size, workers=workers, device=device, precision=precision,
        )
        results.append(bench_extract(config, iters=iters, rounds=rounds, min_seconds=min_seconds, reporter=RichReporter(err, transient=True)))
    r0 = results[0]
    table = Table(title=f"extract on {r0['dataset']} ({r0['images']:,} images), {r0['device']}, batch {r0['batch_size']}, "
                        f"{r0['precision']}, {r0['workers']} workers, {r0['threads']} threads; median of {r0['rounds']} "
                        f"rounds, load {' → '.join(str(x) for x in r0['load_1min'])}", title_justify="left")
    for col in ("teacher", "forward img/s", "decode img/s", "extract img/s", "extract / forward", "extract / decode"):
        table.add_column(col, justify="left" if col == "teacher" else "right", no_wrap=col == "teacher")
    for r in results:
        table.add_row(f"{r['teacher']}@{r['image_size']}", f"{r['forward_images_per_s']:,.0f}",
                      f"{r['decode_images_per_s']:,.0f}", f"{r['extract_images_per_s']:,.0f}", f"{r['ratio']:.2f}",
                      f"{r['ratio_to_decode']:.2f}")
    out.print(table)
    _write_json(json_out, results if len(results) > 1 else r0)


@bench_app.command("distill")
@user_errors
def bench_distill_cmd(
    student: str = typer.Option("mobilenetv3", "--student", "-s"),
    teacher: Optional[List[str]] = typer.Option(None, "--teacher", "-t", help="Repeat for several (default resnet50; none: the student alone); extracted into a scratch store first (not timed)."),
    method: str = typer.Option("ts", "--method", "-m", help="The method with one teacher (several: multi)."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o"),
    weights: str = typer.Option("random", "--weights", "-w", help="Teacher weights; they do not change the speed."),
    image_size: Optional[int] = typer.Option(None, "--image-size"),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision"),
    steps: int = typer.Option(50, "--steps", help="Timed training steps per setting and round."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed steps before timing."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds (every setting once per round); medians are shown."),
    resident: Optional[bool] = typer.Option(None, "--resident/--no-resident", help="Device-resident images and rows (default as distill's)."),
    compile_mode: str = typer.Option("none", "--compile", help="torch.compile mode of the training step."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write the results as JSON."),
) -> None:
    """Student training images/s and peak memory: a bare PyTorch loop (the limit) vs the student alone vs with
    cached teacher rows vs with the teachers online, interleaved in one process."""
    from featcache.bench import bench_distill
    from featcache.distill.trainer import DistillConfig
    from featcache.progress import RichReporter

    config = DistillConfig(
        student=student, dataset=dataset, data_root=data_root, dataset_options=parse_options(dataset_opt, "--dataset-opt"),
        method=method, image_size=image_size, batch_size=batch_size, workers=workers, device=device, precision=precision,
        resident=resident, compile=compile_mode,
    )
    names = [] if teacher == ["none"] else list(teacher or ["resnet50"])
    r = bench_distill(config, teachers=names, weights=weights, steps=steps, warmup=warmup, rounds=rounds,
                      reporter=RichReporter(err, transient=True))
    table = Table(title=f"distill: {r['student']}{' with ' + ' + '.join(names) if names else ''} @ {r['image_size']} px "
                        f"on {r['dataset']}, {r['device']}, batch {r['batch_size']}, {r['precision']}"
                        f"{', compile ' + r['compile'] if r['compile'] != 'none' else ''}; median of {r['rounds']} "
                        f"rounds, load {' → '.join(str(x) for x in r['load_1min'])}",
                  title_justify="left")
    cpu = r["device"] == "cpu"
    bare_rate = r["results"].get("bare-student", {}).get("images_per_s")
    if bare_rate:
        table.caption = (f"vs bare loop: each setting / a plain PyTorch loop of its own student timed next to it in the "
                         f"same round (the student alone's: {bare_rate:,.0f} img/s); online settings / the cached one's")
    for col in ("setting", "images/s", "vs bare loop", "vs alone", "peak RSS" if cpu else "peak memory", "vs alone "):
        table.add_column(col, justify="left" if col == "setting" else "right", no_wrap=col == "setting")
    for key, x in r["results"].items():
        if key.startswith("bare"):
            continue  # each setting's limit: its ratio is in "vs bare loop"; the bare rates are in the JSON
        if key == "student":
            label = "student alone (ce)"
        else:
            kind, k = key.split("-")
            who = " + ".join(names[: int(k)])
            label = f"+ {who} {'cached' if kind == 'cached' else 'online'} ({r['methods'][key]})"
        if key != "bare" and x["resident"]:
            label += ", resident"
        mem, ratio = (x["peak_rss_bytes"], x["rss_vs_student"]) if cpu else (x["peak_memory_bytes"], x["memory_vs_student"])
        table.add_row(
            label, f"{x['images_per_s']:,.0f}", f"{x['speed_vs_bare']:.3f}" if "speed_vs_bare" in x else "–",
            f"{x['speed_vs_student']:.3f}",
            f"{mem / 2**20:,.0f} MiB" if mem is not None else "n/a",
            f"{ratio:.3f}" if ratio is not None else "n/a",
        )
    out.print(table)
    _write_json(json_out, r)


@bench_app.command("join")
@user_errors
def bench_join_cmd(
    rows: int = typer.Option(100_000, "--rows", help="Rows in the scratch cache."),
    dim: int = typer.Option(2048, "--dim", help="Feature width (fp16)."),
    classes: int = typer.Option(10, "--classes"),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    pt_files: int = typer.Option(5000, "--pt-files", help="Per-sample .pt files written for that anchor."),
    limit: float = typer.Option(20.0, "--limit", help="Seconds at most per method."),
    scratch: Optional[Path] = typer.Option(None, "--scratch", help="Where to write the scratch files (default: the temp dir)."),
    cold: bool = typer.Option(False, "--cold", help="Drop the shards from the page cache before each disk measurement."),
    json_out: Optional[Path] = typer.Option(None, "--json-out"),
) -> None:
    """Rows/s of the feature join (in RAM, out of core), each next to its limit (np.take, a sequential read), and
    the naive peers (h5py fancy indexing, one .pt file per sample)."""
    from featcache.bench import bench_join
    from featcache.progress import RichReporter

    r = bench_join(rows=rows, dim=dim, classes=classes, batch_size=batch_size, pt_files=pt_files, limit_s=limit,
                   directory=scratch, cold=cold, reporter=RichReporter(err, transient=True))
    table = Table(title=f"join: {r['rows']:,} rows of {r['dim']}-d fp16 + {r['classes']} fp32 logits "
                        f"({r['table_bytes'] / 2**30:.2f} GiB), shuffled batches of {r['batch_size']}, "
                        f"{'cold' if r['cold'] else 'warm'} page cache; load "
                        f"{' → '.join(str(x) for x in r['load_1min'])}", title_justify="left")
    for col in ("method", "rows/s", "vs its limit", "vs h5py fancy"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    labels = {"ram": "featcache in-RAM table", "np_take": "  limit: np.take into a reused buffer",
              "disk": "featcache out-of-core table", "sequential_read": "  limit: sequential read of the shards",
              "h5py_fancy": "naive h5py fancy indexing", "pt_per_sample": "one .pt file per sample"}
    for key, label in labels.items():
        x = r["results"][key]
        table.add_row(label, f"{x['rows_per_s']:,.0f}", f"{x['vs_limit']:.2f}" if "vs_limit" in x else "",
                      f"{x['vs_h5py_fancy']:.2f}")
    out.print(table)
    if r["results"]["ram"].get("load_seconds") is not None:
        out.print(f"loading the in-RAM table took {r['results']['ram']['load_seconds']:.2f} s")
    _write_json(json_out, r)


@bench_app.command("trust")
@user_errors
def bench_trust_cmd(
    teacher: str = typer.Option("resnet18", "--teacher", "-t"),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    split: str = typer.Option("train", "--split"),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o"),
    image_size: Optional[int] = typer.Option(None, "--image-size"),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    device: str = typer.Option("auto", "--device"),
    repeats: int = typer.Option(3, "--repeats", help="Timings per check (the median is shown)."),
    json_out: Optional[Path] = typer.Option(None, "--json-out"),
) -> None:
    """Cost of the trust checks (fingerprint, content re-check, shard hashes) as a fraction of the extract's time."""
    from featcache.bench import bench_trust
    from featcache.extract import ExtractConfig
    from featcache.progress import RichReporter

    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    config = ExtractConfig(
        teacher=teacher, dataset=dataset, data_root=data_root, split=split, weights="random",
        dataset_options=parse_options(dataset_opt, "--dataset-opt"), image_size=image_size, batch_size=batch_size,
        workers=workers, device=device,
    )
    r = bench_trust(config, repeats=repeats, reporter=RichReporter(err, transient=True))
    table = Table(title=f"trust checks on {r['dataset']} ({r['images']:,} images): extract of {r['teacher']}@"
                        f"{r['image_size']} took {r['extract_seconds']:.1f} s on {r['device']}; median of "
                        f"{r['repeats']}, load {r['load_1min']}", title_justify="left")
    for col in ("check", "when", "seconds", "of the extract"):
        table.add_column(col, justify="left" if col in ("check", "when") else "right")
    when = {"fingerprint": "every extract/distill (stat of every file)",
            "content_sample": f"every distill and reuse ({r['content_sample_rows']} files)",
            "content_full": "distill --content-check full",
            "shard_sha256": "first read of each shard per process"}
    for key, x in r["results"].items():
        table.add_row(key, when[key], f"{x['seconds']:.3f}", f"{x['fraction_of_extract']:.2%}")
    out.print(table)
    _write_json(json_out, r)


def _write_json(path: Path | None, obj: Any) -> None:
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj, indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"--json-out {path}: cannot write it ({exc.strerror or exc})") from None


# -- listings ------------------------------------------------------------------------------------------------------


@app.command()
@user_errors
def teachers(all_models: bool = typer.Option(False, "--all", help="Also list every torchvision classifier.")) -> None:
    """List the teachers `extract --teacher` accepts."""
    from featcache.models.registry import get_entry
    from featcache.models.teachers import list_teachers

    table = Table(title="teachers")
    for col in ("name", "input", "description"):
        table.add_column(col)
    for name in list_teachers(include_torchvision=False):
        e = get_entry("teacher", name)
        table.add_row(name, f"{e.default_image_size} px (≥{e.min_image_size})", e.description)
    out.print(table)
    if all_models:
        from featcache.models.teachers import torchvision_classifiers

        out.print("any torchvision classifier: " + ", ".join(torchvision_classifiers()))
    else:
        out.print("…and any torchvision classifier by name (--all lists them)")


@app.command()
@user_errors
def students() -> None:
    """List the students `distill --student` accepts."""
    from featcache.models.students import list_students
    from featcache.models.registry import get_entry

    table = Table(title="students")
    for col in ("name", "description"):
        table.add_column(col)
    for name in list_students():
        e = get_entry("student", name)
        table.add_row(name, e.description if e else "")
    out.print(table)


@app.command()
@user_errors
def datasets() -> None:
    """List the datasets `--dataset` accepts."""
    from featcache.datasets import list_datasets

    for name in list_datasets():
        out.print(name)


def main() -> None:
    app(prog_name="featcache")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
