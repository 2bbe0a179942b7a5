"""Datasets in their official on-disk layouts, behind one registry.

    >>> from featcache.datasets import get_dataset
    >>> ds = get_dataset("synthetic", split="train")
    >>> image, label, index = ds[0]

Each format lives in its own module and registers a builder ``fn(root, split, **options) -> ImageDataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from featcache.datasets.base import SPLITS, ImageDataset, read_image_file, sha256_lines
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


def list_datasets() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def get_dataset(name: str, root: str | Path | None = None, split: str = "train", **options: Any) -> ImageDataset:
    """Build split ``split`` of dataset ``name`` from ``root``; unknown options are a DatasetError."""
    _import_all()
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
    try:
        return _REGISTRY[name](root, split, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise DatasetError(f"dataset {name!r} does not take that option: {exc}") from None
        raise


def _import_all() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from featcache.datasets import cifar, cub, folder, sod, synthetic  # noqa: F401


__all__ = [
    "ImageDataset",
    "SPLITS",
    "get_dataset",
    "list_datasets",
    "read_image_file",
    "register_dataset",
    "sha256_lines",
]
