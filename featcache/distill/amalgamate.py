"""`featcache amalgamate`: the dual-stage knowledge amalgamation of Shen et al. (CVPR 2019, §3.1), from the cache.

Stage 1: for every task (a part of the classes), the source teachers that cover it are amalgamated (``--method
aka``, no labels) into a *component net* whose head covers that task only. Stage 2: each component net is
extracted like any other teacher (``--teacher run --weights RUN_DIR``), and the components are amalgamated into the
*target net*, whose head covers every task. Component nets, their caches and the target are all kept; a table
reports, per task, the accuracy of each source teacher, component and the target (as in the paper's Tables 3–4).
Every stage skips what already exists, so an interrupted amalgamation continues where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from featcache.cache.store import CacheStore
from featcache.config import AmalgamateConfig  # noqa: F401 - re-exported: its options live in featcache.config
from featcache.datasets import get_dataset
from featcache.distill.resolve import resolve_teachers
from featcache.distill.trainer import LAST, SUMMARY, DistillConfig, distill, evaluate_run
from featcache.errors import ConfigError, check_seed
from featcache.extract import ExtractConfig, extract
from featcache.util.progress import Reporter

_log = logging.getLogger(__name__)


def _distill_config(cfg: AmalgamateConfig, **kw) -> DistillConfig:
    base = DistillConfig(
        dataset=cfg.dataset, data_root=cfg.data_root, dataset_options=dict(cfg.dataset_options), method="aka",
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, cache_dir=cfg.cache_dir, stores=list(cfg.stores),
        device=cfg.device, workers=cfg.workers, **cfg.options,
    )
    return replace(base, **kw)


def _train(config: DistillConfig, log) -> None:
    run = Path(config.run_dir)
    if (run / SUMMARY).is_file():
        log(f"[amalgamate] {run.name}: done")
        return
    config.resume = (run / LAST).is_file()
    log(f"[amalgamate] {run.name}: {'resuming' if config.resume else 'training'}")
    distill(config)


@dataclass
class TaskAccuracy:
    """One task (class part) of the amalgamation table: test accuracy predicted among the task's classes."""

    task: str
    classes: int
    sources: dict[str, float]  # source cache key -> its teacher's accuracy on the task (when its run is known)
    component: float
    target: float

    def cells(self) -> list[str]:
        """task, classes, source teacher(s) %, component %, target % (the CLI's and amalgamate.md's columns)."""
        sources = ", ".join(f"{100 * a:.2f}" for a in self.sources.values()) or "—"
        return [self.task, str(self.classes), sources, f"{100 * self.component:.2f}", f"{100 * self.target:.2f}"]


@dataclass
class TaskSummary:
    """One task over the amalgamation's seeds: each accuracy as mean ± std (one seed: that seed's value)."""

    task: str
    classes: int
    seeds: dict[int, TaskAccuracy]

    def cells(self) -> list[str]:
        from featcache.runs.report import percent

        rows = list(self.seeds.values())
        sources = ", ".join(percent([r.sources[k] for r in rows if k in r.sources]) for k in rows[0].sources) or "—"
        return [self.task, str(self.classes), sources, percent([r.component for r in rows]),
                percent([r.target for r in rows])]


def summarize(tables: dict[int, list[TaskAccuracy]]) -> list[TaskSummary]:
    """seed -> per-task table, as one row per task over the seeds."""
    by_task = {seed: {row.task: row for row in t} for seed, t in tables.items()}
    first = next(iter(tables.values()))
    return [TaskSummary(row.task, row.classes, {seed: rows[row.task] for seed, rows in by_task.items()})
            for row in first]


@dataclass
class AmalgamationResult:
    components: dict[str, Path]  # task -> component-net run directory
    component_keys: dict[str, str]  # task -> the component's cache key
    target: Path  # the target net's run directory
    table: list[TaskAccuracy]


