"""`featcache teachers|students|datasets`: what the registries hold."""

from __future__ import annotations

import typer

from featcache.cli.app import app, out, user_errors
from featcache.cli.tables import Col, Grid


@app.command()
@user_errors
def teachers(all_models: bool = typer.Option(False, "--all",
                                            help="Also list every torchvision classifier and timm model.")) -> None:
    """List the teachers `extract --teacher` accepts."""
    from featcache.models.registry import get_entry
    from featcache.models.teachers import list_teachers

    table = Grid("teachers", [Col("name", give="fold"), Col("input", give="wrap"), Col("description", give="wrap")])
    for name in list_teachers(include_torchvision=False):
        e = get_entry("teacher", name)
        assert e is not None  # a listed name is registered
        table.add(name, f"{e.default_image_size} px (≥{e.min_image_size})", e.description)
    table.print()
    from featcache.models.timm_models import list_timm_models

    timm_names = list_timm_models()
    if all_models:
        from featcache.models.teachers import torchvision_classifiers

        out.print("any torchvision classifier: " + ", ".join(torchvision_classifiers()), highlight=False)
        if timm_names:
            out.print(f"any timm model ({len(timm_names)}): " + ", ".join(timm_names), highlight=False)
        else:
            out.print("timm models as timm:NAME once timm is installed: pip install 'featcache[timm]'")
    else:
        timm_part = f" and any of timm's {len(timm_names)} models as timm:NAME" if timm_names else ""
        out.print(f"…and any torchvision classifier by name{timm_part} (--all lists them)", highlight=False)


@app.command()
@user_errors
def students() -> None:
    """List the students `distill --student` accepts."""
    from featcache.models.registry import get_entry
    from featcache.models.students import list_students

    table = Grid("students", [Col("name", give="fold"), Col("description", give="wrap")])
    for name in list_students():
        e = get_entry("student", name)
        table.add(name, e.description if e else "")
    table.print()
    from featcache.models.timm_models import list_timm_models

    if list_timm_models():
        out.print("…and any timm model as timm:NAME: its network is the body, featcache's feature layer and head go "
                  "on top", highlight=False)


@app.command()
@user_errors
def datasets() -> None:
    """List the datasets `--dataset` accepts and the options (`-o key=value`) each declares."""
    from featcache.datasets import dataset_options, list_datasets

    table = Grid("datasets", [Col("name", give="fold"), Col("options (-o key=value; default)", give="wrap")])
    for name in list_datasets():
        opts = dataset_options(name)
        table.add(name, ", ".join(f"{k}={v}" for k, v in opts.items()) or "—")
    table.print()
