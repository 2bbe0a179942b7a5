"""The dataset registry: name -> builder ``fn(root, split, **options) -> ImageDataset``; a builder's keyword
parameters are the options (``-o key=value``) it declares."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Callable

from featcache.datasets.base import SPLITS, ImageDataset
from featcache.errors import DatasetError

Builder = Callable[..., ImageDataset]
_REGISTRY: dict[str, Builder] = {}
_NEEDS_ROOT: dict[str, bool] = {}


def register_dataset(name: str, *, needs_root: bool = True) -> Callable[[Builder], Builder]:
    """Register ``fn(root: Path | None, split: str, **options) -> ImageDataset`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = fn
        _NEEDS_ROOT[name] = needs_root
        return fn

    return deco


def dataset_options(name: str) -> dict[str, Any]:
    """The options (``-o key=value``) dataset ``name`` declares: its builder's keyword parameters and defaults."""
    params = list(inspect.signature(_REGISTRY[name]).parameters.values())[2:]  # after (root, split)
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def dataset_option_types(name: str) -> dict[str, Any]:
    """Each option's declared type (the builder's annotation; Any where it has none), for recipes' checks."""
    try:
        hints = typing.get_type_hints(_REGISTRY[name])
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: check nothing rather than fail
        hints = {}
    return {k: hints.get(k, Any) for k in dataset_options(name)}


def needs_root(name: str) -> bool:
    """Whether dataset ``name`` reads its images from a ``--data-root`` (synthetic makes its own)."""
    return _NEEDS_ROOT[name]


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def get_dataset(name: str, root: str | Path | None = None, split: str = "train", **options: Any) -> ImageDataset:
    """Build split ``split`` of dataset ``name`` from ``root``; unknown options are a DatasetError."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r} (--dataset): choose one of {', '.join(sorted(_REGISTRY))}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (--split): choose one of {', '.join(SPLITS)}")
    if _NEEDS_ROOT[name]:
        if root is None:
            raise DatasetError(f"dataset {name!r} needs --data-root DIR pointing at its files")
        root = Path(root).expanduser()
        if not root.exists():
            raise DatasetError(f"--data-root {root} does not exist")
    elif root is not None:
        root = Path(root).expanduser()
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(sorted(accepted)) or "none"
        raise DatasetError(f"dataset {name!r} does not take option {unknown[0]!r} (-o {unknown[0]}=...); its options: "
                           f"{takes}")
    return _REGISTRY[name](root, split, **options)