def amalgamate(cfg: AmalgamateConfig, reporter: Reporter | None = None,
               log: Callable[[str], None] | None = None) -> AmalgamationResult:
    """Run both stages; returns the run directories, the component cache keys and the per-task table. ``log``
    receives a line per step (default: this module's logger, at INFO; the CLI prints them)."""
    if len(cfg.parts) < 1:
        raise ConfigError("amalgamate needs at least one task (--classes FILE, repeatable)")
    check_seed("--seed", cfg.seed)
    log = log or _log.info
    train = get_dataset(cfg.dataset, cfg.data_root, "train", **cfg.dataset_options)
    sources = resolve_teachers(cfg.teachers, train, CacheStore(cfg.cache_dir, cfg.stores))
    for name, classes in cfg.parts.items():
        outside = [c for c in classes if c not in train.classes]
        if outside:
            raise ConfigError(f"--classes {name}: {outside[0]!r} is not a class of {cfg.dataset}")
    size = sources[0].manifest.transform.image_size
    components: dict[str, Path] = {}
    component_keys: dict[str, str] = {}
    for task, classes in cfg.parts.items():
        covering = [c.key for c in sources if set(c.manifest.teacher.classes or []) & set(classes)]
        if not covering:
            raise ConfigError(f"task {task}: none of the source teachers covers any of its classes")
        run = cfg.run_dir / f"component-{task}"
        _train(_distill_config(cfg, student=cfg.component_student or cfg.student, teachers=covering,
                               epochs=cfg.component_epochs or cfg.epochs, classes=list(classes), run_dir=run), log)
        components[task] = run
        # With block bridges, the components are cached with the blocks the target will be bridged to.
        blocks = list(cfg.options.get("student_blocks") or [])
        pool = sources[0].manifest.blocks[0].pool if blocks and sources[0].manifest.blocks else 4
        result = extract(ExtractConfig(
            teacher="run", weights=str(run), dataset=cfg.dataset, data_root=cfg.data_root,
            dataset_options=dict(cfg.dataset_options), image_size=size, cache_dir=cfg.cache_dir,
            stores=list(cfg.stores), device=cfg.device, workers=cfg.workers, blocks=blocks, pool=pool,
        ), reporter)
        component_keys[task] = result.key
        log(f"[amalgamate] component {task}: cache {result.key}{' reused' if result.reused else ''}")
    target = cfg.run_dir / "target"
    _train(_distill_config(cfg, student=cfg.student, teachers=list(component_keys.values()), epochs=cfg.epochs,
                           run_dir=target), log)
    table = task_table(cfg, sources, components, target)
    return AmalgamationResult(components, component_keys, target, table)


def task_table(cfg: AmalgamateConfig, sources, components: dict[str, Path], target: Path) -> list[TaskAccuracy]:
    """Per task: accuracy of each source teacher that has a run directory, of the component and of the target."""
    rows = []
    common: dict[str, Any] = {"workers": cfg.workers, "device": cfg.device, "data_root": cfg.data_root}
    for task, classes in cfg.parts.items():
        source_acc = {}
        for c in sources:
            run = cfg.source_runs.get(c.key) or _teacher_run(c)
            if run is not None and set(classes) <= set(c.manifest.teacher.classes or []):
                source_acc[c.key] = evaluate_run(run, parts={task: classes}, **common).parts[task].acc
        rows.append(TaskAccuracy(
            task=task, classes=len(classes), sources=source_acc,
            component=evaluate_run(components[task], **common).acc,
            target=evaluate_run(target, parts={task: classes}, **common).parts[task].acc,
        ))
    return rows


def _teacher_run(cache) -> Path | None:
    """The train-teacher run a cache's weights came from (its teacher.pt sits in the run directory), if it exists."""
    ref = cache.manifest.teacher.weights.ref
    if not ref:
        return None
    run = Path(ref).parent
    from featcache.runs.rundir import BEST, CONFIG

    return run if (run / CONFIG).is_file() and (run / BEST).is_file() else None
