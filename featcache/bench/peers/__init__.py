"""`featcache bench peers`: featcache next to torchdistill (1.1.4, its per-sample ``cache_output``) on one task.

The task, the same for every arm: a resnet18 teacher (the same weights), torchvision's mobilenet_v3_small student,
Hinton KD (T 4, α 0.5), Adam 1e-3 with cosine annealing, batch 128, E epochs, N training images of a folder
dataset at their native size, one CPU thread per process. The arms, interleaved in every repeat (A B C D E, A B C D
E, ...), each run in a process of its own: torchdistill with its teacher online; torchdistill with its cache (a fill
run, whose first epoch writes one file per sample, then a warm run); the same with ``channels_last`` (featcache's
layout; torchdistill has no option for it); ``featcache extract`` then ``featcache distill --method kd``;
``featcache distill --online``. Every run's final student is evaluated here, the same way (evaluate.py), and a
second part checks on a few samples whether each tool's cached output describes the augmented view its student sees
(tdrun.py's ``view_check``, evaluate.py's ``featcache_view_check``). docs/comparison.md holds the measured table.

Modules: arms.py (the runs), tdrun.py (torchdistill's process), evaluate.py (the common evaluation, featcache's view
check), report.py (the figures, torch-free).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featcache.bench.peers.report import ARM_KEYS, summarize
from featcache.errors import ConfigError, WeightsError
from featcache.util.progress import Reporter

if TYPE_CHECKING:
    from featcache.bench.peers.arms import Task

PEER = "torchdistill"
PEER_VERSION = "1.1.4"  # 1.1.5 dropped cache_output without a word: a cached arm would run online
INSTALL_HINT = "pip install 'featcache[peers]'"


def peer_version() -> str:
    """The installed torchdistill's version; a one-line error when it is absent or not the pinned release."""
    from importlib import metadata

    try:
        version = metadata.version(PEER)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"bench peers needs {PEER} {PEER_VERSION}, which is not installed: {INSTALL_HINT}") from None
    if version != PEER_VERSION:
        raise ConfigError(f"bench peers needs {PEER} {PEER_VERSION} (later releases dropped its cache_output), found "
                          f"{version}: {INSTALL_HINT}")
    return version


def check_sizes(**values: int) -> None:
    """Each count the bench takes is at least its minimum (view_samples may be 0: no view check)."""
    least = {"view_samples": 0, "views": 2}
    for name, value in values.items():
        if value < least.get(name, 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {least.get(name, 1)}, got {value}",
                              flag=f"--{name.replace('_', '-')}")


def teacher_weights(checkpoint: Path | None, num_classes: int, target: Path, seed: int = 0) -> str:
    """The teacher's weights as a plain state dict at ``target`` (both tools read it): a checkpoint's tensors
    (read weights-only) checked against torchvision's resnet18, or a seeded random initialisation."""
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    if checkpoint is None:
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(num_classes=num_classes)
        source = f"random init (seed {seed})"
    else:
        from featcache.models.weights import load_checkpoint

        try:
            model.load_state_dict(load_checkpoint(checkpoint))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise WeightsError(f"--teacher-checkpoint {checkpoint}: not a resnet18 with {num_classes} classes "
                               f"({first})", flag="--teacher-checkpoint") from None
        source = str(checkpoint)
    torch.save(model.state_dict(), target)
    return source


def prepare(data_root: Path, scratch: Path, images: int, test_images: int, view_samples: int) -> dict[str, Any]:
    """The bench's data under ``scratch``: the subset every arm trains on, and the view check's few samples."""
    from featcache.bench.peers import arms as A
    data, view_data = scratch / "data", scratch / "view-data"
    got = {"train": A.copy_subset(data_root, data, "train", images),
           "test": A.copy_subset(data_root, data, "test", test_images)}
    if view_samples:
        A.copy_subset(data_root, view_data, "train", view_samples)
        A.copy_subset(data_root, view_data, "test", 10)
    from featcache.datasets import get_dataset

    train = get_dataset("folder", data, "train")
    return {"data": data, "view_data": view_data, "images": got["train"], "test_images": got["test"],
            "num_classes": train.num_classes, "image_size": int(train.read_image(0).shape[-1])}


