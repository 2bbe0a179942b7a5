"""`featcache runs ls [DIR]`: the run directories under DIR, one line each (the listing is featcache.runs.listing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from featcache.cli.app import err, out, runs_app, user_errors
from featcache.cli.tables import Col, Grid
from featcache.config.commands import RunsLsConfig
from featcache.config.flags import as_command, cli_parameters, config_from_cli
from featcache.util.fileio import printable

_STATUS_STYLE = {"running": "cyan", "finished": "green", "interrupted": "yellow", "failed": "red", "empty": "dim"}


def runs_ls(**values: Any) -> None:
    from featcache.runs.listing import list_runs

    cfg = config_from_cli(RunsLsConfig, values)
    runs = list_runs(cfg.dir, on_skip=lambda note: err.print(f"[yellow]skipped[/] {escape(printable(note, None))}",
                                                            highlight=False, soft_wrap=True))
    if cfg.json:
        typer.echo(json.dumps([r.to_json() for r in runs], indent=2))
        return
    if not runs:
        out.print(f"no runs under {escape(str(cfg.dir))}", highlight=False)
        return
    _print_runs(runs, Path(cfg.dir))


as_command(runs_ls, cli_parameters(RunsLsConfig),
           doc="One line per run under DIR (default ./runs, searched recursively): student, method, teachers, "
               "labels read, epochs done/planned, best and last test accuracy, status (running, finished, "
               "interrupted, failed, empty).")
runs_app.command("ls")(user_errors(runs_ls))


def _print_runs(runs: list, root: Path) -> None:
    """The table (featcache.cli.tables: the run's name folds, never cut; too narrow, a block per run), then a line
    for each run with something to say (who holds a running one, what stopped a failed one): a note in a column
    would push the others off an 80-column terminal."""
    grid = Grid(f"{len(runs)} run(s) under {printable(str(root), None)}",
                [Col("run", give="fold"), Col("status", style=lambda s: _STATUS_STYLE.get(s, "white")),
                 Col("student"), Col("method"), Col("teachers", give="wrap"), Col("labels", right=True),
                 Col("epochs", right=True), Col("best", right=True), Col("last", right=True)])
    for r in runs:  # paths and names from others' run dirs: Grid shows them printable
        grid.add(_relative(Path(r.path), root), r.status, r.student, r.method, ", ".join(r.teachers) or "-",
                 r.labels_cell(), r.epochs_cell(), _pct(r.best_acc), _pct(r.last_acc))
    grid.print()
    for r in runs:
        if r.note:
            out.print(f"{escape(printable(_relative(Path(r.path), root), None))}: {r.status}: "
                      f"{escape(printable(r.note, None))}", highlight=False, soft_wrap=True)


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(rel) if rel.parts else str(path)


def _pct(acc: float | None) -> str:
    return "-" if acc is None else f"{acc:.1%}"
