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
    tables.py    Grid, the one table layout: every column, the row's name first, whole at any terminal width
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from featcache.cli import bench, cache, catalog, extract, run, runs, train  # noqa: F401 - each registers its commands
from featcache.cli.app import app, err, out
from featcache.config import STUDENTS_HELP

__all__ = ["app", "main", "finish", "out", "err", "STUDENTS_HELP"]


# torch's OpenMP threads (libgomp) spin 300,000 times between parallel regions before they sleep. On a CPU shared
# with other busy processes (a laptop, a 2-core box running two experiments) a spinning thread holds the core its
# peer needs, and a student's steps ran up to 13x slower (docs/benchmarks.md, "Distill end to end"). 10,000 spins
# kept an idle box's speed there and ran 1.6-5x faster than the default on a busy one; the spin count changes no
# result (the same threads split the same work). libgomp reads it once, when torch loads it, so the command line sets
# it here, before anything imports torch; an explicit GOMP_SPINCOUNT or OMP_WAIT_POLICY wins. The library leaves the
# environment alone (docs/python-api.md says how a training script sets it).
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = "10000"  # (the imports above load no torch: `featcache --help` stays fast)


def main() -> None:
    try:
        app(prog_name="featcache")
    except SystemExit as stop:
        finish(stop.code)
    finish(0)


# Tearing down an interpreter that imported torch and torchvision (freeing every module, unloading their libraries)
# took 0.7-1.0 s and briefly raised the process's peak RSS by about 125 MiB on a 2-core box, after the command's work
# was done (docs/comparison.md). A finished command skips it: the exit handlers run (multiprocessing's children,
# logging, torch's own), output is flushed, then the process ends. A live non-daemon thread (an unfinished writer)
# gets the normal exit, which joins it, and so does a process a profiler or coverage tool watches.
# FEATCACHE_FULL_EXIT=1 always takes the normal path.
def _observed() -> bool:
    """A profiler or coverage tool is watching (``python -m cProfile -m featcache``, ``coverage run``): it writes its
    results when the command returns, so the process must return to it."""
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: tools register here instead
    tools = monitoring is not None and any(monitoring.get_tool(i) for i in range(6))
    return sys.gettrace() is not None or sys.getprofile() is not None or bool(tools)


def finish(code: object) -> NoReturn:
    """End the command with ``code`` (a SystemExit's: None, an int, or a message for stderr and 1)."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    status = 0 if code is None else code if isinstance(code, int) else 1
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if "torch" not in sys.modules or others or _observed() or os.environ.get("FEATCACHE_FULL_EXIT") == "1":
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
