"""The training engine shared by distill and train-teacher: what a training step is made of.

A step: joined batches (uint8 images + cached rows) → normalise on the device → the method's loss under autocast →
one optimizer for the student and one for translators (multi-teacher paper §3.4). ``training_parts`` builds them for
a run (the loader: resident or streaming; Adam with cosine annealing by default, the papers' setting; SGD and step
schedules are flags); ``claim_run_dir`` takes the run directory. The epoch loop is featcache.distill.loop.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from featcache.config import DistillConfig, OptimOptions
from featcache.distill import resume
from featcache.distill.loader import JoinedLoader
from featcache.distill.methods import Method, TeacherRows
from featcache.distill.optim import Warmup, make_optimizer, make_schedule
from featcache.distill.placement import Budget, Placement, resident_cap
from featcache.distill.setup import Setup, default_run_dir, resident_default, resident_need, sampling_of, validate
from featcache.errors import ConfigError, RunLockedError
from featcache.runs.rundir import LAST, run_dir_exists  # the run's files (LAST re-exported)
from featcache.transforms import Augment, Geometry, Normalizer
from featcache.util import distributed
from featcache.util.locks import LOCK_FILE, DirLock
from featcache.util.runtime import (
    autocast,
    default_workers,
    use_cpu_threads,
)


@dataclass
class DistillSummary:
    run_dir: Path
    best_acc: float
    best_epoch: int
    last_acc: float
    epochs: int
    seconds: float
    images_per_s: float
    teachers: list[str]
    method: str
    student: str
    peak_rss_bytes: int | None = None  # this process's resident memory at its highest during training (sampled)
    online: bool = False

    def line(self) -> str:
        return (
            f"best test acc {self.best_acc:.2%} at epoch {self.best_epoch}/{self.epochs} · last {self.last_acc:.2%} · "
            f"{_hms(self.seconds)} · {self.images_per_s:,.0f} img/s · {self.run_dir}"
        )


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# -- set-up ----------------------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _LossModule(torch.nn.Module):
    def __init__(self, student: torch.nn.Module, method: Method) -> None:
        super().__init__()
        self.student, self.method = student, method

    def forward(self, x, y, rows, epoch):
        return self.method.loss(self.student, x, y, rows, epoch)


class TrainStep:
    """One optimisation step: normalise on the device → the method's loss under autocast → backward → the student's
    optimizer and the translators' (multi-teacher paper §3.4). Shared by `distill` and `featcache bench distill`."""

    def __init__(self, student, method: Method, opt, topt, scaler, normalize, device, precision: str,
                 channels_last: bool, compile_mode: str = "none"):
        self.student, self.method, self.opt, self.topt, self.scaler = student, method, opt, topt, scaler
        self.normalize, self.device, self.precision, self.channels_last = normalize, device, precision, channels_last
        self._loss: Callable[..., Any] = method.loss
        if distributed.context().active:
            # DistributedDataParallel over student + method (translators, FA modules): one module whose forward is
            # the method's loss, so every trainable parameter's gradient is averaged across ranks.
            ddp = torch.nn.parallel.DistributedDataParallel(_LossModule(student, method), find_unused_parameters=True)
            self._loss = lambda _student, x, y, rows, epoch: ddp(x, y, rows, epoch)
        if compile_mode != "none":
            # Small students at small inputs are launch-bound on a GPU; compiling the whole loss (student forward,
            # translators, loss terms) fuses kernels, and "reduce-overhead" replays it as a CUDA graph.
            backend = os.environ.get("FEATCACHE_COMPILE_BACKEND", "inductor")
            self._loss = torch.compile(self._loss, mode=None if compile_mode == "default" else compile_mode,
                                       backend=backend)

    def images(self, batch) -> torch.Tensor:
        return self.normalize(batch.images, channels_last=self.channels_last)

    def __call__(self, batch, epoch: int, rows: TeacherRows | None = None, x: torch.Tensor | None = None):
        """``rows`` default to the batch's cached rows (the benchmark passes a live teacher's instead)."""
        x = self.images(batch) if x is None else x
        rows = TeacherRows(batch.features, batch.logits, batch.blocks) if rows is None else rows
        with autocast(self.device, self.precision):
            loss, parts, logits = self._loss(self.student, x, batch.labels, rows, epoch)
        self.opt.zero_grad(set_to_none=True)
        if self.topt is not None:
            self.topt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        if self.topt is not None:
            self.scaler.step(self.topt)
        self.scaler.update()
        return loss, parts, logits


@dataclass
class TrainingParts:
    student: torch.nn.Module
    method: Method
    loader: JoinedLoader
    step: TrainStep
    sched: Any
    tsched: Any
    total_epochs: int
    workers: int
    resident: bool = False
    online: list | None = None  # --online: the teachers' networks, run on every batch
    online_dtypes: list | None = None  # per cache, the RowEncoder the online rows go through (its projection, dtype)
    placement: Placement | None = None  # where rows and images live, and why (printed once, in config.json)
    warmup: Warmup | None = None  # --warmup-epochs: the first epochs' steps at a rising learning rate

    def run_step(self, batch, epoch: int):
        """One training step; with --online the teachers' rows are made now, from the very input the student sees,
        and stored and read back as the caches do (projected, cast or quantised), so the two arms differ only in where
        the rows come from."""
        rows, x = None, None
        if self.online is not None:
            x = self.step.images(batch)
            with torch.inference_mode(), autocast(self.step.device, self.step.precision):
                outs = [m(x) for m in self.online]
            # Clones outside inference mode: the loss may save them for backward (the translators' inputs).
            rows = TeacherRows([e.roundtrip(f).clone() for (f, _), e in zip(outs, self.online_dtypes, strict=True)],
                               [lg.float().clone() for _, lg in outs])
        return self.step(batch, epoch, rows=rows, x=x)


