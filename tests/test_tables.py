"""featcache's tables (featcache.cli.tables.Grid): at any width every row keeps its identity (the first column) whole
and every cell of every column; a name folds within its column, prose wraps at its spaces, and where the columns do not
fit the rows become blocks. The tables of each command are checked at 60, 80 and 200 columns in their own modules;
here, the layout itself and the amalgamation's task table."""

from __future__ import annotations

import pytest
from rich.markup import render

from featcache import cli
from featcache.cli import tables
from featcache.cli.tables import FOLD_MIN, Col, Grid, print_task_table
from helpers import REPO, first_column, shows_whole

# Keys that share all but their last characters: the end is what tells them apart, so a name cut anywhere (or
# shortened to a prefix) would show two caches alike.
KEYS = ["timm-vit-base-patch16-224-augreg-in21k-ft-in1k-imagenet-train-0a2eda9c2f92",
        "timm-vit-base-patch16-224-augreg-in21k-ft-in1k-imagenet-train-0a2eda9c2f93"]


def _grid() -> Grid:
    grid = Grid("caches", [Col("key", give="fold"), Col("teacher"), Col("about", give="wrap"),
                           Col("rows", right=True), Col("status", style=lambda s: "green")])
    for k, key in enumerate(KEYS):
        grid.add(key, "vit_base", "features of the pooled token, fp16, with logits", f"{1000 * (k + 1):,}",
                 "complete")
    return grid


def _plain(lines: list[str]) -> str:
    return "\n".join(render(ln).plain for ln in lines)


@pytest.mark.parametrize("columns", [40, 60, 80, 120, 200])
def test_a_grid_keeps_every_row_name_and_cell_whole_at_any_width(columns):
    text = _plain(_grid().lines(columns))
    shown = first_column(text)
    assert all(key in shown for key in KEYS), text
    assert all(len(ln) <= columns for ln in text.splitlines() if ln not in KEYS), text  # a block heading may not
    for cell in ("vit_base", "1,000", "2,000"):
        assert cell in text, text
    assert " ".join(text.split()).count("features of the pooled token, fp16, with logits") == 2 or columns < 200
    assert text.count("complete") == 2, text
    if columns == 200:  # wide enough: one line per row
        assert len(text.splitlines()) == 2 + len(KEYS) and isinstance(shown, str)
    if columns in (60, 80, 120):  # the key folds within its column, the others keep their cells
        assert isinstance(shown, str) and len(text.splitlines()) > 2 + len(KEYS)
    if columns == 40:  # too narrow for the columns: a block per row, its key whole on a line of its own
        assert shown == KEYS


def test_prose_gives_way_before_a_name_folds():
    grid = _grid()
    natural = grid.widths(200)
    assert natural is not None
    widths, _ = natural
    narrower = grid.widths(sum(widths) + 4 - 10)  # a gap of one between the 5 columns, 10 cells short
    assert narrower is not None and narrower[1] == 1
    assert narrower[0][0] == widths[0] and narrower[0][2] == widths[2] - 10  # "about" wrapped, the key untouched
    squeezed = grid.widths(40 + FOLD_MIN)
    assert squeezed is None or squeezed[0][0] >= FOLD_MIN  # a key never folds narrower than FOLD_MIN


def test_cells_from_disk_are_shown_as_text_never_obeyed():
    grid = Grid("t", [Col("run", give="fold"), Col("status", style=lambda s: "red")])
    grid.add("[bold]x[/bold]\x1b[31m\n", "failed")
    text = _plain(grid.lines(80))
    assert "[bold]x[/bold]\\e[31m\\n" in text and "\x1b" not in text and "failed" in text


def test_the_style_of_a_cell_follows_its_text():
    grid = Grid("t", [Col("run"), Col("status", style=lambda s: {"failed": "red"}.get(s))])
    grid.add("a", "failed")
    grid.add("b", "finished")
    lines = grid.lines(80)
    assert "[red]failed[/]" in lines[2] and "[" not in lines[3]


class _Task:
    def __init__(self, task: str):
        self.task = task

    def cells(self) -> list[str]:
        return [self.task, "10", "81.20 ± 0.50, 79.10 ± 1.20", "84.00 ± 0.30", "85.50 ± 0.20"]


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_the_amalgamation_task_table_keeps_each_task_name(monkeypatch, columns):
    names = ["stanford-dogs-and-oxford-pets-part1-of-4", "stanford-dogs-and-oxford-pets-part2-of-4"]
    monkeypatch.setattr(tables, "console_width", lambda: columns)
    with cli.out.capture() as cap:
        print_task_table([_Task(n) for n in names], "per-task test accuracy (%)")
    text = cap.get()
    assert shows_whole(text, names), text
    assert text.count("85.50 ±") == 2 and text.count("81.20 ±") == 2, text  # a ± stays with its number


# `cache info` is a field/value listing of one cache (named in its title), not rows to tell apart.
_RICH_TABLES_ALLOWED = {"featcache/cli/cache.py"}


def test_every_table_is_a_grid():
    """A table printed with rich's Table would shrink a column it cannot fit to an ellipsis: tables use Grid."""
    found = {str(p.relative_to(REPO)) for p in (REPO / "featcache").rglob("*.py")
             if "rich.table" in p.read_text() or "from rich import table" in p.read_text()}
    assert found <= _RICH_TABLES_ALLOWED, f"{sorted(found - _RICH_TABLES_ALLOWED)}: print tables with Grid"
