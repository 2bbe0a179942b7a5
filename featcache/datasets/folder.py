"""Any ImageFolder tree: class subfolders of images, with a test split that is never the training images.

``--data-root`` is one of (checked in this order; docs/datasets in README):

* a folder holding ``train/`` and ``test/`` (or ``val/``), each a class tree: ``--split`` picks the subfolder;
* a class tree itself (``DIR/train``): it is the train split; the test split is ``-o test_root=DIR`` when given, else
  a held-out fraction of it with ``-o holdout=0.1`` (deterministic, recorded in the split's params), else a
  ``test/`` (or ``val/``) sibling class tree. Without any of these the test split is an error, never the training
  images again.

A folder whose subfolders are all split names (only ``train/``; ``train/``, ``val/`` and ``test/``; ...) is refused,
never read as classes named train, val, test.

The directory helpers here (``IMAGE_EXTENSIONS``, ``list_images``, ``scan_class_tree``) are shared with the
CIFAR folder layout, so both formats agree on what counts as an image and on sample order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from featcache.datasets.base import ImageDataset, check_split
from featcache.datasets.images import uniform_square_size
from featcache.datasets.registry import register_dataset
from featcache.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: Path, *, recursive: bool = True, seen: dict | None = None) -> list[str]:
    """Image files under ``directory`` as sorted posix paths relative to it (hidden files and dirs skipped).

    Sorting the relative paths, not the walk order, makes ids identical across filesystems. Links to directories
    are followed (labs assemble class folders from links), but a directory reached twice — a link back to an
    ancestor (a loop: os.walk would recurse until the path is too long, reading every image again and again, under
    the wrong class) or a second way into a folder already read (``seen`` is shared across a split's classes) — is
    refused, and so is a directory that cannot be read (os.walk would skip it without a word).
    """
    found: list[str] = []
    if recursive:
        top = os.fspath(directory)
        seen = {} if seen is None else seen

        def unreadable(exc: OSError) -> None:
            raise DatasetError(f"{exc.filename}: cannot be read ({exc.strerror or exc}); fix its permissions or "
                               "remove it from the dataset folder")

        for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=unreadable):
            st = os.stat(dirpath)
            first = seen.setdefault((st.st_dev, st.st_ino), dirpath)
            if first != dirpath:
                raise DatasetError(f"{dirpath} is the folder {first} again (through a link): its images would be "
                                   "read twice, or under another class; remove the link")
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            # String joins, not pathlib: a 50k-image tree lists in 0.1 s instead of 1.5 s.
            rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            found.extend(prefix + f for f in filenames if is_image_name(f))
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
    seen: dict = {}  # every folder read for this split: none may be reached twice (see list_images)
    for label, name in enumerate(classes):
        files = list_images(root / name, seen=seen)
        ids.extend(f"{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    return ids, labels


class FileListDataset(ImageDataset):
    """Images read lazily from ``root / sample_id`` (ids are posix paths relative to ``image_root``)."""

    def __init__(self, *, image_root: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_root = Path(image_root)
        self._prefix = os.path.join(str(self.image_root), "")  # a string concat per sample, not a path join

    def image_path(self, index: int) -> str:
        return self._prefix + self.sample_ids[index]

    def image_paths(self) -> list[str]:
        root = str(self.image_root)
        return [os.path.join(root, i) for i in self.sample_ids]


# The largest side of images a folder treats like CIFAR's (resized whole at any view size, the student's size without
# a teacher): small images were cropped to their object already. Larger ones of one size are left as they are only
# when the view is their size (a 500 px set would otherwise train students at 500 px).
SMALL_IMAGE_MAX = 128


class FolderDataset(FileListDataset):
    """A class tree. Its ``square_size`` is N when its images are all N x N (the headers of a spread sample of them,
    read on first use), and its ``native_size`` too when N <= SMALL_IMAGE_MAX: the default view then resizes them whole
    and leaves them as they are at N px, like CIFAR's; a folder of mixed sizes gets the teacher's resize + crop."""

    name = "folder"
    _square: tuple[int | None] | None = None  # the probe's answer, once asked

    @property
    def square_size(self) -> int | None:
        if self._square is None:
            self._square = (uniform_square_size(self.image_paths()),)
        return self._square[0]

    @property  # the base's plain attribute, computed here from the probe
    def native_size(self) -> int | None:
        side = self.square_size
        return side if side is not None and side <= SMALL_IMAGE_MAX else None

    @native_size.setter
    def native_size(self, value: int | None) -> None:  # a caller that knows better
        self._square = (value,)


TEST_DIRS = ("test", "val")  # names a test split's folder goes by (ImageNet-style trees call it val)
# Folder names that mean a split, not a class: a tree whose subfolders are all among them is never read as classes
# (DIR holding only train/ would be one class "train", and any model 100 % accurate on it).
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "eval", "dev"})


def _split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": ROOT/train, "test": ROOT/test}`` when ROOT's visible subfolders are exactly a train folder and
    one test folder (a tree whose classes happen to be called train and test would have more)."""
    subdirs = set(class_dirs(root))
    for test in TEST_DIRS:
        if subdirs == {"train", test}:
            return {"train": root / "train", "test": root / test}
    return None


def holdout_mask(ids: Sequence[str], labels: Sequence[int], fraction: float) -> np.ndarray:
    """is_test per sample: in each class, round(fraction · n) of its images (at least 1 and at most n − 1 when the
    class has two or more) whose sha256(id) digests are smallest. Depends on the ids only, not on listing order."""
    label_of = np.asarray(labels, dtype=np.int64)
    digests = np.array([hashlib.sha256(i.encode("utf-8")).hexdigest() for i in ids])
    is_test = np.zeros(len(ids), dtype=bool)
    for c in np.unique(label_of):
        members = np.flatnonzero(label_of == c)
        k = int(np.floor(fraction * len(members) + 0.5))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        is_test[members[np.argsort(digests[members], kind="stable")[:k]]] = True
    return is_test


def _refuse_split_folders(root: Path, flag: str, classes: Sequence[str]) -> None:
    """A DatasetError when every subfolder of ``root`` names a split (and they are not exactly train/ + test/)."""
    if not classes or any(c.lower() not in SPLIT_NAMES for c in classes):
        return
    found = ", ".join(f"{c}/" for c in classes)
    has_train = any(c.lower() in ("train", "training") for c in classes)
    if has_train and not any(c.lower() not in ("train", "training") for c in classes):
        todo = (f"add {root / 'test'}/<class>/, or point --data-root at {root / classes[0]} with -o holdout=0.1 or "
                "-o test_root=DIR")
    else:
        todo = "point --data-root at the training class tree and -o test_root at the test one"
    raise DatasetError(
        f"folder: {root} ({flag}) holds only split folders ({found}), not class folders; expected either class "
        f"folders (ROOT/<class>/*.jpg) or exactly train/ and test/ (or val/) of class folders: {todo}"
    )


def _class_tree(root: Path, flag: str) -> tuple[list[str], list[str], list[int]]:
    """(classes, ids, labels) of a class tree, or a DatasetError that says what ``flag`` should point at."""
    if not root.is_dir():
        raise DatasetError(f"folder: {flag} {root} is not a directory; point it at the folder of class folders")
    classes = class_dirs(root)
    _refuse_split_folders(root, flag, classes)
    if not classes:
        loose = list_images(root, recursive=False)
        hint = f"it holds {len(loose)} images but no class subfolders" if loose else "it has no class subfolders"
        raise DatasetError(
            f"folder: {root} is not an ImageFolder tree ({hint}); point {flag} at a folder whose subfolders are "
            "the classes, e.g. DIR/train"
        )
    ids, labels = scan_class_tree(root, classes)
    if not ids:
        raise DatasetError(
            f"folder: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under the {len(classes)} class folders "
            f"of {root}; check {flag}"
        )
    return classes, ids, labels


@register_dataset("folder")
def build_folder(root: Path | None, split: str, test_root: str | Path | None = None,
                 holdout: float | None = None) -> FolderDataset:
    """Classes = sorted subfolder names; images of any common extension, recursively, sorted (module docstring for
    where the test split comes from)."""
    check_split(split)
    if root is None or not root.is_dir():
        raise DatasetError(f"folder: --data-root {root} is not a directory; point it at the folder of class folders")
    if holdout is not None:
        if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
            raise DatasetError(f"folder: option holdout={holdout!r} must be a fraction between 0 and 1, e.g. 0.1")
        if test_root is not None:
            raise DatasetError("folder: give either -o test_root=DIR or -o holdout=FRACTION, not both")
    params: dict = {"layout": "folder"}
    folders = _split_folders(root)
    if folders is None:
        _refuse_split_folders(root, "--data-root", class_dirs(root))
    if folders is not None:
        if test_root is not None or holdout is not None:
            raise DatasetError(
                f"folder: --data-root {root} already holds {folders['train'].name}/ and {folders['test'].name}/; "
                "drop -o test_root / -o holdout, or point --data-root at the train folder"
            )
        tree, flag = folders[split], f"--data-root {root} ({folders[split].name}/)"
    elif split == "train" or holdout is not None:
        tree, flag = root, "--data-root"
    elif test_root is not None:
        tree, flag = Path(test_root).expanduser(), "-o test_root"
    else:
        sibling = next((root.parent / t for t in TEST_DIRS if root.name == "train" and (root.parent / t).is_dir()),
                       None)
        if sibling is None:
            raise DatasetError(
                f"folder: --data-root {root} is one class tree with no test split; point --data-root at a folder "
                "holding train/ and test/, pass -o test_root=DIR, or -o holdout=0.1 to hold out 10% of its images "
                "(the same fraction for every split of the run)"
            )
        tree, flag = sibling, f"the test folder next to --data-root ({sibling})"
    if tree.resolve() == root.resolve() and split == "test" and holdout is None and folders is None:
        raise DatasetError(f"folder: the test split {tree} is the training folder; give another -o test_root")
    classes, ids, labels = _class_tree(tree, flag)
    if holdout is not None:
        is_test = holdout_mask(ids, labels, float(holdout))
        keep = np.flatnonzero(is_test if split == "test" else ~is_test)
        if len(keep) == 0:
            raise DatasetError(f"folder: holdout={holdout} leaves no {split} images in {root}")
        ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
        params["holdout"] = float(holdout)
    return FolderDataset(
        image_root=tree,
        split=split,
        root=tree,
        classes=classes,
        sample_ids=ids,
        targets=labels,
        params=params,
    )
