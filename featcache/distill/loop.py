"""The training loop shared by distill and train-teacher: setup → epoch → record → checkpoint, once per epoch.

    run = _open(s, parts)                      # the test loader; a fresh start, or the state of --resume
    for epoch in ...:
        stats = _train_epoch(run, epoch)       # every batch: hidden labels masked, one step, sums kept on the device
        ev = evaluate(...)                     # test accuracy on the whole split (Eq. 6 of the multi-teacher paper)
        _record(run, epoch, stats, ev)         # metrics.jsonl and the console line
        _checkpoint(run, epoch, ev)            # checkpoint-last.pt, and checkpoint-best.pt when it improved

The pieces of a step (AMP, translators' optimizer, DDP, torch.compile) are featcache.distill.engine's; the files are
featcache.runs.rundir's (Checkpoint: the checkpoints' one schema).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from featcache.cache.commands import command_or
from featcache.distill import resume
from featcache.distill.bn import calibration_images, recalibrate
from featcache.distill.engine import DistillSummary, TrainingParts, training_parts
from featcache.distill.evaluation import eval_loader, evaluate
from featcache.distill.loader import shutdown_workers
from featcache.distill.preflight import preflight_lines
from featcache.distill.setup import Setup
from featcache.errors import FeatcacheError
from featcache.runs import rundir
from featcache.runs.loggers import RunLoggers, open_loggers
from featcache.runs.rundir import BEST, CONFIG, LAST, METRICS, SUMMARY, Checkpoint
from featcache.transforms import Geometry
from featcache.util import distributed
from featcache.util.progress import Reporter
from featcache.util.runtime import PeakRSS, device_name


@dataclass
class _Run:
    """What lasts across a run's epochs."""

    s: Setup
    t: TrainingParts
    tests: Any  # the test split's loader
    reporter: Reporter
    main: bool  # rank 0 (or no torchrun): evaluates, prints and writes the files
    unlabeled: bool  # no training label is read at all
    hidden: torch.Tensor | None  # [n] bool on the device: labels --labels hides (None: all read)
    calibration: torch.Tensor | None = None  # --bn-recalibrate's training images (uint8, on the device; rank 0)
    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    elapsed: float = 0.0
    last_acc: float = 0.0
    images: int = 0  # training images seen, every epoch of this attempt
    seconds: float = 0.0  # their training time
    logs: RunLoggers = field(default_factory=RunLoggers)  # metrics.jsonl and --log's loggers (rank 0; none elsewhere)

    @property
    def run_dir(self) -> Path:
        return Path(self.s.config.run_dir)


