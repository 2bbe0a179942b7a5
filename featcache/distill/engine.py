"""The training engine shared by distill and train-teacher: the step, the loop, checkpoints, metrics, resume.

The loop: joined batches (uint8 images + cached rows) → normalise on the device → the method's loss under autocast
→ one optimizer for the student and one for translators (multi-teacher paper §3.4) → per-epoch test accuracy
(Eq. 6 of the multi-teacher paper) → metrics.jsonl, best/last checkpoints (files owned by featcache.rundir). Adam
with cosine annealing is the default, the papers' setting (SGD and step schedules are flags).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from featcache import distributed
from featcache.distill import resume
from featcache.distill.loader import JoinedLoader, parse_bytes, shutdown_workers
from featcache.distill.methods import Method, TeacherRows
from featcache.config import DistillConfig
from featcache.distill.evaluation import eval_loader, evaluate
from featcache.distill.setup import Setup, default_run_dir, resident_default, sampling_of, validate
from featcache.errors import ConfigError, FeatcacheError, RunLockedError
from featcache.locks import LOCK_FILE, DirLock
from featcache.progress import Reporter
from featcache import rundir
from featcache.rundir import BEST, CONFIG, LAST, METRICS, SUMMARY  # the run's files (re-exported)
from featcache.runtime import (
    PeakRSS,
    autocast,
    default_workers,
    device_name,
    use_cpu_threads,
)
from featcache.transforms import Augment

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


def make_optimizer(name: str, params, lr: float, config: DistillConfig):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.momentum > 0)


def _make_schedule(opt, config: DistillConfig, total_epochs: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_epochs))
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_size, gamma=config.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


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
        self._loss = method.loss
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
            rows = TeacherRows([e.roundtrip(f).clone() for (f, _), e in zip(outs, self.online_dtypes)],
                               [lg.float().clone() for _, lg in outs])
        return self.step(batch, epoch, rows=rows, x=x)


def training_parts(s: Setup, caches: list | None = None) -> TrainingParts:
    """Student and method on the device, the joined loader over ``caches`` (default: the run's), the step with its
    optimizers, and the schedules."""
    config, device, precision = s.config, s.device, s.precision
    student, method = s.student.to(device), s.method.to(device)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    caches = s.caches if caches is None else caches
    online, online_dtypes = None, None
    if config.online:
        from featcache.cache.codec import RowEncoder
        from featcache.models.teachers import teacher_from_manifest

        if config.noise_per_batch or config.student_blocks or (config.views and any(c.manifest.views for c in caches)):
            raise ConfigError("--online runs plain teachers: drop --noise-per-batch, student blocks and cached views "
                              "(pass --no-views)")
        online = []
        for c in caches:
            m = teacher_from_manifest(c.manifest).model.to(device).eval()
            online.append(m.to(memory_format=torch.channels_last) if config.channels_last else m)
        online_dtypes = [RowEncoder(c.manifest, c.projection(), device) for c in caches]  # as the caches store
        caches = []  # no rows are read: the teachers make them
    resident = resident_default(config, s, caches) if config.resident is None else config.resident
    sampling = sampling_of(s)
    workers = config.workers if config.workers is not None else default_workers(device)
    use_cpu_threads(device, 0 if resident else workers)  # resident: the workers only decode, before training
    if resident:
        from featcache.distill.resident import ResidentLoader

        if config.views and any(c.manifest.views for c in caches):
            raise ConfigError("--resident does not replay cached views; pass --no-views or drop --resident")

        s.train.with_transform(s.transform.geometry())  # decoded once; augmentation happens on the device
        budget = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = free // 2  # leave the other half to the student's activations
        loader = ResidentLoader(
            s.train, caches, batch_size=config.batch_size, seed=config.seed, workers=workers, device=device,
            noise_per_batch=config.noise_per_batch, transform=s.transform, augment=config.augment, max_bytes=budget,
            blocks=bool(config.student_blocks), sampling=sampling,
        )
    else:
        s.train.with_transform(Augment(config.augment, s.transform.geometry()))
        loader = JoinedLoader(
            s.train, caches, batch_size=config.batch_size, shuffle=config.shuffle, seed=config.seed, workers=workers,
            device=device, mode=config.cache_mode, ram_budget=parse_bytes(config.cache_ram),
            noise_per_batch=config.noise_per_batch, transform=s.transform, blocks=bool(config.student_blocks),
            views=config.views, sampling=sampling,
        )
    total_epochs = method.total_epochs(config.epochs)
    opt = make_optimizer(config.optimizer, student.parameters(), config.lr, config)
    translator_params = list(method.translators.parameters())
    topt = (make_optimizer(config.optimizer, translator_params, config.translator_lr or config.lr, config)
            if translator_params else None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = TrainStep(student, method, opt, topt, scaler, s.transform.normalizer(device), device, precision,
                     config.channels_last, config.compile)
    sched = _make_schedule(opt, config, total_epochs)
    tsched = _make_schedule(topt, config, total_epochs) if topt else None
    return TrainingParts(student, method, loader, step, sched, tsched, total_epochs, workers, resident, online,
                         online_dtypes)


# A split is held resident by default when its uint8 images and teacher rows take at most this share of the RAM
# available now (and at most RESIDENT_MAX_BYTES): CIFAR-10 train at 32 px with a 2048-d teacher is 360 MB.


@contextlib.contextmanager
def claim_run_dir(config: DistillConfig) -> Iterator[Path]:
    """Validate flags, lock the run directory for this process (a second distill into it is refused, not
    interleaved), refuse to overwrite a run unless resuming, and seed everything. A directory this call created and
    left without a file of the run is removed again on failure."""
    validate(config)
    run_dir = Path(config.run_dir) if config.run_dir is not None else default_run_dir(config)
    config.run_dir = run_dir
    lock = None
    created = not run_dir.exists()
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


def train(s: Setup, reporter: Reporter | None = None) -> DistillSummary:
    """The training loop of a prepared run (a distilled student, or a teacher being fine-tuned)."""
    ctx = distributed.context()
    main = ctx.is_main  # under torchrun only rank 0 evaluates, prints and writes files
    reporter = reporter if (reporter is not None and main) else Reporter()
    config = s.config
    run_dir = Path(config.run_dir)
    device, precision = s.device, s.precision
    t = training_parts(s)
    student, method, loader, step, sched, tsched = t.student, t.method, t.loader, t.step, t.sched, t.tsched
    opt, topt, scaler, total_epochs = step.opt, step.topt, step.scaler, t.total_epochs
    if t.resident:  # the test split decoded once too, instead of once per epoch
        from featcache.distill.resident import ResidentSplit

        tests = ResidentSplit(s.test.with_transform(s.transform.geometry()), config.batch_size * 2, t.workers, device)
    else:
        tests = eval_loader(s.test, s.transform, config.batch_size * 2, t.workers, device)

    start_epoch, best_acc, best_epoch, elapsed = 0, -1.0, 0, 0.0
    unlabeled = s.labels is not None and s.labels.count == 0
    # Labels the run may not read (--labels) become -1 on the device before the method sees the batch.
    hidden = (None if s.labels is None or s.labels.complete or unlabeled
              else torch.from_numpy(~s.labels.mask).to(device))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if config.resume:
        state = rundir.load_checkpoint(run_dir / LAST, map_location=device,
                                       hint="start the run again into a fresh --run-dir (or delete the file)")
        resume.check_same_inputs(run_dir, [c.key for c in s.caches],
                                 {"train": s.train.identity(), "test": s.test.identity()})
        if resume.finished(state, total_epochs):
            loader.close()
            shutdown_workers(tests)
            return _finished_summary(s, state, total_epochs, reporter)
        student.load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if topt is not None:
            topt.load_state_dict(state["translator_optimizer"])
            tsched.load_state_dict(state["translator_scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, best_acc, best_epoch, elapsed = (state["epoch"] + 1, state["best_acc"], state["best_epoch"],
                                                      state["elapsed"])
        if main:
            rundir.truncate_metrics(run_dir, start_epoch)
        reporter.message(f"resuming {run_dir} at epoch {start_epoch + 1}/{total_epochs}")
    elif main:
        (run_dir / METRICS).unlink(missing_ok=True)
    if main:
        _write_config(run_dir, s, loader)

    train_images_total, train_seconds_total = 0, 0.0
    last_acc = 0.0
    rss = PeakRSS(interval=0.05).__enter__()  # what the run holds at its peak: the teachers' cost when --online
    try:
        for epoch in range(start_epoch, total_epochs):
            loader.set_epoch(epoch)
            student.train()
            method.train()
            sums: dict[str, torch.Tensor] = {}
            correct = torch.zeros((), dtype=torch.int64, device=device)
            labelled = torch.zeros((), dtype=torch.int64, device=device)  # the samples train accuracy counts
            seen = noise_seen = batches = 0
            # every loss of the epoch finite, kept on the device
            finite = torch.ones((), dtype=torch.bool, device=device)
            reporter.start(loader.images_per_epoch(),
                           (f"epoch {epoch + 1}/{total_epochs} "
                            f"{method.stage(epoch) if total_epochs != config.epochs else ''}").rstrip(),
                           unit="img")
            t0 = time.perf_counter()
            for batch in loader:
                if unlabeled:
                    # Nothing downstream may read the training labels: hand the method a tensor of -1s.
                    batch.labels = torch.full_like(batch.labels, -1)
                elif hidden is not None:  # noise rows (last) keep their teacher labels
                    n = len(batch) - batch.num_noise
                    batch.labels[:n] = batch.labels[:n].masked_fill(hidden[batch.index[:n]], -1)
                loss, parts, logits = t.run_step(batch, epoch)
                finite &= torch.isfinite(loss.detach()).all()  # no host sync: read where the loop syncs anyway
                real = len(batch) - batch.num_noise
                sums["loss"] = sums.get("loss", 0) + loss.detach().float() * len(batch)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0) + v.float() * len(batch)
                if not unlabeled:  # a hidden label (-1) never equals an argmax
                    correct += (logits[:real].argmax(1) == batch.labels[:real]).sum()
                    labelled += (batch.labels[:real] >= 0).sum()
                seen += real
                noise_seen += batch.num_noise
                batches += 1
                if batches % 25 == 0:  # a host sync only every 25 steps: progress display and divergence check
                    _check_finite(finite, epoch, batches, s.caches)
                    reporter.advance(real, loss=f"{(sums['loss'] / (seen + noise_seen)).item():.4f}")
                else:
                    reporter.advance(real)
            _check_finite(finite, epoch, batches, s.caches)  # before anything of this epoch is evaluated or saved
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds = time.perf_counter() - t0
            reporter.stop()
            sched.step()
            if tsched is not None:
                tsched.step()
            # Rank 0 evaluates on the whole test split; the others get its numbers.
            ev = evaluate(student, tests, s.transform, device, precision, config.channels_last) if main else None
            ev = distributed.broadcast(ev)
            last_acc = ev.acc
            elapsed += time.perf_counter() - t0
            train_images_total += seen
            train_seconds_total += train_seconds
            denom = max(seen + noise_seen, 1)
            record = {
                "epoch": epoch + 1,
                "stage": method.stage(epoch),
                "train_loss": (sums["loss"] / denom).item() if "loss" in sums else None,
                **{f"train_{k}": (v / denom).item() for k, v in sums.items() if k != "loss"},
                "train_acc": None if unlabeled else correct.item() / max(labelled.item(), 1),
                "test_acc": ev.acc,
                "test_loss": ev.loss,
                "lr": opt.param_groups[0]["lr"],
                "images_per_s": seen / train_seconds if train_seconds > 0 else None,
                "noise_images": noise_seen,
                "epoch_seconds": round(time.perf_counter() - t0, 3),
            }
            if ctx.active:
                record["ranks"] = ctx.world
                record["images_per_s"] = record["images_per_s"] and record["images_per_s"] * ctx.world
            if main:
                rundir.append_metrics(run_dir, record)
            improved = ev.acc > best_acc
            if improved:
                best_acc, best_epoch = ev.acc, epoch + 1
            state = {
                "student": student.state_dict(),
                "method": method.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "translator_optimizer": topt.state_dict() if topt else None,
                "translator_scheduler": tsched.state_dict() if tsched else None,
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "epoch": epoch,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "elapsed": elapsed,
                "test_acc": ev.acc,
            }
            if main:
                rundir.atomic_save(state, run_dir / LAST)
                if improved:
                    rundir.atomic_save({"student": state["student"], "epoch": epoch, "test_acc": ev.acc},
                                      run_dir / BEST)
            reporter.message(
                f"epoch {epoch + 1}/{total_epochs}: loss {record['train_loss']:.4f} · "
                f"{'' if unlabeled else f'train acc {correct.item() / max(labelled.item(), 1):.2%} · '}"
                f"test acc {ev.acc:.2%}{' (best)' if improved else ''} · {record['images_per_s'] or 0:,.0f} img/s"
            )
    finally:
        rss.__exit__(None, None, None)
        loader.close()
        shutdown_workers(tests)
    summary = DistillSummary(
        run_dir=run_dir, best_acc=best_acc, best_epoch=best_epoch, last_acc=last_acc, epochs=total_epochs,
        seconds=elapsed,
        images_per_s=ctx.world * train_images_total / train_seconds_total if train_seconds_total else 0.0,
        teachers=[c.key for c in s.caches], method=method.name, student=config.student, peak_rss_bytes=rss.peak,
        online=config.online,
    )
    if main:
        rundir.write_json(run_dir / SUMMARY, {**asdict(summary), "run_dir": str(run_dir)})
    distributed.barrier()  # no rank leaves before the run's files are complete
    return summary


def _finished_summary(s: Setup, state: dict[str, Any], total_epochs: int, reporter: Reporter) -> DistillSummary:
    """A resumed run that had already finished: say so and change nothing (its summary.json is written only if the
    run was stopped between its last checkpoint and its summary)."""
    run_dir = Path(s.config.run_dir)
    metrics = rundir.read_metrics(run_dir)
    summary = DistillSummary(
        run_dir=run_dir, best_acc=float(state["best_acc"]), best_epoch=int(state["best_epoch"]),
        last_acc=float(state["test_acc"]), epochs=total_epochs, seconds=float(state["elapsed"]),
        images_per_s=resume.images_per_s(metrics), teachers=[c.key for c in s.caches], method=s.method.name,
        student=s.config.student, online=s.config.online,
    )
    if distributed.context().is_main and not (run_dir / SUMMARY).is_file():
        rundir.write_json(run_dir / SUMMARY, {**asdict(summary), "run_dir": str(run_dir)})
    reporter.message(f"{run_dir} is complete ({total_epochs}/{total_epochs} epochs); nothing to resume")
    distributed.barrier()
    return summary


def _check_finite(finite: torch.Tensor, epoch: int, step: int, caches: list) -> None:
    """Stop the run when a loss of this epoch was NaN or inf (one host read of a flag kept on the device), naming
    a cached row that is not finite when there is one."""
    if bool(finite.item()):
        return
    where = f"the loss became NaN or inf in epoch {epoch + 1} (by step {step}); no checkpoint of this epoch was saved"
    for cache in caches:
        bad = cache.first_nonfinite()
        if bad is not None:
            field, row = bad
            raise FeatcacheError(f"{where}: cache {cache.key} holds a non-finite {field} value in row {row}; "
                                 f"re-extract it with `{cache.manifest.command} --force` (--dtype float32 if fp16 "
                                 "overflowed)")
    raise FeatcacheError(f"{where}; lower --lr or the --lambda-* weights, or check the method's parameters")


def _write_config(run_dir: Path, s: Setup, loader: JoinedLoader) -> None:
    info = {
        "config": s.config.to_dict(),
        "method": s.method.name,
        "teachers": [
            {"key": c.key, "teacher": c.manifest.teacher.name, "num_features": c.num_features, "mode": m}
            for c, m in zip(s.caches, loader.modes)
        ],
        "transform": s.transform.to_dict(),
        "head_classes": list(s.test.classes),  # what the student's logits cover, in order
        "student": s.student.describe() if hasattr(s.student, "describe") else s.config.student,
        "student_kwargs": s.student_kwargs,
        "kind": s.kind,
        # --labels: which training labels the run read (spec, count, and a hash of those samples' ids)
        "labels": s.labels.record(s.train.sample_ids) if s.labels is not None else None,
        "dataset": {"train": s.train.identity(), "test": s.test.identity()},
        "device": device_name(s.device),
        "precision": s.precision,
        "shuffle": loader.shuffle,
        "loader": loader.describe(),  # resident or streaming (with --resident unset, what the default chose)
        "threads": torch.get_num_threads(),
        "views": loader.views.to_dict() if getattr(loader, "views", None) else None,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rundir.write_json(run_dir / CONFIG, info)
