"""Every table featcache prints goes through `Grid`: on any terminal width it keeps every column and every cell whole.

The first column says which run, cache or model a row is. Where the columns do not fit, prose wraps at its spaces,
then a long name folds over lines within its column (never cut: a truncated "convnet…" or key could be several);
where even that does not fit, each row becomes a block, its first cell whole on a line of its own and the other
cells below it. Rendered by hand, not by rich's Table: rich shrinks columns it cannot fit down to an ellipsis, and
takes ~0.8 s to lay out a thousand rows (`cache ls` of a large store), this a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from rich.cells import cell_len, chop_cells
from rich.markup import escape

from featcache.cli.app import out
from featcache.util.fileio import printable

FOLD_MIN = 16  # a name folded narrower than this is hard to read: the rows become blocks instead
GIVES = ("keep", "wrap", "fold")


@dataclass(frozen=True)
class Col:
    """A column: its header, which side its cells keep to, and how they give way on a narrow terminal: ``keep``
    (never broken: a status, a short number), ``wrap`` (at spaces: prose, "59.17 ± 23.72", a list of names) or
    ``fold`` (anywhere, down to FOLD_MIN: a long name). ``style`` gives a cell's rich style from its text."""

    name: str
    right: bool = False
    give: Literal["keep", "wrap", "fold"] = "keep"
    style: Callable[[str], str | None] | None = None


@dataclass
class Grid:
    """A table: plain-text cells (never rich markup: names from disk are shown as they are), the first column the
    row's identity; a title above and a caption below, both plain text too."""

    title: str
    cols: list[Col]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.cols):
            raise ValueError(f"{len(cells)} cells for {len(self.cols)} columns")
        self.rows.append([printable(str(c), limit=None) for c in cells])  # control characters shown, never obeyed

    def widths(self, width: int) -> tuple[list[int], int] | None:
        """Each column's width and the gap between columns at ``width`` cells, or None where the columns cannot fit
        (the rows are then blocks). Prose gives way first, then headers (at their spaces), then names; within each,
        the widest column first."""
        natural = [max([cell_len(c.name)] + [cell_len(r[i]) for r in self.rows]) for i, c in enumerate(self.cols)]
        low = [self._narrowest(i, n) for i, n in enumerate(natural)]
        gap = 2 if sum(natural) + 2 * (len(natural) - 1) <= width else 1
        widths = list(natural)
        excess = sum(widths) + gap * (len(widths) - 1) - width
        for gives in (("wrap",), ("wrap", "keep"), ("wrap", "keep", "fold")):
            while excess > 0:
                movable = [i for i, c in enumerate(self.cols) if c.give in gives and widths[i] > low[i]]
                if not movable:
                    break
                widest = max(movable, key=lambda i: widths[i])
                widths[widest] -= 1
                excess -= 1
        return (widths, gap) if excess <= 0 else None

    def _narrowest(self, i: int, natural: int) -> int:
        col = self.cols[i]
        header = max(map(cell_len, col.name.split() or [""]))  # a header wraps at its spaces in any column
        if col.give == "fold":
            return max(header, min(natural, FOLD_MIN))
        if col.give == "wrap":
            return max([header] + [cell_len(w) for r in self.rows for w in _words(r[i])])
        return max([header] + [cell_len(r[i]) for r in self.rows])

    def lines(self, width: int) -> list[str]:
        """The table under its title as rich markup lines, none wider than ``width`` except a block's first cell
        (whole on its own line, so that it can be copied: the terminal wraps it, a pipe keeps it)."""
        if not self.rows:
            return []
        fit = self.widths(width)
        return self._table(*fit) if fit is not None else self._blocks(width)

    def _table(self, widths: list[int], gap: int) -> list[str]:
        sep = " " * gap
        header = [_cell_lines(c.name, w) for c, w in zip(self.cols, widths, strict=True)]
        lines = _join(header, widths, self.cols, sep, ["bold"] * len(widths))
        lines.append(sep.join("─" * w for w in widths))
        for row in self.rows:
            cells = [_cell_lines(text, w) for text, w in zip(row, widths, strict=True)]
            styles = [_style(c, text) for c, text in zip(self.cols, row, strict=True)]
            lines += _join(cells, widths, self.cols, sep, styles)
        return lines

    def _blocks(self, width: int) -> list[str]:
        """A row per block: its identity on a line of its own, then "column value" for each other cell, two
        spaces in, packed at " · " and wrapped at ``width``."""
        lines = []
        for row in self.rows:
            lines.append(escape(row[0]))
            parts = [(f"{c.name} {text}", _style(c, text)) for c, text in zip(self.cols[1:], row[1:], strict=True)
                     if text.strip()]
            lines += _pack(parts, width - 2, indent="  ")
        return lines

    def print(self) -> None:
        """Print the title, the table at the console's width, then the caption; rich wraps the
        title and caption at their spaces."""
        if self.title:
            out.print(printable(self.title, limit=None), highlight=False, markup=False)
        if self.rows:
            out.print("\n".join(self.lines(console_width())), highlight=False, soft_wrap=True)
        if self.caption:
            out.print(self.caption, style="dim", highlight=False, markup=False)


