"""The runs of `featcache bench peers`, each in its own process as a user would start it: featcache's through its
CLI (``python -m featcache extract|distill``), torchdistill's through tdrun.py (its example's loop). Per run: the wall
time, the process's peak RSS (``os.wait4``'s rusage of that child), the training time of each epoch, and the cache
it left on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.datasets.folder import class_dirs, list_images
from featcache.errors import ConfigError, FeatcacheError
from featcache.util.fileio import printable, read_json, write_text_atomic

STUDENT = "mobilenetv3_small"  # with --no-small-input: torchvision's mobilenet_v3_small (stride-2 stem)
TEACHER = "resnet18"  # torchvision's resnet18 with a 10-class head in both tools


class ArmFailed(FeatcacheError):
    """A run of the bench exited with an error; its output is in the log the message names."""


@dataclass(frozen=True)
class Task:
    """What every arm trains: the same data, teacher weights, student, objective and schedule."""

    data_root: Path  # train/ and test/ class folders (the bench's subset)
    teacher_weights: Path  # a plain state dict of torchvision's resnet18 (10 classes)
    num_classes: int
    image_size: int
    epochs: int
    train_images: int
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.5  # torchdistill's KDLoss: α·CE + (1-α)·T²·KL; featcache: --lambda-xent α --lambda-kd 1-α
    threads: int = 1


def copy_subset(source: Path, target: Path, split: str, count: int) -> int:
    """The first ``count`` images of ``source/split`` spread evenly over its classes (sorted, as both tools order
    them), copied to ``target/split``; how many were copied."""
    root = source / split
    if not root.is_dir():
        raise ConfigError(f"--data-root {source}: no {split}/ folder; give a folder holding train/ and test/ class "
                          "folders of images (CIFAR-10 as JPEGs: cifar10-jpg/)", flag="--data-root")
    classes = class_dirs(root)
    if len(classes) < 2:
        raise ConfigError(f"--data-root {source}: {split}/ holds {len(classes)} class folder(s), 2 or more needed",
                          flag="--data-root")
    per, extra = divmod(count, len(classes))
    copied = 0
    for i, name in enumerate(classes):
        files = list_images(root / name)[: per + (1 if i < extra else 0)]
        (target / split / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            (target / split / name / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name / f, target / split / name / f)
        copied += len(files)
    return copied


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FEATCACHE_THREADS"):
        env[var] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    return env


# Put on every child's PYTHONPATH: at exit (after the process's work, before the interpreter's teardown, which alone
# adds about 125 MiB to the peak of any process that imported torch and torchvision) it writes the peak RSS so far.
_HWM_HOOK = """import atexit, os
def _featcache_bench_hwm(path=os.environ.get("FEATCACHE_BENCH_HWM_OUT")):
    if path:
        with open("/proc/self/status") as f:
            kb = next((line.split()[1] for line in f if line.startswith("VmHWM")), "")
        with open(path, "w") as f:
            f.write(kb)
