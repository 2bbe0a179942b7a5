"""Rich tables shared by several commands (results of runs, amalgamation tasks)."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from featcache.cli.app import out
from featcache.util.fileio import printable


def print_task_table(rows: list, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("task", "classes", "source teacher(s)", "component", "target"):
        table.add_column(col, justify="left" if col in ("task", "source teacher(s)") else "right")
    for row in rows:
        table.add_row(*row.cells())
    out.print(table)


def print_rows(rows, title: str) -> None:
    from featcache.runs.report import columns, kept_apart

    # Cells and title are plain text, never rich markup: a "[tag]" in a method label (or a config.json from someone
    # else) would be swallowed as a style, or stop the table with a markup error.
    table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD)  # no side borders: fits 80 columns
    cells = [{k: printable(v, limit=None) for k, v in row.cells().items()} for row in rows]  # names from disk
    # What keeps look-alike rows apart ("[train fingerprint 0c31dd]") is said under the table, each such row
    # numbered in its method cell: in the cell it would push the accuracy columns off an 80-column terminal.
    marked = [row for row in rows if row.first.apart]
    for row, c in zip(rows, cells, strict=True):
        if row in marked:
            mark = printable(row.first.mark, limit=None)
            c["method"] = f"{c['method'][:-len(mark)]} ({marked.index(row) + 1})"
    cols = columns(rows)
    for col in cols:
        numeric = col.endswith("%") or col in ("seeds", "epochs")
        # On a narrow terminal the numbers wrap at their spaces ("59.17 ±" / "23.72") and the names stay whole:
        # a truncated "convnet…" could be any of several models.
        words = col.split() + [w for c in cells for w in (c[col].split() if numeric else [c[col]])]
        width = max(len(w) for w in words)  # no word is ever cut
        table.add_column(col, justify="right" if numeric else "left", min_width=width, no_wrap=not numeric)
    for c in cells:
        table.add_row(*(Text(c[col]) for col in cols))
    out.print(table)
    for note in kept_apart(rows):
        out.print(note, highlight=False, markup=False)  # names from disk: never rich markup
    for k, row in enumerate(marked):
        out.print(f"  ({k + 1}) {', '.join(row.first.apart)}", highlight=False, markup=False)