@dataclass
class _EpochStats:
    """One epoch's sums, kept on the device (a host sync only every 25 steps)."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | None = None
    labelled: torch.Tensor | None = None  # the samples train accuracy counts
    finite: torch.Tensor | None = None  # every loss of the epoch finite
    seen: int = 0
    noise: int = 0
    batches: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.labelled = torch.zeros((), dtype=torch.int64, device=self.device)
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)

    def add(self, batch, loss: torch.Tensor, parts: dict[str, torch.Tensor], logits: torch.Tensor,
            unlabeled: bool) -> int:
        """Account one step; returns its real (non-noise) samples."""
        self.finite &= torch.isfinite(loss.detach()).all()  # no host sync: read where the loop syncs anyway
        real = len(batch) - batch.num_noise
        self.sums["loss"] = self.sums.get("loss", 0) + loss.detach().float() * len(batch)
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0) + v.float() * len(batch)
        if not unlabeled:  # a hidden label (-1) never equals an argmax
            self.correct += (logits[:real].argmax(1) == batch.labels[:real]).sum()
            self.labelled += (batch.labels[:real] >= 0).sum()
        self.seen += real
        self.noise += batch.num_noise
        self.batches += 1
        return real

    def train_acc(self, unlabeled: bool) -> float | None:
        return None if unlabeled else self.correct.item() / max(self.labelled.item(), 1)


def train(s: Setup, reporter: Reporter | None = None) -> DistillSummary:
    """The training loop of a prepared run (a distilled student, or a teacher being fine-tuned)."""
    main = distributed.context().is_main  # under torchrun only rank 0 evaluates, prints and writes files
    reporter = reporter if (reporter is not None and main) else Reporter()
    t = training_parts(s)
    run = _open(s, t, reporter, main)
    if isinstance(run, DistillSummary):  # --resume of a run that had finished
        return run
    rss = PeakRSS(interval=0.05).__enter__()  # what the run holds at its peak: the teachers' cost when --online
    try:
        if main:
            run.logs = open_loggers(s, run.run_dir)
        for epoch in range(run.start_epoch, t.total_epochs):
            t0 = time.perf_counter()
            stats = _train_epoch(run, epoch)
            t.sched.step()
            if t.tsched is not None:
                t.tsched.step()
            if run.calibration is not None:  # precise BN before evaluating (and so in the checkpoint)
                recalibrate(_unwrapped(t.student), run.calibration, t.step.normalize, s.config.batch_size, s.device,
                            s.precision, s.config.channels_last)
            # Rank 0 evaluates on the whole test split; the others get its numbers.
            ev = evaluate(t.student, run.tests, s.transform, s.device, s.precision,
                          s.config.channels_last) if main else None
            ev = distributed.broadcast(ev)
            run.last_acc = ev.acc
            run.elapsed += time.perf_counter() - t0
            run.images += stats.seen
            run.seconds += stats.seconds
            record, improved = _record(run, epoch, stats, ev, t0)
            _checkpoint(run, epoch, ev, improved)
            _announce(run, epoch, stats, record, improved)  # after the checkpoint: an epoch said done is saved
    except Exception as exc:  # a crash, not Ctrl-C: failed.json (`featcache runs ls` shows the run as failed)
        rundir.record_failure(run.run_dir, exc, write=main)  # first: a logger failing to close must not hide it
        run.logs.close(quiet=True)  # what the loggers hold is flushed and let go (finish is for a run that ended)
        raise
    finally:
        rss.__exit__(None, None, None)
        t.loader.close()
        shutdown_workers(run.tests)
    return _finish(run, rss.peak)


def _open(s: Setup, t: TrainingParts, reporter: Reporter, main: bool) -> _Run | DistillSummary:
    """The test loader, the run directory, and the state to start from: fresh, or the last checkpoint's."""
    config, device = s.config, s.device
    if t.resident:  # the test split decoded once too, instead of once per epoch
        from featcache.distill.resident import ResidentSplit

        tests = ResidentSplit(s.test.with_transform(Geometry(s.transform)), config.batch_size * 2, t.workers, device)
    else:
        tests = eval_loader(s.test, s.transform, config.batch_size * 2, t.workers, device)
    unlabeled = s.labels is not None and s.labels.count == 0
    # Labels the run may not read (--labels) become -1 on the device before the method sees the batch.
    hidden = (None if s.labels is None or s.labels.complete or unlabeled
              else torch.from_numpy(~s.labels.mask).to(device))
    run = _Run(s, t, tests, reporter, main, unlabeled, hidden)
    if main:
        decoded = getattr(t.loader, "images", None) if t.resident else None  # the split at the same geometry
        run.calibration = calibration_images(_unwrapped(t.student), s.train, s.transform, config.bn_recalibrate,
                                             config.seed, t.workers, device, decoded)
    if main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
    if config.resume:
        done = _resume(run)
        if done is not None:
            t.loader.close()
            shutdown_workers(tests)
            return done
    elif main:
        (run.run_dir / METRICS).unlink(missing_ok=True)
    if main:
        for line in preflight_lines(s, t):  # what the run will do, before its first step
            reporter.message(line)
        write_config(run.run_dir, s, t.loader, t.placement)
    return run


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper: rank 0 alone recalibrates (no collective calls)."""
    return getattr(model, "module", model)


def _resume(run: _Run) -> DistillSummary | None:
    """Load the last checkpoint into the run; the finished run's summary when there is nothing left to train."""
    s, t = run.s, run.t
    ck = Checkpoint.load(run.run_dir / LAST, map_location=s.device,
                         hint="start the run again into a fresh --run-dir (or delete the file)")
    resume.check_same_inputs(run.run_dir, [c.key for c in s.caches],
                             {"train": s.train.identity(), "test": s.test.identity()},
                             s.labels.record(s.train.sample_ids) if s.labels is not None else None)
    if resume.finished(ck.epoch, t.total_epochs):
        return _finished_summary(s, ck, t.total_epochs, run.reporter)
    t.student.load_state_dict(ck.student)
    t.method.load_state_dict(ck.method)
    t.step.opt.load_state_dict(ck.optimizer)
    t.sched.load_state_dict(ck.scheduler)
    if t.step.topt is not None:
        t.step.topt.load_state_dict(ck.translator_optimizer)
        t.tsched.load_state_dict(ck.translator_scheduler)
    t.step.scaler.load_state_dict(ck.scaler)
    torch.set_rng_state(ck.rng["torch"])
    run.start_epoch, run.best_acc, run.best_epoch, run.elapsed = ck.epoch + 1, ck.best_acc, ck.best_epoch, ck.elapsed
    if run.main:
        rundir.truncate_metrics(run.run_dir, run.start_epoch)
    run.reporter.message(f"resuming {run.run_dir} at epoch {run.start_epoch + 1}/{t.total_epochs}")
    return None


