"""The options of `featcache eval`, `split-classes` and `amalgamate`: fields carrying their flags, like every stage's
(their shared options — dataset, data root, -o, device, workers, the stores — are the same declarations: common.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.config.common import (
    STUDENTS_HELP,
    cache_dir_field,
    data_root_field,
    dataset_field,
    dataset_options_field,
    device_field,
    offline_field,
    stores_field,
    workers_field,
)
from featcache.config.flags import opt


@dataclass
class EvalConfig:
    """`featcache eval RUN_DIR`: the test accuracy of a run's checkpoint."""

    run_dir: Path = opt(help="A distill (or train-teacher) run directory.", positional=True, recipe=False)
    checkpoint: str = opt("best", "best or last.", recipe=False)
    data_root: Path | None = data_root_field("Override the dataset location recorded in the run.", recipe=False)
    device: str = device_field(runtime=True, recipe=False)
    # 256: evaluation holds no gradients, so it takes twice a training batch in the same memory
    batch_size: int = opt(256, "Images per evaluation batch.", short="-b", recipe=False)
    workers: int | None = workers_field(recipe=False)
    classes: list[Path] = opt(factory=list, help="Also report accuracy per class part (a file of class names; "
                                                 "repeatable).", form="repeat", recipe=False)
    json: bool = opt(False, "Print the result as JSON.", recipe=False)


@dataclass
class SplitClassesConfig:
    """`featcache split-classes`: a dataset's classes in disjoint parts, one file of names each."""

    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    dataset_options: dict[str, Any] = dataset_options_field(recipe=False)
    parts: int = opt(2, "How many disjoint class parts.", recipe=False)
    seed: int = opt(0, "Seed of the permutation that deals the classes into parts.", recipe=False)
    out: Path = opt(Path("."), "Where part1.txt … partN.txt go.", recipe=False)


@dataclass
class AmalgamateConfig:
    """`featcache amalgamate` (Shen et al. 2019, dual stage): source teachers → one component net per task → the
    target net over all tasks, without labels. ``parts`` (task → class names) comes from the --classes files (CLI)
    or a recipe's tasks/[classes]; ``options`` carries further DistillConfig fields for every net (recipes)."""

    teachers: list[str] = opt(factory=list, help="Source teacher caches (NAME, KEY or NAME:KEY), repeatable.",
                              name="--teacher", short="-t", form="repeat", recipe=False)
    classes: list[Path] = opt(factory=list, help="One file of class names per task (featcache split-classes), "
                                                 "repeatable.", form="repeat", recipe=False)
    parts: dict[str, list[str]] = opt(factory=dict, cli=False, recipe=False)
    student: str = opt("resnet18", "Architecture of the component nets and the target: " + STUDENTS_HELP, short="-s",
                       recipe=False)
    component_student: str | None = opt(None, "Component architecture (default --student).", recipe=False)
    dataset: str = dataset_field(recipe=False)
    data_root: Path | None = data_root_field(recipe=False)
    dataset_options: dict[str, Any] = dataset_options_field(recipe=False)
    epochs: int = opt(30, "Target-net epochs.", recipe=False)
    component_epochs: int | None = opt(None, "Component-net epochs (default --epochs).", recipe=False)
    seed: int = opt(0, "Seed of every net (components and target); a recipe lists [amalgamate] seeds.", recipe=False)
    batch_size: int = opt(128, "Images per step.", short="-b", recipe=False)
    lr: float = opt(1e-3, "Learning rate of every net.", recipe=False)
    options: dict[str, Any] = opt(factory=dict, cli=False, recipe=False)
    cache_dir: Path | None = cache_dir_field(recipe=False)
    stores: list[Path] = stores_field(recipe=False)
    run_dir: Path = opt(Path("runs/amalgamate"), "Where the component runs and the target run go.", runtime=True,
                        recipe=False)
    device: str = device_field(runtime=True, recipe=False)
    workers: int | None = workers_field(recipe=False)
    # source cache key -> its train-teacher run (for the table)
    source_runs: dict[str, Path] = opt(factory=dict, cli=False, recipe=False)


