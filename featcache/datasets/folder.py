"""Any ImageFolder tree: ``--data-root DIR`` points at the folder whose subfolders are the classes.

The user picks the split by pointing the root at it (``DIR/train`` or ``DIR/test``); ``--split`` is only recorded.
The directory helpers here (``IMAGE_EXTENSIONS``, ``list_images``, ``scan_class_tree``) are shared with the
CIFAR folder layout, so both formats agree on what counts as an image and on sample order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from featcache.datasets import register_dataset
from featcache.datasets.base import ImageDataset, check_split, read_image_file
from featcache.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: Path, *, recursive: bool = True) -> list[str]:
    """Image files under ``directory`` as sorted posix paths relative to it (hidden files and dirs skipped).

    Sorting the relative paths, not the walk order, makes ids identical across filesystems.
    """
    found: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(directory)
            found.extend((rel / f).as_posix() for f in filenames if is_image_name(f))
    else:
        with os.scandir(directory) as it:
            found = [e.name for e in it if is_image_name(e.name) and e.is_file()]
    return sorted(found)


def class_dirs(root: Path) -> list[str]:
    """Sorted names of the visible subdirectories of ``root``."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan_class_tree(root: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """Ids ``<class>/<relpath>`` and labels of every image under ``root/<class>``, in class then path order."""
    ids: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = list_images(root / name)
        ids.extend(f"{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    return ids, labels


class FileListDataset(ImageDataset):
    """Images read lazily from ``root / sample_id`` (ids are posix paths relative to ``image_root``)."""

    def __init__(self, *, image_root: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_root = Path(image_root)

    def read_image(self, index: int) -> torch.Tensor:
        return read_image_file(self.image_root / self.sample_ids[index])


class FolderDataset(FileListDataset):
    name = "folder"


@register_dataset("folder")
def build_folder(root: Path | None, split: str) -> FolderDataset:
    """Classes = sorted subfolder names of ``root``; images of any common extension, recursively, sorted."""
    check_split(split)
    if root is None or not root.is_dir():
        raise DatasetError(f"folder: --data-root {root} is not a directory; point it at the folder of class folders")
    classes = class_dirs(root)
    if not classes:
        loose = list_images(root, recursive=False)
        hint = (
            f"it holds {len(loose)} images but no class subfolders"
            if loose
            else "it has no class subfolders"
        )
        raise DatasetError(
            f"folder: {root} is not an ImageFolder tree ({hint}); point --data-root at a folder whose "
            "subfolders are the classes, e.g. DIR/train"
        )
    ids, labels = scan_class_tree(root, classes)
    if not ids:
        raise DatasetError(
            f"folder: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under the {len(classes)} class folders "
            f"of {root}; check --data-root"
        )
    return FolderDataset(
        image_root=root,
        split=split,
        root=root,
        classes=classes,
        sample_ids=ids,
        targets=labels,
        params={"layout": "folder"},
    )
