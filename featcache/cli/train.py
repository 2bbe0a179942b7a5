"""`featcache distill`, `train-teacher`, `split-classes`, `amalgamate` and `eval`: training and testing students.

distill's and train-teacher's options are their configs' fields (featcache.config), generated, never listed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featcache.cli.app import app, err, main_rank, out, parse_options, user_errors
from featcache.cli.extract import DATASET_SHORTCUTS, with_shortcuts
from featcache.cli.tables import print_task_table
from featcache.config import AmalgamateConfig, DistillConfig, EvalConfig, SplitClassesConfig, TeacherConfig
from featcache.config.flags import as_command, cli_parameters, config_from_cli
from featcache.errors import ConfigError

SPLIT_FILE = [p for p in DATASET_SHORTCUTS if p.name == "split_file"]


def distill(*, split_file: Path | None = None, **values: Any) -> None:
    from featcache.distill.trainer import distill as run_distill
    from featcache.util.progress import RichReporter

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
    from featcache.teach import train_teacher
    from featcache.util.progress import RichReporter

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


def split_classes_cmd(**values: Any) -> None:
    from featcache.datasets import get_dataset
    from featcache.datasets.base import split_classes
    from featcache.util.fileio import write_text_atomic

    cfg = config_from_cli(SplitClassesConfig, values)
    ds = get_dataset(cfg.dataset, cfg.data_root, "train", **cfg.dataset_options)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {cfg.out}: cannot be made ({exc.strerror or exc}); choose another folder") from None
    for k, names in enumerate(split_classes(ds.classes, cfg.parts, cfg.seed), start=1):
        path = cfg.out / f"part{k}.txt"
        write_text_atomic(path, f"# {cfg.dataset} classes, part {k} of {cfg.parts} (seed {cfg.seed})\n"
                          + "".join(n + "\n" for n in names), flag="--out")
        out.print(f"{path}: {len(names)} classes", highlight=False)


as_command(split_classes_cmd, cli_parameters(SplitClassesConfig),
           doc="Split a dataset's classes into disjoint parts (one file of class names each), for teachers of class "
               "subsets.")
app.command("split-classes")(user_errors(split_classes_cmd))


def amalgamate(**values: Any) -> None:
    from featcache.datasets.base import read_class_list
    from featcache.distill.amalgamate import amalgamate as run_amalgamate
    from featcache.util.progress import RichReporter

    cfg = config_from_cli(AmalgamateConfig, values)
    if not cfg.teachers or not cfg.classes:
        raise ConfigError("amalgamate needs --teacher (the source caches) and --classes (one file per task)")
    cfg.parts = {p.stem: read_class_list(p) for p in cfg.classes}
    r = run_amalgamate(cfg, reporter=RichReporter(err, transient=True), log=lambda m: out.print(m, highlight=False))
    print_task_table(r.table, f"per-task test accuracy (%) — {cfg.run_dir}")


as_command(amalgamate, cli_parameters(AmalgamateConfig),
           doc="Dual-stage adaptive knowledge amalgamation without labels: source teachers → component nets → target "
               "net.")
app.command("amalgamate")(user_errors(amalgamate))


def eval_cmd(**values: Any) -> None:
    from featcache.datasets.base import read_class_list
    from featcache.distill.trainer import evaluate_run

    cfg = config_from_cli(EvalConfig, values)
    if cfg.checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {cfg.checkpoint!r}: choose best or last", flag="--checkpoint")
    parts = {p.stem: read_class_list(p) for p in cfg.classes}
    r = evaluate_run(cfg.run_dir, checkpoint=cfg.checkpoint, device=cfg.device, batch_size=cfg.batch_size,
                     workers=cfg.workers, data_root=cfg.data_root, parts=parts)
    if cfg.json:
        out.print_json(json.dumps(r.to_dict()))
    else:
        out.print(f"{cfg.run_dir} ({cfg.checkpoint}, epoch {r.epoch}): test accuracy {r.acc:.2%} on {r.n:,} images "
                  f"· test loss {r.loss:.4f}", highlight=False)
        for name, ev in r.parts.items():
            out.print(f"  {name}: {ev.acc:.2%} on {ev.n:,} images "
                      f"(predicted among its {len(parts[name])} classes)", highlight=False)


as_command(eval_cmd, cli_parameters(EvalConfig),
           doc="Test accuracy (correct / total, Eq. 6 of the multi-teacher paper) of a run's checkpoint.")
app.command("eval")(user_errors(eval_cmd))