@dataclass
class RunConfig:
    """`featcache run RECIPE`: a recipe's stages, skipping what is done (featcache.pipeline)."""

    recipe: Path = opt(help="A pipeline recipe (TOML), e.g. pipelines/cifar10-quick.toml.", positional=True,
                       recipe=False)
    data_root: Path | None = data_root_field("Override the recipe's [dataset] data_root.", recipe=False)
    runs_dir: Path | None = opt(None, "Override the recipe's runs_dir.", runtime=True, recipe=False)
    cache_dir: Path | None = cache_dir_field(recipe=False)
    stores: list[Path] = stores_field(recipe=False)
    device: str = device_field(runtime=True, recipe=False)
    workers: int | None = workers_field(recipe=False)
    dry_run: bool = opt(False, "Print the plan only.", recipe=False)
    rerun_stale: bool = opt(False, "Move the outputs of stale stages (made with other values than the recipe now asks) "
                                   "to RUNS/.stale/ and run those stages again; without it, run refuses to go on.",
                            recipe=False)


@dataclass
class DemoConfig:
    """`featcache demo`: a small teacher cached, a student with and without it (featcache.pipeline.demo)."""

    runs_dir: Path = opt(Path("runs/demo"), "Where the demo's runs, cache, table and PNG go.", runtime=True,
                         recipe=False)
    seeds: list[int] = opt(factory=lambda: [0, 1, 2], help="Student seeds, comma-separated.", form="comma",
                           recipe=False, cli_default="0,1,2")
    device: str = device_field(runtime=True, recipe=False, cli_default="cpu")  # sized for a laptop CPU
    workers: int | None = workers_field(recipe=False, cli_default=0)
    dry_run: bool = opt(False, "Print the plan only.", recipe=False)
    rerun_stale: bool = opt(False, "Move runs made with other settings (an earlier demo) to RUNS/.stale/ and run them "
                                   "again.", recipe=False)


@dataclass
class ReportConfig:
    """`featcache report RUN...`: the table and curves of finished runs (featcache.runs.report)."""

    runs: list[Path] = opt(factory=list, help="Run directories, or directories holding runs (e.g. runs/).",
                           positional=True, form="repeat", recipe=False)
    markdown: Path | None = opt(None, "Also write the table as markdown to this file.", recipe=False)
    plot: Path | None = opt(None, "Write a PNG of test accuracy per epoch (needs matplotlib).", recipe=False)
    title: str | None = opt(None, "Title of the table and the plot (default: the number of runs).", recipe=False)
    per_seed: bool = opt(False, "One row per run instead of mean ± std over seeds.", recipe=False)
    # where the runs' caches are: their manifests tell which teacher draw each run learnt from
    cache_dir: Path | None = cache_dir_field(recipe=False)
    stores: list[Path] = stores_field(recipe=False)


@dataclass
class StoreOptions:
    """The stores of the `cache` commands (ls, info, verify, rm, publish, export, import, gc)."""

    cache_dir: Path | None = cache_dir_field(recipe=False)
    stores: list[Path] = stores_field(recipe=False)
    offline: bool = offline_field(recipe=False)


@dataclass
class RunsLsConfig:
    """`featcache runs ls [DIR]`: the run directories under DIR, one line each (featcache.runs.listing)."""

    dir: Path = opt(Path("runs"), "Where to look: searched recursively for run directories (distill, train-teacher, "
                                  "recipes' nested runs).", positional=True, recipe=False)
    json: bool = opt(False, "Print a JSON list instead, one object per run with stable keys (path, kind, student, "
                            "method, teachers, teacher_keys, labelled, labelled_total, labelled_fraction, epochs_done, "
                            "epochs_planned, best_acc, last_acc, status, note, started).", recipe=False)