def _train_epoch(run: _Run, epoch: int) -> _EpochStats:
    s, t = run.s, run.t
    t.loader.set_epoch(epoch)
    t.student.train()
    t.method.train()
    stats = _EpochStats(s.device)
    label = f"epoch {epoch + 1}/{t.total_epochs} {t.method.stage(epoch) if t.total_epochs != s.config.epochs else ''}"
    # run.elapsed: every epoch before this one (a resumed run's too): their mean paces the epochs still to come
    run.reporter.start(t.loader.images_per_epoch(), label.rstrip(), unit="img",
                       run=(t.total_epochs - epoch - 1, run.elapsed / epoch if epoch else None))
    t0 = time.perf_counter()
    for batch in t.loader:
        if run.unlabeled:
            # Nothing downstream may read the training labels: hand the method a tensor of -1s.
            batch.labels = torch.full_like(batch.labels, -1)
        elif run.hidden is not None:  # noise rows (last) keep their teacher labels
            n = len(batch) - batch.num_noise
            batch.labels[:n] = batch.labels[:n].masked_fill(run.hidden[batch.index[:n]], -1)
        if t.warmup is not None:
            t.warmup.step(epoch, stats.batches)
        loss, parts, logits = t.run_step(batch, epoch)
        real = stats.add(batch, loss, parts, logits, run.unlabeled)
        if stats.batches % 25 == 0:  # a host sync only every 25 steps: progress display and divergence check
            check_finite(stats.finite, epoch, stats.batches, s.caches)
            run.reporter.advance(real, loss=f"{(stats.sums['loss'] / (stats.seen + stats.noise)).item():.4f}")
        else:
            run.reporter.advance(real)
    check_finite(stats.finite, epoch, stats.batches, s.caches)  # before anything of this epoch is evaluated or saved
    if t.warmup is not None:
        t.warmup.end_epoch()
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    stats.seconds = time.perf_counter() - t0
    run.reporter.stop()
    return stats


def _record(run: _Run, epoch: int, stats: _EpochStats, ev, t0: float) -> tuple[dict[str, Any], bool]:
    """The epoch's line in metrics.jsonl; returns it, and whether its test accuracy is the best yet."""
    t, ctx = run.t, distributed.context()
    denom = max(stats.seen + stats.noise, 1)
    sums = stats.sums
    record = {
        "epoch": epoch + 1,
        "stage": t.method.stage(epoch),
        "train_loss": (sums["loss"] / denom).item() if "loss" in sums else None,
        **{f"train_{k}": (v / denom).item() for k, v in sums.items() if k != "loss"},
        "train_acc": stats.train_acc(run.unlabeled),
        "test_acc": ev.acc,
        "test_loss": ev.loss,
        "lr": t.step.opt.param_groups[0]["lr"],
        "images_per_s": stats.seen / stats.seconds if stats.seconds > 0 else None,
        "noise_images": stats.noise,
        "epoch_seconds": round(time.perf_counter() - t0, 3),
    }
    if ctx.active:
        record["ranks"] = ctx.world
        record["images_per_s"] = record["images_per_s"] and record["images_per_s"] * ctx.world
    if run.main:
        run.logs.log_epoch(epoch + 1, record)  # metrics.jsonl first, then --log's loggers
    improved = ev.acc > run.best_acc
    if improved:
        run.best_acc, run.best_epoch = ev.acc, epoch + 1
    return record, improved


def _announce(run: _Run, epoch: int, stats: _EpochStats, record: dict[str, Any], improved: bool) -> None:
    acc = stats.train_acc(run.unlabeled)
    run.reporter.message(
        f"epoch {epoch + 1}/{run.t.total_epochs}: loss {record['train_loss']:.4f} · "
        f"{'' if acc is None else f'train acc {acc:.2%} · '}"
        f"test acc {record['test_acc']:.2%}{' (best)' if improved else ''} · "
        f"{record['images_per_s'] or 0:,.0f} img/s"
    )


def _checkpoint(run: _Run, epoch: int, ev, improved: bool) -> None:
    t = run.t
    if not run.main:
        return
    topt, tsched = t.step.topt, t.tsched
    ck = Checkpoint(
        student=t.student.state_dict(), epoch=epoch, test_acc=ev.acc, best_acc=run.best_acc,
        best_epoch=run.best_epoch, elapsed=run.elapsed, method=t.method.state_dict(),
        optimizer=t.step.opt.state_dict(), scheduler=t.sched.state_dict(),
        translator_optimizer=topt.state_dict() if topt else None,
        translator_scheduler=tsched.state_dict() if tsched else None,
        scaler=t.step.scaler.state_dict(), rng={"torch": torch.get_rng_state()},
    )
    ck.save(run.run_dir / LAST)
    if improved:
        ck.save(run.run_dir / BEST, best=True)


