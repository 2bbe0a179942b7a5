"""Datasets in their official on-disk layouts, behind one registry.

    >>> from featcache.datasets import get_dataset
    >>> ds = get_dataset("synthetic", split="train")
    >>> image, label, index = ds[0]

Each format lives in its own module and registers a builder ``fn(root, split, **options) -> ImageDataset`` in
``registry.py``; importing this package imports every module in it, so a new format is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil

from featcache.datasets.base import SPLITS, ImageDataset, read_image_file, sha256_lines
from featcache.datasets.registry import dataset_options, get_dataset, list_datasets, register_dataset

# Importing every format module runs its @register_dataset: a new format is one new module here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ImageDataset",
    "SPLITS",
    "dataset_options",
    "get_dataset",
    "list_datasets",
    "read_image_file",
    "register_dataset",
    "sha256_lines",
]
