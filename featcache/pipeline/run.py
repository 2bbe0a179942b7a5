"""Running a recipe's plan: every stage that is not done, in order, then the report."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable

from featcache.config import DistillConfig, ExtractConfig, TeacherConfig
from featcache.errors import ConfigError, RunLockedError
from featcache.pipeline.jobs import TeacherSpec, distill_jobs
from featcache.pipeline.plan import (
    extract_config,
    job_config,
    job_differs,
    move_stale,
    plan,
    stale_message,
    teacher_config,
)
from featcache.pipeline.recipe import Pipeline, recipe_terms
from featcache.runs.rundir import CONFIG, METRICS, SUMMARY
from featcache.util.fileio import printable, write_text_atomic
from featcache.util.progress import Reporter

_log = logging.getLogger(__name__)


def run_pipeline(p: Pipeline, *, cache_dir: Path | None = None, device: str = "auto", workers: int | None = None,
                 reporter: Reporter | None = None, log: Callable[[str], None] | None = None,
                 rerun_stale: bool = False) -> dict[str, Any]:
    """Execute every stage that is not done, in order; returns the report paths and the distill run directories.
    ``log`` receives a line per stage (default: this module's logger, at INFO; the CLI prints them).

    Stale stages (outputs made with other values than the recipe now asks, see ``plan``) are refused before anything
    runs, unless ``rerun_stale``: their directories are then moved under RUNS/.stale/ and the stages run again."""
    from featcache.distill.trainer import distill
    from featcache.extract import extract

    reporter, log = reporter or Reporter(), log or _log.info
    stages = plan(p, cache_dir=cache_dir, device=device, workers=workers)
    stale = [s for s in stages if s.state == "stale"]
    if stale and not rerun_stale:
        raise ConfigError(stale_message(p, stale))
    if stale:
        for src, dst in move_stale(p, stale):
            log(f"[stale] {src} moved to {dst}")
        stages = plan(p, cache_dir=cache_dir, device=device, workers=workers)
    keys: dict[str, str] = {}
    tables: dict[int, list] = {}  # seed -> the amalgamation's per-task table
    busy: list[str] = []  # runs another process was training: a second `featcache run` shares the recipe's work
    waiting: set[str] = set()  # teachers another process is training: their caches and students wait for it
    for stage in stages:
        if stage.kind == "teacher" and stage.state != "done":
            if not _train_teacher_stage(p, stage, device, workers, reporter, busy, log):
                waiting.add(stage.payload.name)
        elif _waits_for_teacher(p, stage, waiting, busy, log):
            continue
        elif stage.kind == "extract":
            t = stage.payload
            cfg = extract_config(p, t, cache_dir, device, workers)
            with recipe_terms(ExtractConfig, f"[[teachers]] {t.name!r} extract."):
                result = extract(cfg, reporter)
            keys[t.name] = result.key
            log(f"[extract] {t.name}: {'cache ' + result.key + ' reused' if result.reused else 'wrote ' + result.key}")
        elif stage.kind == "distill" and stage.state != "done":
            log(f"[distill] {stage.name}: {'resuming' if stage.state == 'resume' else 'starting'}")
            config = job_config(p, stage.payload, keys, run_dir=stage.run_dir, resume=stage.state == "resume",
                                cache_dir=cache_dir, device=device, workers=workers)
            with _unless_busy("distill", stage.name, busy, log):
                with recipe_terms(DistillConfig, f"[[distill]] {stage.name} options."):
                    log(f"[distill] {stage.name}: {distill(config, reporter).line()}")
        elif stage.kind == "amalgamate":
            with _unless_busy("amalgamate", f"seed {stage.payload}", busy, log):
                tables[stage.payload] = _amalgamate(p, keys, stage.payload, cache_dir, device, workers, reporter,
                                                    log).table
    if busy:
        log(f"[run] {len(busy)} stage(s) were being trained by another process ({', '.join(busy[:3])}"
            f"{', …' if len(busy) > 3 else ''}): run the recipe again once they end to include them in the report")
    report = write_report(p, cache_dir)
    if tables:
        from featcache.distill.amalgamate import summarize

        report["amalgamate"] = summarize(tables)
        report["amalgamate_markdown"] = _write_task_table(p, tables)
    return report


def _train_teacher_stage(p: Pipeline, stage, device: str, workers: int | None, reporter: Reporter,
                         busy: list[str], log) -> bool:
    """Train (or resume) a recipe's teacher; False when another process holds its run directory (noted in ``busy``)."""
    from featcache.teach import train_teacher

    t: TeacherSpec = stage.payload
    log(f"[teacher] {t.name}: {'resuming' if stage.state == 'resume' else 'training'} {t.teacher}")
    tc = teacher_config(p, t, device=device, workers=workers, run_dir=stage.run_dir, resume=stage.state == "resume")
    before = len(busy)
    with _unless_busy("teacher", t.name, busy, log):
        with recipe_terms(TeacherConfig, f"[[teachers]] {t.name!r} train."):
            train_teacher(tc, reporter)
    return len(busy) == before


def _waits_for_teacher(p: Pipeline, stage, waiting: set[str], busy: list[str], log) -> bool:
    """Whether ``stage`` waits for a teacher another process is training (``waiting``), said in the log: its cache (or
    the cache of a teacher taking its weights, ``teacher:NAME``, which then waits too), the students of those caches,
    an amalgamation over them."""
    if not waiting:
        return False
    if stage.kind == "extract":
        t = stage.payload
        source = t.weights.split(":", 1)[1] if isinstance(t.weights, str) and t.weights.startswith("teacher:") else None
        if t.name not in waiting and source not in waiting:
            return False
        waiting.add(t.name)
        log(f"[extract] {t.name}: waits for its teacher, which another process is training")
        return True
    if stage.kind == "distill" and stage.state != "done" and waiting & set(stage.payload.teachers):
        busy.append(f"distill {stage.name}")
        log(f"[distill] {stage.name}: waits for its teacher, which another process is training")
        return True
    if stage.kind == "amalgamate" and waiting & set((p.amalgamate or {}).get("teachers", [])):
        busy.append(f"amalgamate seed {stage.payload}")
        log(f"[amalgamate] seed {stage.payload}: waits for a source teacher, which another process is training")
        return True
    return False


@contextlib.contextmanager
def _unless_busy(kind: str, name: str, busy: list[str], log):
    """Skip a stage whose run directory another process holds (it is training it), noting it in ``busy``."""
    try:
        yield
    except RunLockedError as exc:
        busy.append(f"{kind} {name}")
        log(f"[{kind}] {name}: skipped, another featcache process (pid {exc.holder}) is training {exc.directory}")


def _amalgamate(p: Pipeline, keys: dict[str, str], seed: int, cache_dir, device, workers, reporter, log):
    from featcache.distill.amalgamate import AmalgamateConfig, amalgamate

    a = p.amalgamate
    tasks = {k: p.resolve_classes(v) for k, v in a["tasks"].items()} if a.get("tasks") else p.parts()
    options = dict(a.get("options", {}))
    typed = {k: options.pop(k) for k in ("batch_size", "lr") if k in options}  # amalgamate's own options
    cfg = AmalgamateConfig(
        teachers=[keys[t] for t in a["teachers"]], parts=tasks, student=a.get("student", AmalgamateConfig.student),
        component_student=a.get("component_student"), dataset=p.dataset, data_root=p.data_root,
        dataset_options=dict(p.dataset_options), epochs=a.get("epochs", AmalgamateConfig.epochs),
        component_epochs=a.get("component_epochs"), options=options, cache_dir=cache_dir, stores=list(p.stores),
        seed=seed, run_dir=p.amalgamate_dirs()[seed], device=device, workers=workers, **typed,
    )
    return amalgamate(cfg, reporter, log=log)


def distill_runs(p: Pipeline) -> list[Path]:
    """The recipe's distill run directories that have finished at least one epoch, as the recipe now asks: a run
    made with other values (a stale one, see ``plan``) is never mixed into the report."""
    out = []
    for job in distill_jobs(p.distill):
        d = p.runs_dir / job.name
        if ((d / SUMMARY).is_file() or (d / METRICS).is_file()) and not (
                (d / CONFIG).is_file() and job_differs(p, job, d, keys=None)):
            out.append(d)
    return out


def _write_task_table(p: Pipeline, tables: dict) -> Path:
    """The amalgamation's per-task table as markdown next to the runs (amalgamate.md): over several seeds, mean ±
    std and then each seed's row."""
    from featcache.distill.amalgamate import summarize

    head = "| task | classes | source teacher(s) % | component % | target % |"
    rule = "| --- | ---: | ---: | ---: | ---: |"
    seeds = ", ".join(map(str, tables))
    text = f"# {p.report.get('title', p.name)}: per-task test accuracy\n\n"
    if len(tables) > 1:
        text += f"Mean ± std over seeds {seeds}.\n\n"
    text += "\n".join([head, rule] + ["| " + " | ".join(row.cells()) + " |" for row in summarize(tables)]) + "\n"
    if len(tables) > 1:
        text += "\n## Per seed\n\n| seed " + head + "\n| ---: " + rule + "\n"
        text += "".join(f"| {seed} | " + " | ".join(row.cells()) + " |\n" for seed, t in tables.items() for row in t)
    path = report_path(p, "amalgamate.md", "amalgamate.md")
    write_text_atomic(path, text, flag="the amalgamation table", what="runs folder")
    return path


def report_path(p: Pipeline, name: str, label: str) -> Path:
    """``RUNS/name`` for a report file, its folder made; refused in one line when a link in the runs folder leads
    it out (the recipe's own value was checked when it was parsed: relative, no '..')."""
    path = p.runs_dir / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        inside = path.parent.resolve().is_relative_to(p.runs_dir.resolve())
    except OSError as exc:
        raise ConfigError(f"{label}: {printable(str(path))} cannot be written ({exc.strerror or exc}); choose "
                          "another runs folder (--runs-dir)") from None
    if not inside:
        raise ConfigError(f"{label}: {printable(str(path))} leads out of the runs folder {printable(str(p.runs_dir))} "
                          "through a symbolic link; a recipe's report stays inside it: remove the link")
    return path


def write_report(p: Pipeline, cache_dir: Path | None = None) -> dict[str, Any]:
    """The report of the recipe's runs: the table (a row per teacher draw), the arms over several teacher draws
    (``draws``) and the curves."""
    from featcache.runs.draws import draw_arms, markdown_draws, teacher_draws
    from featcache.runs.report import build_rows, load_record, markdown_table, plot_curves

    records = [load_record(d) for d in distill_runs(p)]
    out: dict[str, Any] = {"runs": [str(r.run_dir) for r in records], "rows": build_rows(records)}
    out["draws"] = draw_arms(out["rows"], teacher_draws({k for r in records for k in r.teacher_keys}, cache_dir,
                                                        p.stores))
    if not records:
        return out
    md = report_path(p, p.report.get("markdown", "report.md"), "[report] markdown")
    title = p.report.get("title", p.name)
    write_text_atomic(md, f"# {title}\n\n{markdown_table(out['rows'])}{markdown_draws(out['draws'])}",
                      flag="[report] markdown", what="runs folder")
    out["markdown"] = md
    if p.report.get("plot"):
        out["plot"] = plot_curves(records, report_path(p, p.report["plot"], "[report] plot"), title,
                                  flag="[report] plot")
    return out
