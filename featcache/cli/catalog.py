"""`featcache teachers|students|datasets`: what the registries hold."""

from __future__ import annotations

import typer
from rich.table import Table

from featcache.cli.app import app, out, user_errors


@app.command()
@user_errors
def teachers(all_models: bool = typer.Option(False, "--all", help="Also list every torchvision classifier.")) -> None:
    """List the teachers `extract --teacher` accepts."""
    from featcache.models.registry import get_entry
    from featcache.models.teachers import list_teachers

    table = Table(title="teachers")
    for col in ("name", "input", "description"):
        table.add_column(col)
    for name in list_teachers(include_torchvision=False):
        e = get_entry("teacher", name)
        table.add_row(name, f"{e.default_image_size} px (≥{e.min_image_size})", e.description)
    out.print(table)
    if all_models:
        from featcache.models.teachers import torchvision_classifiers

        out.print("any torchvision classifier: " + ", ".join(torchvision_classifiers()))
    else:
        out.print("…and any torchvision classifier by name (--all lists them)")


@app.command()
@user_errors
def students() -> None:
    """List the students `distill --student` accepts."""
    from featcache.models.students import list_students
    from featcache.models.registry import get_entry

    table = Table(title="students")
    for col in ("name", "description"):
        table.add_column(col)
    for name in list_students():
        e = get_entry("student", name)
        table.add_row(name, e.description if e else "")
    out.print(table)


@app.command()
@user_errors
def datasets() -> None:
    """List the datasets `--dataset` accepts and the options (`-o key=value`) each declares."""
    from featcache.datasets import dataset_options, list_datasets

    table = Table(title="datasets")
    for col in ("name", "options (-o key=value; default)"):
        table.add_column(col)
    for name in list_datasets():
        opts = dataset_options(name)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in opts.items()) or "—")
    out.print(table)
