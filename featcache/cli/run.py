"""`featcache run`, `demo` and `report`: recipes and their tables."""

from __future__ import annotations

import os
from typing import Any

from featcache.cli.app import app, err, out, user_errors
from featcache.cli.tables import Col, Grid, print_draws, print_rows, print_task_table
from featcache.config import DemoConfig, ReportConfig, RunConfig
from featcache.config.flags import as_command, cli_parameters, config_from_cli
from featcache.errors import ConfigError


def report(**values: Any) -> None:
    from featcache.runs.draws import draw_arms, markdown_draws, teacher_draws
    from featcache.runs.report import build_rows, find_runs, load_record, markdown_table, plot_curves
    from featcache.util.fileio import write_text_atomic

    cfg = config_from_cli(ReportConfig, values)
    records = [load_record(d) for d in find_runs(cfg.runs)]
    rows = build_rows(records, group_seeds=not cfg.per_seed)
    draws = teacher_draws({k for r in records for k in r.teacher_keys}, cfg.cache_dir, cfg.stores)
    arms = draw_arms(rows, draws) if not cfg.per_seed else []
    print_rows(rows, cfg.title or f"{len(records)} run(s)")
    print_draws(arms)
    if cfg.markdown is not None:
        try:
            cfg.markdown.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--markdown {cfg.markdown}: its folder cannot be made ({exc.strerror or exc})") from None
        write_text_atomic(cfg.markdown, markdown_table(rows) + markdown_draws(arms), flag="--markdown")
        out.print(f"markdown table: {cfg.markdown}", highlight=False)
    if cfg.plot is not None:
        out.print(f"accuracy curves: {plot_curves(records, cfg.plot, cfg.title)}", highlight=False)


as_command(report, cli_parameters(ReportConfig),
           doc="Table of best/final test accuracy per run (rich + markdown) and PNG accuracy curves.")
app.command("report")(user_errors(report))


def run_cmd(**values: Any) -> None:
    from featcache.pipeline import load_pipeline

    cfg = config_from_cli(RunConfig, values)
    pipeline = load_pipeline(cfg.recipe, data_root=cfg.data_root, runs_dir=cfg.runs_dir)
    pipeline.stores += list(cfg.stores)  # --store adds to the recipe's
    _run_pipeline(pipeline, cache_dir=cfg.cache_dir, device=cfg.device, workers=cfg.workers, dry_run=cfg.dry_run,
                  rerun_stale=cfg.rerun_stale)


as_command(run_cmd, cli_parameters(RunConfig),
           doc="Run a recipe: teachers → extracts → distill runs → report; stages whose outputs exist are skipped.")
app.command("run")(user_errors(run_cmd))


def demo(**values: Any) -> None:
    from featcache.pipeline.demo import DEMO_THREADS, demo_recipe, seed_gains

    try:
        cfg = config_from_cli(DemoConfig, values)
        seed_list = tuple(int(x) for x in cfg.seeds)
    except ValueError:
        raise ConfigError(f"--seeds {values.get('seeds')!r}: expected integers separated by commas, e.g. 0,1,2",
                          flag="--seeds") from None
    if not seed_list:
        raise ConfigError("--seeds: give at least one seed", flag="--seeds")
    pipeline = demo_recipe(cfg.runs_dir, seeds=seed_list)
    # Two torch threads whatever the core count: float sums split over another thread count round differently, and
    # the demo should print the same numbers on every machine of a kind (docs/results.md says what still differs).
    pinned = os.environ.get("FEATCACHE_THREADS")
    os.environ["FEATCACHE_THREADS"] = pinned or str(DEMO_THREADS)
    try:
        _run_pipeline(pipeline, cache_dir=cfg.runs_dir / "cache", device=cfg.device, workers=cfg.workers,
                      dry_run=cfg.dry_run, rerun_stale=cfg.rerun_stale)
    finally:
        if pinned is None:
            os.environ.pop("FEATCACHE_THREADS", None)
    if not cfg.dry_run:
        for seed, alone, helped in seed_gains(pipeline):
            out.print(f"seed {seed}: alone {alone:.2%} · with the cached teacher {helped:.2%} · "
                      f"{(helped - alone) * 100:+.2f} points", highlight=False)


as_command(demo, cli_parameters(DemoConfig),
           doc="Offline, CPU, minutes: train a small teacher, cache it, distill a student with and without it, "
               "compare.")
app.command("demo")(user_errors(demo))


_STATE_STYLE = {"done": "green", "resume": "yellow", "run": "cyan", "waits": "dim", "stale": "red"}


def _run_pipeline(pipeline, *, cache_dir, device, workers, dry_run, rerun_stale=False) -> dict:
    from featcache.pipeline import STALE_DIR, describe_plan, plan, run_pipeline
    from featcache.util.progress import RichReporter

    stages = plan(pipeline, cache_dir=cache_dir, device=device, workers=workers)
    grid = Grid(f"plan for {pipeline.name} ({len(stages)} stages, outputs in {pipeline.runs_dir}):",
                [Col("stage", give="fold"), Col("kind"), Col("state", style=_STATE_STYLE.get),
                 Col("detail", give="fold")])
    for row in describe_plan(stages):
        grid.add(*row)
    grid.print()
    stale = sum(s.state == "stale" for s in stages)
    if dry_run:
        if stale:
            out.print(f"{stale} stale stage(s): their outputs were made with other values than the recipe now asks; "
                      f"a run refuses them unless --rerun-stale (which moves them to "
                      f"{pipeline.runs_dir / STALE_DIR}) or they are deleted", highlight=False, markup=False)
        return {}
    result = run_pipeline(pipeline, cache_dir=cache_dir, device=device, workers=workers,
                          reporter=RichReporter(err, transient=True), rerun_stale=rerun_stale,
                          log=lambda m: out.print(m, highlight=False, markup=False))
    if result.get("rows"):
        print_rows(result["rows"], pipeline.report.get("title", pipeline.name))
        print_draws(result.get("draws") or [])
    if result.get("amalgamate"):
        print_task_table(result["amalgamate"],
                         f"amalgamation: per-task test accuracy (%) — "
                         f"{', '.join(map(str, pipeline.amalgamate_dirs().values()))}")
    for k in ("markdown", "plot", "amalgamate_markdown"):
        if result.get(k):
            out.print(f"{k}: {result[k]}", highlight=False)
    return result
