"""The `featcache` command line. Thin: parse flags, call the library, render with rich, map errors to one line.

One module per command group; the options of extract, distill and train-teacher are generated from their configs'
fields (featcache.config, featcache.config.flags), so a new option is declared once, there.

    app.py       the typer app, consoles, the error policy (user mistakes: one line, exit 2)
    extract.py   extract
    train.py     distill, train-teacher, split-classes, amalgamate, eval
    run.py       run (recipes), demo, report
    runs.py      runs ls
    cache.py     cache ls / info / verify / rm
    bench.py     bench extract / distill / join / trust
    catalog.py   teachers, students, datasets
    tables.py    rich tables shared by several commands
"""

from __future__ import annotations

import sys

from featcache.cli import bench, cache, catalog, extract, run, runs, train  # noqa: F401 - each registers its commands
from featcache.cli.app import app, err, out
from featcache.config import STUDENTS_HELP

__all__ = ["app", "main", "out", "err", "STUDENTS_HELP"]


def main() -> None:
    app(prog_name="featcache")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