atexit.register(_featcache_bench_hwm)
"""


def _hwm_env(env: dict[str, str], log: Path) -> tuple[dict[str, str], Path]:
    hook = log.parent / ".hwm-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_HWM_HOOK)
    out = log.with_suffix(".hwm")
    out.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "FEATCACHE_BENCH_HWM_OUT": str(out)}, out


def _read_hwm(out: Path) -> int | None:
    try:
        text = out.read_text().strip()
    except OSError:
        return None
    return int(text) * 1024 if text.isdigit() else None


def run_child(argv: list[str], log: Path, threads: int, what: str) -> dict[str, Any]:
    """Run one process to its end: wall seconds, its peak RSS as the kernel counts it (``wait4``: the whole process,
    teardown included) and its peak before the interpreter's teardown; a failure is one line naming the log."""
    env, hwm = _hwm_env(child_env(threads), log)
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise ArmFailed(f"bench peers: {what} failed (exit {proc.returncode}); its output is in {printable(str(log))}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "run_rss_bytes": _read_hwm(hwm)}


def tree_size(directory: Path) -> tuple[int, int]:
    """Bytes and regular files under ``directory`` (links not followed)."""
    size = files = 0
    for dirpath, _, names in os.walk(directory):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if not os.path.islink(os.path.join(dirpath, n)):
                size += st.st_size
                files += 1
    return size, files


def torchdistill_run(task: Task, work: Path, name: str, seed: int, *, cache_dir: Path | None,
                     channels_last: bool, mode: str = "train") -> dict[str, Any]:
    """One torchdistill process (tdrun.py); its own timings merged with the wall and RSS measured here."""
    spec = {"data_root": str(task.data_root), "teacher_weights": str(task.teacher_weights),
            "num_classes": task.num_classes, "image_size": task.image_size, "batch_size": task.batch_size,
            "epochs": task.epochs, "lr": task.lr, "temperature": task.temperature, "alpha": task.alpha,
            "seed": seed, "threads": task.threads, "channels_last": channels_last, "mode": mode,
            "cache_dir": str(cache_dir) if cache_dir else None, "student_out": str(work / f"{name}.student.pt"),
            "result_out": str(work / f"{name}.result.json")}
    write_text_atomic(work / f"{name}.spec.json", json.dumps(spec))
    measured = run_child([sys.executable, "-m", "featcache.bench.peers.tdrun", str(work / f"{name}.spec.json")],
                         work / f"{name}.log", task.threads, f"the torchdistill run {name}")
    result = read_json(work / f"{name}.result.json")
    if mode != "train":
        return result
    size, files = tree_size(cache_dir) if cache_dir else (None, None)
    return {**measured, "train_seconds": [e["train_seconds"] for e in result["epochs"]],
            "images_per_epoch": result["epochs"][0]["images"], "own_test_acc": result["epochs"][-1]["test_acc"],
            "student": str(work / f"{name}.student.pt"), "cache_bytes": size, "cache_files": files}


def featcache_extract(task: Task, work: Path, name: str, store: Path, views: int = 1) -> dict[str, Any]:
    """``featcache extract`` of the teacher over the bench's train split at its native size."""
    argv = [sys.executable, "-m", "featcache", "extract", "--teacher", TEACHER, "--weights", str(task.teacher_weights),
            "--num-classes", str(task.num_classes), "--dataset", "folder", "--data-root", str(task.data_root),
            "--image-size", str(task.image_size), "--resize", str(task.image_size), "--batch-size",
            str(task.batch_size), "--workers", "0", "--device", "cpu", "--cache-dir", str(store)]
    if views > 1:
        argv += ["--views", str(views), "--view-policy", "pad-crop-flip"]
    measured = run_child(argv, work / f"{name}.log", task.threads, f"featcache extract ({name})")
    keys = [p for p in store.iterdir() if (p / "manifest.json").is_file()]
    size, files = tree_size(keys[0]) if keys else (0, 0)
    return {**measured, "key": keys[0].name if keys else None, "cache_bytes": size, "cache_files": files}


def featcache_distill(task: Task, work: Path, name: str, store: Path, seed: int, online: bool) -> dict[str, Any]:
    """``featcache distill --method kd`` (cached rows, or the same teacher ``--online``) as a user types it; each
    epoch's training seconds from the rate metrics.jsonl records for it."""
    from featcache.runs.rundir import read_metrics

    run_dir = work / name
    argv = [sys.executable, "-m", "featcache", "distill", "--student", STUDENT, "--no-small-input", "--teacher",
            TEACHER, "--method", "kd", "--lambda-xent", str(task.alpha), "--lambda-kd", str(1 - task.alpha),
            "--temperature", str(task.temperature), "--optimizer", "adam", "--lr", str(task.lr), "--schedule",
            "cosine", "--batch-size", str(task.batch_size), "--epochs", str(task.epochs), "--dataset", "folder",
            "--data-root", str(task.data_root), "--cache-dir", str(store), "--run-dir", str(run_dir), "--seed",
            str(seed), "--workers", "0", "--device", "cpu"] + (["--online"] if online else [])
    measured = run_child(argv, work / f"{name}.log", task.threads, f"featcache distill ({name})")
    epochs = [m for m in read_metrics(run_dir) if m.get("stage") == "train"]
    n = task.train_images
    return {**measured, "run_dir": str(run_dir), "own_test_acc": epochs[-1]["test_acc"], "images_per_epoch": n,
            "train_seconds": [n / m["images_per_s"] for m in epochs]}


def bare_run(task: Task, work: Path, name: str, seed: int) -> dict[str, Any]:
    """The limit: the student step alone in a bare PyTorch loop (bare.py), the task's sizes."""
    spec = {"images": task.train_images, "batch_size": task.batch_size, "image_size": task.image_size,
            "num_classes": task.num_classes, "epochs": task.epochs, "lr": task.lr, "temperature": task.temperature,
            "alpha": task.alpha, "seed": seed, "threads": task.threads, "result_out": str(work / f"{name}.result.json")}
    write_text_atomic(work / f"{name}.spec.json", json.dumps(spec))
    measured = run_child([sys.executable, "-m", "featcache.bench.peers.bare", str(work / f"{name}.spec.json")],
                         work / f"{name}.log", task.threads, f"the bare loop {name}")
    result = read_json(work / f"{name}.result.json")
    return {**measured, "train_seconds": result["train_seconds"], "images_per_epoch": task.train_images}