def console_width() -> int:
    """The width tables are laid out at: the terminal's, else $COLUMNS, else 80 (rich's rule for a pipe)."""
    return out.width


def _style(col: Col, text: str) -> str | None:
    return col.style(text) if col.style else None


def _cell_lines(text: str, width: int) -> list[str]:
    """A cell's lines at ``width``: wrapped at its spaces, a word longer than the column folded anywhere (a name
    folds within a column as narrow as FOLD_MIN, prose only down to its longest word: `Grid.widths`)."""
    if cell_len(text) <= width:
        return [text]
    lines: list[str] = []
    line = ""
    for word in _words(text):
        if line and cell_len(line) + 1 + cell_len(word) <= width:
            line += " " + word
            continue
        if line:
            lines.append(line)
        pieces = chop_cells(word, width) if cell_len(word) > width else [word]
        lines += pieces[:-1]
        line = pieces[-1]
    return lines + [line] if line else lines


def _words(text: str) -> list[str]:
    """The words a cell wraps between: a "±" stays with the number before it ("59.17 ±" / "23.72")."""
    words: list[str] = []
    for w in text.split():
        if w == "±" and words:
            words[-1] += " ±"
        else:
            words.append(w)
    return words


def _join(cells: list[list[str]], widths: list[int], cols: list[Col], sep: str,
          styles: list[str | None]) -> list[str]:
    """One row's cells, each a list of lines, side by side, each in its style; the last cell unpadded."""
    height = max(map(len, cells))
    lines = []
    for k in range(height):
        parts = []
        for lines_i, w, col, s in zip(cells, widths, cols, styles, strict=True):
            text = lines_i[k] if k < len(lines_i) else ""
            pad = " " * (w - cell_len(text))
            shown = f"[{s}]{escape(text)}[/]" if s and text else escape(text)
            parts.append(pad + shown if col.right else shown + pad)
        lines.append(sep.join(parts).rstrip())
    return lines


def _pack(parts: list[tuple[str, str | None]], width: int, indent: str) -> list[str]:
    """Parts joined with " · " into lines of at most ``width`` cells (a part longer than a line wraps at spaces)."""
    lines: list[str] = []
    line, used = "", 0
    for text, style in parts:
        for k, piece in enumerate(_cell_lines(text, max(width, FOLD_MIN))):
            n = cell_len(piece)
            shown = f"[{style}]{escape(piece)}[/]" if style else escape(piece)
            if used and (k or used + 3 + n > width):
                lines.append(indent + line)
                line, used = "", 0
            line, used = (line + " · " + shown, used + 3 + n) if used else (shown, n)
    return lines + [indent + line] if used else lines


def print_task_table(rows: list, title: str) -> None:
    grid = Grid(title, [Col("task", give="fold"), Col("classes", right=True), Col("source teacher(s)", give="wrap"),
                        Col("component", right=True, give="wrap"), Col("target", right=True, give="wrap")])
    for row in rows:
        grid.add(*row.cells())
    grid.print()


def print_rows(rows, title: str) -> None:
    """The report's table: a row per arm (a run, or runs that differ only in their seed)."""
    from featcache.runs.report import columns, kept_apart

    cells = [row.cells() for row in rows]
    # What keeps look-alike rows apart ("[train fingerprint 0c31dd]") is said under the table, each such row
    # numbered in its method cell: in the cell it would push the accuracy columns off an 80-column terminal.
    marked = [row for row in rows if row.first.apart]
    for row, c in zip(rows, cells, strict=True):
        if row in marked:
            c["method"] = f"{c['method'][:-len(row.first.mark)]} ({marked.index(row) + 1})"
    cols = columns(rows)
    grid = Grid(title, [_report_col(col) for col in cols])
    for c in cells:
        grid.add(*(c[col] for col in cols))
    grid.print()
    for note in kept_apart(rows):
        out.print(note, highlight=False, markup=False)  # names from disk: never rich markup
    for k, row in enumerate(marked):
        out.print(f"  ({k + 1}) {', '.join(row.first.apart)}", highlight=False, markup=False)


def print_draws(arms) -> None:
    """The arms learnt from several teacher draws: mean ± std over all their runs, the between-teacher spread."""
    from featcache.runs.draws import DRAW_COLUMNS

    if not arms:
        return
    grid = Grid("over teacher draws: mean ± std over all runs; between teachers: std of the draws' means",
                [_report_col(col) for col in DRAW_COLUMNS])
    for arm in arms:
        cells = arm.cells()
        grid.add(*(cells[col] for col in DRAW_COLUMNS))
    grid.print()


def _report_col(name: str) -> Col:
    """Numbers wrap at their spaces ("59.17 ±" / "23.72"); the model and method fold; lists wrap between names."""
    if name.endswith("%") or name in ("seeds", "epochs", "draws", "runs", "between teachers"):
        return Col(name, right=True, give="wrap")
    return Col(name, give="wrap" if name in ("teachers", "labels") else "fold")
