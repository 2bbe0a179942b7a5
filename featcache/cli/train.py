"""`featcache distill`, `train-teacher`, `split-classes`, `amalgamate` and `eval`: training and testing students.

distill's and train-teacher's options are their configs' fields (featcache.config), generated, never listed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from featcache.cli.app import app, err, main_rank, out, parse_options, user_errors
from featcache.cli.extract import DATASET_SHORTCUTS, with_shortcuts
from featcache.cli.tables import print_task_table
from featcache.config import STORES_HELP, DistillConfig, TeacherConfig
from featcache.errors import ConfigError
from featcache.flags import as_command, cli_parameters, config_from_cli

SPLIT_FILE = [p for p in DATASET_SHORTCUTS if p.name == "split_file"]


def distill(*, split_file: Path | None = None, **values: Any) -> None:
    from featcache.distill.trainer import distill as run_distill
    from featcache.progress import RichReporter

    options = parse_options(values["dataset_options"], "--dataset-opt")
    if split_file is not None:
        options["split_file"] = split_file
    config = config_from_cli(DistillConfig, values, dataset_options=options)
    main = main_rank()
    summary = run_distill(config, reporter=RichReporter(err, transient=True) if main else None)
    if main:
        out.print(summary.line(), highlight=False)


as_command(distill, with_shortcuts(cli_parameters(DistillConfig), SPLIT_FILE),
           doc="Train a student from cached teacher rows (no teacher network is loaded).")
app.command("distill")(user_errors(distill))


def train_teacher(*, split_file: Path | None = None, **values: Any) -> None:
    from featcache.progress import RichReporter
    from featcache.teach import train_teacher

    options = parse_options(values["dataset_options"], "--dataset-opt")
    if split_file is not None:
        options["split_file"] = split_file
    tc = config_from_cli(TeacherConfig, values, dataset_options=options)
    summary, path = train_teacher(tc, reporter=RichReporter(err, transient=True))
    out.print(summary.line(), highlight=False)
    out.print(f"teacher weights: {path}  (featcache extract --teacher {tc.teacher} --weights {path} ...)",
              highlight=False)


as_command(train_teacher, with_shortcuts(cli_parameters(TeacherConfig), SPLIT_FILE),
           doc="Fine-tune a teacher on a dataset; writes RUN_DIR/teacher.pt for `extract --weights`.")
app.command("train-teacher")(user_errors(train_teacher))


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
    teacher: List[str] = typer.Option(
        ..., "--teacher", "-t", help="Source teacher caches (NAME, KEY or NAME:KEY), repeatable."),
    classes: List[Path] = typer.Option(
        ..., "--classes", help="One file of class names per task (featcache split-classes), repeatable."),
    student: str = typer.Option(
        "resnet18", "--student", "-s", help="Architecture of the component nets and the target."),
    component_student: Optional[str] = typer.Option(
        None, "--component-student", help="Component architecture (default --student)."),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    dataset_opt: Optional[List[str]] = typer.Option(None, "--dataset-opt", "-o"),
    epochs: int = typer.Option(30, "--epochs", help="Target-net epochs."),
    component_epochs: Optional[int] = typer.Option(
        None, "--component-epochs", help="Component-net epochs (default --epochs)."),
    batch_size: int = typer.Option(128, "--batch-size", "-b"),
    lr: float = typer.Option(1e-3, "--lr"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    stores: Optional[List[Path]] = typer.Option(None, "--store", help=STORES_HELP),
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
        options={"batch_size": batch_size, "lr": lr}, cache_dir=cache_dir, stores=list(stores or []), run_dir=run_dir,
        device=device,
        workers=workers,
    )
    r = run_amalgamate(cfg, reporter=RichReporter(err, transient=True), log=lambda m: out.print(m, highlight=False))
    print_task_table(r.table, f"per-task test accuracy (%) — {run_dir}")

@app.command("eval")
@user_errors
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A distill run directory."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    data_root: Optional[Path] = typer.Option(
        None, "--data-root", help="Override the dataset location recorded in the run."),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(256, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    as_json: bool = typer.Option(False, "--json"),
    classes: Optional[List[Path]] = typer.Option(
        None, "--classes", help="Also report accuracy per class part (a file of class names; repeatable)."),
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
        out.print_json(json.dumps(r.to_dict()))
    else:
        out.print(f"{run_dir} ({checkpoint}, epoch {r.epoch}): test accuracy {r.acc:.2%} on {r.n:,} images "
                  f"· test loss {r.loss:.4f}", highlight=False)
        for name, ev in r.parts.items():
            out.print(f"  {name}: {ev.acc:.2%} on {ev.n:,} images "
                      f"(predicted among its {len(parts[name])} classes)", highlight=False)