def _finish(run: _Run, peak_rss: int | None) -> DistillSummary:
    s, ctx = run.s, distributed.context()
    summary = DistillSummary(
        run_dir=run.run_dir, best_acc=run.best_acc, best_epoch=run.best_epoch, last_acc=run.last_acc,
        epochs=run.t.total_epochs, seconds=run.elapsed,
        images_per_s=ctx.world * run.images / run.seconds if run.seconds else 0.0,
        teachers=[c.key for c in s.caches], method=run.t.method.name, student=s.config.student,
        peak_rss_bytes=peak_rss, online=s.config.online,
    )
    if run.main:
        done = {**asdict(summary), "run_dir": str(run.run_dir)}
        rundir.write_json(run.run_dir / SUMMARY, done)
        try:
            run.logs.finish(done)
        except Exception as exc:  # a logger of --log failed at the end: recorded like any failure
            rundir.record_failure(run.run_dir, exc)
            raise
    distributed.barrier()  # no rank leaves before the run's files are complete
    return summary


def _finished_summary(s: Setup, ck: Checkpoint, total_epochs: int, reporter: Reporter) -> DistillSummary:
    """A resumed run that had already finished: say so and change nothing (its summary.json is written only if the
    run was stopped between its last checkpoint and its summary)."""
    run_dir = Path(s.config.run_dir)
    summary = DistillSummary(
        run_dir=run_dir, best_acc=float(ck.best_acc), best_epoch=int(ck.best_epoch), last_acc=float(ck.test_acc),
        epochs=total_epochs, seconds=float(ck.elapsed), images_per_s=resume.images_per_s(rundir.read_metrics(run_dir)),
        teachers=[c.key for c in s.caches], method=s.method.name, student=s.config.student, online=s.config.online,
    )
    if distributed.context().is_main and not (run_dir / SUMMARY).is_file():
        rundir.write_json(run_dir / SUMMARY, {**asdict(summary), "run_dir": str(run_dir)})
    reporter.message(f"{run_dir} is complete ({total_epochs}/{total_epochs} epochs); nothing to resume")
    distributed.barrier()
    return summary


def check_finite(finite: torch.Tensor, epoch: int, step: int, caches: list) -> None:
    """Stop the run when a loss of this epoch was NaN or inf (one host read of a flag kept on the device), naming
    a cached row that is not finite when there is one."""
    if bool(finite.item()):
        return
    where = f"the loss became NaN or inf in epoch {epoch + 1} (by step {step}); no checkpoint of this epoch was saved"
    for cache in caches:
        bad = cache.first_nonfinite()
        if bad is not None:
            field_, row = bad
            raise FeatcacheError(f"{where}: cache {cache.key} holds a non-finite {field_} value in row {row}; "
                                 f"re-extract it with `{command_or(cache.manifest, 'featcache extract ...')} "
                                 "--force` (--dtype float32 if fp16 overflowed)")
    raise FeatcacheError(f"{where}; lower --lr or the --lambda-* weights, or check the method's parameters")


def write_config(run_dir: Path, s: Setup, loader, placement=None) -> None:
    """config.json: what the run is (featcache.runs.rundir reads it back, checked)."""
    info = {
        "config": s.config.to_dict(),
        "method": s.method.name,
        "teachers": [
            {"key": c.key, "teacher": c.manifest.teacher.name, "num_features": c.num_features, "mode": m}
            # --online: the loader reads no cache; the caches' teachers make the rows (resume and report read them)
            for c, m in zip(s.caches, ["online"] * len(s.caches) if s.config.online else loader.modes, strict=True)
        ],
        "transform": s.transform.to_dict(),
        "head_classes": list(s.test.classes),  # what the student's logits cover, in order
        "student": s.model.describe() if hasattr(s.model, "describe") else s.config.student,  # type: ignore[operator]  # duck-typed: checked by hasattr
        "student_kwargs": s.student_kwargs,
        "kind": s.kind,
        # --labels: which training labels the run read (spec, count, and a hash of those samples' ids)
        "labels": s.labels.record(s.train.sample_ids) if s.labels is not None else None,
        "dataset": {"train": s.train.identity(), "test": s.test.identity()},
        "device": device_name(s.device),
        "precision": s.precision,
        "shuffle": loader.shuffle,
        "loader": loader.describe(),  # resident or streaming (with --resident unset, what the default chose)
        "placement": placement.record() if placement is not None else None,  # and why (featcache.distill.placement)
        "threads": torch.get_num_threads(),
        "views": loader.views.to_dict() if getattr(loader, "views", None) else None,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rundir.write_json(run_dir / CONFIG, info)
