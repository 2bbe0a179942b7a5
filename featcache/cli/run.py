"""`featcache run`, `demo` and `report`: recipes and their tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from featcache.cli.app import app, err, out, user_errors
from featcache.cli.tables import print_rows, print_task_table
from featcache.config import STORES_HELP
from featcache.errors import ConfigError


@app.command()
@user_errors
def report(
    runs: List[Path] = typer.Argument(..., help="Run directories, or directories holding runs (e.g. runs/)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as markdown to this file."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write a PNG of test accuracy per epoch (needs matplotlib)."),
    title: Optional[str] = typer.Option(None, "--title"),
    per_seed: bool = typer.Option(False, "--per-seed", help="One row per run instead of mean ± std over seeds."),
) -> None:
    """Table of best/final test accuracy per run (rich + markdown) and PNG accuracy curves."""
    from featcache.report import build_rows, find_runs, load_record, markdown_table, plot_curves

    records = [load_record(d) for d in find_runs(runs)]
    rows = build_rows(records, group_seeds=not per_seed)
    print_rows(rows, title or f"{len(records)} run(s)")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_table(rows))
        out.print(f"markdown table: {markdown}", highlight=False)
    if plot is not None:
        out.print(f"accuracy curves: {plot_curves(records, plot, title)}", highlight=False)


@app.command("run")
@user_errors
def run_cmd(
    recipe: Path = typer.Argument(..., help="A pipeline recipe (TOML), e.g. pipelines/cifar10-quick.toml."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Override the recipe's [dataset] data_root."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Override the recipe's runs_dir."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    stores: Optional[List[Path]] = typer.Option(None, "--store", help=STORES_HELP + " Added to the recipe's."),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only."),
    rerun_stale: bool = typer.Option(
        False, "--rerun-stale", help="Move the outputs of stale stages (made with other values than the recipe now "
        "asks) to RUNS/.stale/ and run those stages again; without it, run refuses to go on."),
) -> None:
    """Run a recipe: teachers → extracts → distill runs → report; stages whose outputs exist are skipped."""
    from featcache.pipeline import load_pipeline

    pipeline = load_pipeline(recipe, data_root=data_root, runs_dir=runs_dir)
    pipeline.stores += list(stores or [])
    _run_pipeline(pipeline, cache_dir=cache_dir, device=device, workers=workers, dry_run=dry_run,
                  rerun_stale=rerun_stale)


@app.command()
@user_errors
def demo(
    runs_dir: Path = typer.Option(
        Path("runs/demo"), "--runs-dir", help="Where the demo's runs, cache, table and PNG go."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Student seeds, comma-separated."),
    device: str = typer.Option("cpu", "--device", help="cpu by default: the demo is sized for a laptop CPU."),
    workers: Optional[int] = typer.Option(0, "--workers"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only."),
    rerun_stale: bool = typer.Option(
        False, "--rerun-stale", help="Move runs made with other settings (an earlier demo) to RUNS/.stale/ and run "
        "them again."),
) -> None:
    """Offline, CPU, minutes: train a small teacher, cache it, distill a student with and without it, compare."""
    from featcache.demo import DEMO_THREADS, demo_recipe, seed_gains

    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seed_list:
        raise ConfigError("--seeds: give at least one seed")
    pipeline = demo_recipe(runs_dir, seeds=seed_list)
    # Two torch threads whatever the core count: float sums split over another thread count round differently, and
    # the demo should print the same numbers on every machine of a kind (docs/results.md says what still differs).
    pinned = os.environ.get("FEATCACHE_THREADS")
    os.environ["FEATCACHE_THREADS"] = pinned or str(DEMO_THREADS)
    try:
        _run_pipeline(pipeline, cache_dir=runs_dir / "cache", device=device, workers=workers, dry_run=dry_run,
                      rerun_stale=rerun_stale)
    finally:
        if pinned is None:
            os.environ.pop("FEATCACHE_THREADS", None)
    if not dry_run:
        for seed, alone, helped in seed_gains(pipeline):
            out.print(f"seed {seed}: alone {alone:.2%} · with the cached teacher {helped:.2%} · "
                      f"{(helped - alone) * 100:+.2f} points", highlight=False)


def _run_pipeline(pipeline, *, cache_dir, device, workers, dry_run, rerun_stale=False) -> dict:
    from featcache.pipeline import STALE_DIR, describe_plan, plan, run_pipeline
    from featcache.progress import RichReporter

    stages = plan(pipeline, cache_dir=cache_dir, device=device, workers=workers)
    out.print(f"plan for {pipeline.name} ({len(stages)} stages, outputs in {pipeline.runs_dir}):", highlight=False)
    for line in describe_plan(stages):
        out.print("  " + line, highlight=False, markup=False)
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
    if result.get("amalgamate"):
        print_task_table(result["amalgamate"],
                         f"amalgamation: per-task test accuracy (%) — {pipeline.runs_dir / 'amalgamate'}")
    for k in ("markdown", "plot", "amalgamate_markdown"):
        if result.get(k):
            out.print(f"{k}: {result[k]}", highlight=False)
    return result
