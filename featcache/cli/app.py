"""The `featcache` app, its consoles and the one error policy of every command.

User mistakes (FeatcacheError) print ``error: <one line>`` and exit with status 2; set FEATCACHE_DEBUG=1 for the
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from featcache.config.flags import parse_key_values as parse_options  # noqa: F401 - the commands' -o parser
from featcache.errors import ConfigError, FeatcacheError
from featcache.util.fileio import printable

app = typer.Typer(
    help="Run a teacher once, cache its features, distil many students from the cache.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
cache_app = typer.Typer(help="List, inspect, verify and remove feature caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
bench_app = typer.Typer(help="Measure throughput against its limit on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
runs_app = typer.Typer(help="List run directories: what each trains and how far it got.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

out = Console()
err = Console(stderr=True)

# The library's messages go to logging; a command shows its own through its reporter (rich), so what else reaches the
# featcache loggers (a stage's inner runs, the other ranks under torchrun) stays off the terminal, as it always has.
logging.getLogger("featcache").addHandler(logging.NullHandler())

EXIT_USER_ERROR = 2


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn FeatcacheError into one red line and exit status 2 (the huggingface_hub CLI pattern)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeatcacheError as exc:
            if os.environ.get("FEATCACHE_DEBUG") == "1":
                raise
            # One line, whatever names from disk it quotes: control characters are shown escaped, never obeyed.
            err.print(f"[bold red]error:[/] {escape(printable(str(exc), limit=None))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: re-run the same command to resume where it stopped")
            raise typer.Exit(130) from None
        except (MemoryError, RuntimeError) as exc:
            what = out_of_memory(exc)
            if what is None or os.environ.get("FEATCACHE_DEBUG") == "1":
                raise
            err.print(f"[bold red]error:[/] out of memory ({escape(what)}): lower --batch-size or --image-size, or "
                      "hold less in memory (--no-resident, --workers 0); FEATCACHE_DEBUG=1 shows where",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper


def out_of_memory(exc: BaseException) -> str | None:
    """What ran out when ``exc`` is an allocation failure (host or device), else None. torch raises a RuntimeError
    from its CPU allocator and torch.OutOfMemoryError (a RuntimeError) from CUDA's; numpy a MemoryError."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return text.splitlines()[0][:160] if text else "a host allocation failed"
    if type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text:
        line = next((ln for ln in text.splitlines() if "allocate" in ln), text.splitlines()[0] if text else "")
        return " ".join(line.split())[:160] or "an allocation failed"
    return None


def main_rank() -> bool:
    """False on ranks other than 0 of a torchrun job (they stay quiet)."""
    from featcache.util import distributed

    return distributed.context().is_main

def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def write_json(path: Path | None, obj: Any) -> None:
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--json-out {path}: cannot write it ({exc.strerror or exc})") from None
        from featcache.util.fileio import write_text_atomic

        write_text_atomic(path, json.dumps(obj, indent=2) + "\n", flag="--json-out")