def run_repeat(task: Task, work: Path, r: int, evaluation, reporter: Reporter) -> list[dict[str, Any]]:
    """One interleaved round of the five arms and the limit (seed r); every student run's accuracy by the common
    evaluation."""
    from featcache.bench.extract import load_1min
    from featcache.bench.peers import arms as A
    from featcache.bench.peers.evaluate import featcache_student, torchvision_student

    records: list[dict[str, Any]] = []

    def add(arm: str, phase: str, x: dict[str, Any]) -> None:
        if "student" in x:
            x["accuracy"] = evaluation.accuracy(torchvision_student(Path(x["student"]), task.num_classes))
        elif "run_dir" in x:
            x["accuracy"] = evaluation.accuracy(featcache_student(Path(x["run_dir"])))
        records.append({"arm": arm, "phase": phase, "repeat": r, "load_1min": load_1min(), **x})

    reporter.message(f"repeat {r + 1}: torchdistill, teacher online")
    add("td-online", "run", A.torchdistill_run(task, work, f"td-online-{r}", r, cache_dir=None, channels_last=False))
    for arm, cl in (("td-cache", False), ("td-cache-cl", True)):
        cache = work / f"{arm}-{r}"
        for phase in ("fill", "warm"):
            reporter.message(f"repeat {r + 1}: torchdistill, cache_output{' + channels_last' if cl else ''} ({phase})")
            add(arm, phase, A.torchdistill_run(task, work, f"{arm}-{phase}-{r}", r, cache_dir=cache,
                                               channels_last=cl))
    store = work / f"fc-store-{r}"
    reporter.message(f"repeat {r + 1}: featcache extract, then distill --method kd")
    add("fc-kd", "extract", A.featcache_extract(task, work, f"fc-extract-{r}", store))
    add("fc-kd", "run", A.featcache_distill(task, work, f"fc-kd-{r}", store, r, False))
    reporter.message(f"repeat {r + 1}: featcache distill --online")
    add("fc-online", "run", A.featcache_distill(task, work, f"fc-online-{r}", store, r, True))
    reporter.message(f"repeat {r + 1}: the limit, a bare PyTorch loop of the student step")
    add("bare", "run", A.bare_run(task, work, f"bare-{r}", r))
    return records


def view_check(task: Task, work: Path, data: Path, views: int, reporter: Reporter) -> dict[str, Any]:
    """The second part: under random crop + flip, each tool's cached output in epoch 2 against the teacher on the
    pixels its student sees then."""
    from dataclasses import replace

    from featcache.bench.peers import arms as A
    from featcache.bench.peers.evaluate import featcache_view_check
    from featcache.bench.peers.report import view_summary

    small = replace(task, data_root=data, epochs=2, batch_size=16)
    reporter.message("view check: torchdistill's cache under random crop + flip")
    td = A.torchdistill_run(small, work, "view-td", 0, cache_dir=work / "view-td-cache", channels_last=False,
                            mode="view-check")
    reporter.message(f"view check: featcache extract --views {views}, then the distill loader's epoch 2")
    store = work / "view-fc-store"
    x = A.featcache_extract(small, work, "view-fc-extract", store, views=views)
    return {PEER: view_summary(td["samples"]), "featcache": featcache_view_check(store, x["key"], data, 16)}


def _remove(work: Path, remove: bool) -> None:
    if remove:
        from featcache.util.fileio import remove_tree

        remove_tree(work)


def bench_peers(data_root: Path, *, images: int = 5000, test_images: int = 1000, epochs: int = 5, repeats: int = 3,
                students: int = 5, threads: int = 1, teacher_checkpoint: Path | None = None, view_samples: int = 64,
                views: int = 4, scratch: Path | None = None, keep: bool = False,
                reporter: Reporter | None = None) -> dict[str, Any]:
    """The arms over ``repeats`` interleaved rounds and the view check; the runs, their summary and the header."""
    from featcache.bench.extract import load_1min, utc_now, versions
    from featcache.bench.peers import arms as A
    from featcache.bench.peers.arms import Task
    from featcache.bench.peers.evaluate import CommonEvaluation

    check_sizes(images=images, test_images=test_images, epochs=epochs, repeats=repeats, students=students,
                threads=threads, view_samples=view_samples, views=views)
    version = peer_version()
    reporter = reporter or Reporter()
    made = scratch is None
    work = Path(tempfile.mkdtemp(prefix="featcache-bench-peers-")) if scratch is None else Path(scratch)
    work.mkdir(parents=True, exist_ok=True)
    try:
        reporter.message(f"copying {images:,} + {test_images:,} images into {work}")
        d = prepare(Path(data_root), work, images, test_images, view_samples)
        source = teacher_weights(teacher_checkpoint, d["num_classes"], work / "teacher.pt")
        task = Task(d["data"], work / "teacher.pt", d["num_classes"], d["image_size"], epochs, d["images"],
                    threads=threads)
        evaluation = CommonEvaluation(d["data"])
        load, runs = [load_1min()], []
        for r in range(repeats):
            runs += run_repeat(task, work, r, evaluation, reporter)
            load.append(load_1min())
        views_result = view_check(task, work, d["view_data"], views, reporter) if view_samples else {}
    except A.ArmFailed:
        raise  # the folder stays: the message names the failed run's log in it
    except BaseException:
        _remove(work, made and not keep)
        raise
    _remove(work, made and not keep)
    return {"benchmark": "peers", "date": utc_now(), "versions": {**versions(), PEER: version},
            "cpus": os.cpu_count(), "threads": threads, "load_1min": load, "teacher": source,
            "images": d["images"], "test_images": d["test_images"], "image_size": d["image_size"],
            "epochs": epochs, "repeats": repeats, "students": students, "arms": list(ARM_KEYS),
            "runs": runs, "summary": summarize(runs, students), "views": views_result,
            "scratch": str(work) if keep or not made else None}
