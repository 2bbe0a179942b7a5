"""Datasets in their official on-disk layouts, behind one registry.

    >>> from featcache.datasets import get_dataset
    >>> ds = get_dataset("synthetic", split="train")
    >>> image, label, index = ds[0]

Each format lives in its own module and registers a builder ``fn(root, split, **options) -> ImageDataset`` in
``registry.py``; importing this package imports them all.
"""

from __future__ import annotations

# Importing the format modules runs their @register_dataset decorators.
from featcache.datasets import cifar, cub, folder, sod, synthetic  # noqa: F401
from featcache.datasets.base import SPLITS, ImageDataset, read_image_file, sha256_lines
from featcache.datasets.registry import dataset_options, get_dataset, list_datasets, register_dataset

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