def training_parts(s: Setup, caches: list | None = None) -> TrainingParts:
    """Student and method on the device, the joined loader over ``caches`` (default: the run's), the step with its
    optimizers, and the schedules."""
    config, device, precision = s.config, s.device, s.precision
    student, method = s.model.to(device), s.method.to(device)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    caches = s.caches if caches is None else caches
    online, online_dtypes = _online_teachers(s, caches) if config.online else (None, None)
    if online is not None:
        caches = []  # no rows are read: the teachers make them
    budget = Budget.of(config.cache_ram)
    resident = resident_default(config, s, caches, budget) if config.resident is None else config.resident
    workers = config.workers if config.workers is not None else default_workers(device)
    use_cpu_threads(device, 0 if resident else workers)  # resident: the workers only decode, before training
    loader = _loader(s, caches, resident, workers, budget)
    placement = Placement(resident, config.resident is not None, budget,
                          resident_need(s, caches) if resident else sum(loader.placement.need),
                          list(loader.modes))
    total_epochs = method.total_epochs(config.epochs)
    optim = config.section(OptimOptions)
    opt = make_optimizer(config.optimizer, student.parameters(), config.lr, optim)
    translator_params = list(method.trainable.parameters())
    topt = (make_optimizer(config.optimizer, translator_params, config.translator_lr or config.lr, optim)
            if translator_params else None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = TrainStep(student, method, opt, topt, scaler, Normalizer(s.transform, device), device, precision,
                     config.channels_last, config.compile)
    sched = make_schedule(opt, optim, total_epochs)
    tsched = make_schedule(topt, optim, total_epochs) if topt else None
    warmup = Warmup([opt, topt], config.warmup_epochs or 0, len(loader))
    return TrainingParts(student, method, loader, step, sched, tsched, total_epochs, workers, resident, online,
                         online_dtypes, placement, warmup)


def _online_teachers(s: Setup, caches: list) -> tuple[list, list]:
    """--online: the caches' teachers on the device, and the encoders their rows go through (as the caches store)."""
    from featcache.cache.codec import RowEncoder
    from featcache.models.teachers import teacher_from_manifest

    config, device = s.config, s.device
    if config.noise_per_batch or config.student_blocks or (config.views and any(c.manifest.views for c in caches)):
        raise ConfigError("--online runs plain teachers: drop --noise-per-batch, student blocks and cached views "
                          "(pass --no-views)")
    online = []
    for c in caches:
        m = teacher_from_manifest(c.manifest).model.to(device).eval()
        online.append(m.to(memory_format=torch.channels_last) if config.channels_last else m)
    return online, [RowEncoder(c.manifest, c.projection(), device) for c in caches]


def _loader(s: Setup, caches: list, resident: bool, workers: int, budget: Budget):
    """The epoch's batches: device-resident tensors, or the joined loader streaming from workers and the tables."""
    config, device = s.config, s.device
    sampling = sampling_of(s)
    if not resident:
        s.train.with_transform(Augment(config.augment, Geometry(s.transform)))
        return JoinedLoader(
            s.train, caches, batch_size=config.batch_size, shuffle=config.shuffle, seed=config.seed, workers=workers,
            device=device, mode=config.cache_mode, ram_budget=budget,
            noise_per_batch=config.noise_per_batch, transform=s.transform, blocks=bool(config.student_blocks),
            views=config.views, sampling=sampling,
        )
    from featcache.distill.resident import ResidentLoader

    if config.views and any(c.manifest.views for c in caches):
        raise ConfigError("--resident does not replay cached views; pass --no-views or drop --resident")
    s.train.with_transform(Geometry(s.transform))  # decoded once; augmentation happens on the device
    return ResidentLoader(
        s.train, caches, batch_size=config.batch_size, seed=config.seed, workers=workers, device=device,
        noise_per_batch=config.noise_per_batch, transform=s.transform, augment=config.augment,
        max_bytes=resident_cap(device, budget),
        blocks=bool(config.student_blocks), sampling=sampling,
    )


@contextlib.contextmanager
def claim_run_dir(config: DistillConfig) -> Iterator[Path]:
    """Validate flags, lock the run directory for this process (a second distill into it is refused, not
    interleaved), refuse to overwrite a run unless resuming, and seed everything. A directory this call created and
    left without a file of the run is removed again on failure."""
    validate(config)
    run_dir = Path(config.run_dir) if config.run_dir is not None else default_run_dir(config)
    config.run_dir = run_dir
    lock = None
    created = not run_dir_exists(run_dir)  # a name too long for any file system is one line here
    if distributed.context().is_main:  # torchrun: rank 0 owns the directory for all ranks
        try:
            lock = DirLock(run_dir, "run directory")
            lock.error = RunLockedError
            lock.acquire(wait=False)
        except RunLockedError as exc:
            raise exc.with_hint("wait for that run to end or pick another --run-dir") from None
    try:
        if (run_dir / LAST).is_file() and not config.resume:
            raise ConfigError(f"--run-dir {run_dir} already holds a run; pass --resume to continue it or pick another "
                              "--run-dir")
        if config.resume and not (run_dir / LAST).is_file():
            raise ConfigError(f"--resume: {run_dir / LAST} not found; start the run without --resume")
        if config.resume:
            resume.check_same_flags(run_dir, config)
        _seed_everything(config.seed)
        yield run_dir
    except BaseException:
        if created and lock is not None and all(p.name == LOCK_FILE for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()
