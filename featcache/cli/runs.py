"""`featcache runs ls [DIR]`: the run directories under DIR, one line each (the listing is featcache.runs.listing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from featcache.cli.app import err, out, runs_app, user_errors
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


_COLUMNS = ("run", "status", "student", "method", "teachers", "labels", "epochs", "best", "last")
_NUMERIC = ("labels", "epochs", "best", "last")


def _print_runs(runs: list, root: Path) -> None:
    """The table, then a line for each run with something to say (who holds a running one, what stopped a failed
    one): a note in a column would push the others off an 80-column terminal. Names and numbers are never cut (a
    truncated "convnet…" could be several models); where the table does not fit the terminal, each run is a block
    instead (its name on a line of its own, its cells below), so no column, least of all the run's name, is dropped."""
    rows = [[_relative(Path(r.path), root), r.status, r.student, r.method, ", ".join(r.teachers) or "-",
             r.labels_cell(), r.epochs_cell(), _pct(r.best_acc), _pct(r.last_acc)] for r in runs]
    rows = [[printable(cell, None) for cell in row] for row in rows]  # paths and names from others' run dirs
    widths = [max(len(col), *(len(row[i]) for row in rows)) for i, col in enumerate(_COLUMNS)]
    title = f"{len(runs)} run(s) under {escape(str(root))}"
    room = out.width - sum(widths[1:]) - len(widths) + 1  # what the other columns leave the run's name
    if room >= min(widths[0], 16):  # the table, the name folded over lines where it must be
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                      show_edge=False)
        for i, (col, width) in enumerate(zip(_COLUMNS, widths, strict=True)):
            name = min(width, room) if i == 0 else None
            table.add_column(col, justify="right" if col in _NUMERIC else "left", min_width=name or width,
                             max_width=name, no_wrap=i != 0, overflow="fold")
        for row in rows:
            table.add_row(*(_status(cell) if i == 1 else escape(cell) for i, cell in enumerate(row)))
        out.print(table)
    else:  # too narrow for the columns: a block per run, its name whole on a line of its own
        out.print(title, highlight=False, soft_wrap=True)
        for row in rows:
            out.print(escape(row[0]), highlight=False, soft_wrap=True)
            cells = Text.assemble((row[1], _STATUS_STYLE.get(row[1], "white")), *(
                f" · {col} {cell}" for col, cell in zip(_COLUMNS[2:], row[2:], strict=True)))
            out.print(Padding(cells, (0, 0, 0, 2)), highlight=False)
    for r in runs:
        if r.note:
            out.print(f"{escape(printable(_relative(Path(r.path), root), None))}: {r.status}: "
                      f"{escape(printable(r.note, None))}", highlight=False, soft_wrap=True)


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(rel) if rel.parts else str(path)


def _pct(acc: float | None) -> str:
    return "-" if acc is None else f"{acc:.1%}"
