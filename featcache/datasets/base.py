"""The dataset contract shared by every on-disk format.

A dataset object is one split of an image classification dataset. It knows its class names, the integer label
of every sample and a *stable id* per sample (a relative path or an official index), so that a feature cache
written today can be checked against the dataset it is joined with tomorrow. Images are returned as uint8 RGB
tensors [3, H, W]; geometric transforms run on uint8 in the loader workers and normalisation runs on the device
(see featcache.transforms), which keeps host->device traffic at one byte per channel.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from featcache.datasets.images import (  # noqa: F401 - re-exported: the decoding every format shares
    check_image_size,
    decode_image_bytes,
    image_header_size,
    max_image_pixels,
    read_file_bytes,
    read_image_file,
)
from featcache.datasets.leaks import check_disjoint, check_same_classes, copied_files  # noqa: F401 - re-exported
from featcache.errors import DatasetError, check_seed
from featcache.util.hashing import content_digest, sha256_lines  # noqa: F401 - content_digest is re-exported

SPLITS = ("train", "test")


def stat_files(paths: Sequence[str]) -> np.ndarray:
    """[n, 2] int64 (size, mtime_ns) of every file: the cheap fingerprint of a file dataset's content.

    Serial while stats are fast (local, cached: ~5 µs each, where threads only add GIL traffic); threads once the
    first chunk shows slow calls (network file systems, cold disks: os.stat releases the GIL while it waits)."""
    out = np.empty((len(paths), 2), dtype=np.int64)

    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            try:
                st = os.stat(paths[i])
            except FileNotFoundError:
                raise DatasetError(f"image file {paths[i]} is missing; re-extract the dataset archive") from None
            except OSError as exc:
                raise DatasetError(f"image file {paths[i]} cannot be read ({exc.strerror or exc})") from None
            out[i, 0], out[i, 1] = st.st_size, st.st_mtime_ns

    import time

    step = 4096
    chunks = [(lo, min(lo + step, len(paths))) for lo in range(0, len(paths), step)]
    if not chunks:
        return out
    start = time.perf_counter()
    fill(*chunks[0])
    if len(chunks) == 1 or (time.perf_counter() - start) / (chunks[0][1] - chunks[0][0]) < 50e-6:
        for lo, hi in chunks[1:]:
            fill(lo, hi)
        return out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        for fut in [pool.submit(fill, lo, hi) for lo, hi in chunks[1:]]:
            fut.result()
    return out


def files_fingerprint(paths: Sequence[str]) -> str:
    """sha256 over the files' (size, mtime_ns), in order: a changed, replaced or reordered file changes it."""
    return hashlib.sha256(stat_files(paths).astype("<i8").tobytes()).hexdigest()


class ImageDataset(Dataset):
    """One split of an image classification dataset.

    Subclasses fill ``classes``, ``sample_ids`` and ``targets`` in ``__init__`` and implement ``read_image``.
    ``__getitem__`` returns ``(image, label, index)``: the index travels with each sample so that cached teacher
    rows can be joined to a batch by position.
    """

    name: str = "dataset"
    # Side of the (square) images when they are all small and pre-centred (32 for CIFAR): the default transform
    # then resizes the whole image instead of cropping its centre.
    native_size: int | None = None

    @property
    def square_size(self) -> int | None:
        """N when every image is N x N, small or not (a folder reads it from its headers): the default view leaves
        such images as they are when it is their size. A dataset of small images: its native size."""
        return self.native_size

    def __init__(
        self,
        *,
        split: str,
        root: Path | None,
        classes: Sequence[str],
        sample_ids: Sequence[str],
        targets: Sequence[int] | np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> None:
        if len(sample_ids) != len(targets):
            raise DatasetError(f"{self.name}: {len(sample_ids)} sample ids but {len(targets)} labels")
        self.split = split
        self.root = Path(root) if root is not None else None
        self.classes = list(classes)
        self.sample_ids = list(sample_ids)
        self.targets = np.asarray(targets, dtype=np.int64)
        # Parameters that change pixels without changing ids (e.g. the synthetic generator's seed).
        self.params = dict(params or {})
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            raise DatasetError(
                f"{self.name}: labels must lie in [0, {len(self.classes)}) but span "
                f"[{self.targets.min()}, {self.targets.max()}]"
            )

    # -- what subclasses implement -------------------------------------------------------------------------
    def image_path(self, index: int) -> str | None:
        """The file sample ``index`` is decoded from, for datasets of image files (None otherwise)."""
        return None

    def read_image(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a uint8 RGB tensor [3, H, W] (file datasets: the decoded file)."""
        path = self.image_path(index)
        if path is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither read_image nor image_path")
        return read_image_file(path)

    # -- content --------------------------------------------------------------------------------------------
    def image_paths(self) -> list[str] | None:
        """Every sample's file in index order, or None for datasets not made of files."""
        if len(self) == 0 or self.image_path(0) is None:
            return None
        return [str(self.image_path(i)) for i in range(len(self))]

    def read_with_digest(self, index: int) -> tuple[torch.Tensor, int]:
        """The image at ``index`` and the content digest of what it was decoded from (its file's bytes, else its
        pixels), from one read: extract records the digest next to the sample's row."""
        path = self.image_path(index)
        if path is not None:
            data = read_file_bytes(path)
            return decode_image_bytes(data, path), content_digest(data)
        image = self.read_image(index)
        return image, content_digest(image.numpy())

    def sample_digest(self, index: int) -> int:
        """The content digest of sample ``index`` (a file is hashed, not decoded): distill's content re-check."""
        path = self.image_path(index)
        if path is not None:
            return content_digest(read_file_bytes(path))
        return content_digest(self.read_image(index).numpy())

    def file_stats(self) -> np.ndarray | None:
        """[n, 2] (size, mtime_ns) of every sample's file, stat'ed once per object (the fingerprint and the split
        leak check share it); None for datasets not made of files."""
        if not hasattr(self, "_file_stats"):
            paths = self.image_paths()
            self._file_stats = None if paths is None else stat_files(paths)
        return self._file_stats

    def compute_fingerprint(self) -> str | None:
        """sha256 over every sample file's (size, mtime_ns), in id order (files_fingerprint); None for datasets not
        made of files (subclasses whose pixels live elsewhere override it)."""
        stats = self.file_stats()
        return None if stats is None else hashlib.sha256(stats.astype("<i8").tobytes()).hexdigest()

    def fingerprint(self) -> str | None:
        """The content fingerprint in this split's identity (computed once per object; files are stat'ed)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = self.compute_fingerprint()
        return self._fingerprint

    # -- the common API --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.read_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> "ImageDataset":
        """Set the per-sample transform (uint8 -> uint8 geometry, see featcache.transforms) and return self."""
        self.transform = transform
        return self

    def identity(self) -> dict[str, Any]:
        """Everything about this split that changes what a teacher sees; hashed into cache keys and checked
        again when a cache is joined with a dataset."""
        return {
            "name": self.name,
            "split": self.split,
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "ids_sha256": sha256_lines(self.sample_ids),
            "labels_sha256": hashlib.sha256(self.targets.astype("<i8").tobytes()).hexdigest(),
            "classes_sha256": sha256_lines(self.classes),
            "params": json.loads(json.dumps(self.params, sort_keys=True)),
            # The content: a changed image changes the key, and an old cache is refused (docs/cache-format.md).
            "fingerprint": self.fingerprint(),
        }

    def __repr__(self) -> str:
        root = f", root={str(self.root)!r}" if self.root else ""
        return f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes}{root})"


def check_trainable(train: ImageDataset) -> None:
    """Refuse to train on a split whose images span fewer than two classes: every prediction is then right, and a
    run would report 100 % accuracy for learning nothing."""
    present = np.unique(train.targets)
    if len(present) >= 2:
        return
    names = ", ".join(repr(train.classes[int(k)]) for k in present) or "none"
    listed = f" (of {train.num_classes} listed)" if train.num_classes != len(present) else ""
    where = f" of {train.root}" if train.root is not None else ""
    subset = train.params.get("class_subset")
    hint = ("list at least 2 classes in --classes" if subset is not None
            else "give it images of at least 2 classes (for folder: 2 or more class subfolders)")
    raise DatasetError(
        f"{train.name}: the {train.split} split{where} has images of {len(present)} "
        f"class{'es' if len(present) != 1 else ''}{listed}: {names}; a "
        f"classifier trained on it is 100 % accurate by construction: {hint}"
    )


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (--split): choose one of {', '.join(SPLITS)}")
    return split


class ClassSubset(ImageDataset):
    """The samples of ``base`` whose class is in ``classes``, labelled by position in ``classes`` (a teacher trained
    on one part of the classes, as the source nets of adaptive knowledge amalgamation are)."""

    def __init__(self, base: ImageDataset, classes: Sequence[str]) -> None:
        unknown = [c for c in classes if c not in base.classes]
        if unknown:
            raise DatasetError(f"{base.name}: class {unknown[0]!r} of the class list is not in the dataset")
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{base.name}: the class list names a class twice")
        position = {base.classes.index(c): k for k, c in enumerate(classes)}
        keep = np.flatnonzero(np.isin(base.targets, list(position)))
        super().__init__(
            split=base.split, root=base.root, classes=list(classes),
            sample_ids=[base.sample_ids[i] for i in keep],
            targets=np.array([position[int(t)] for t in base.targets[keep]], dtype=np.int64),
            params={**base.params, "class_subset": list(classes)},
        )
        self.name = base.name
        self.native_size = base.native_size
        self.base = base
        self.rows = keep

    @property
    def square_size(self) -> int | None:
        return self.base.square_size

    def image_path(self, index: int) -> str | None:
        return self.base.image_path(int(self.rows[index]))

    def read_image(self, index: int) -> torch.Tensor:
        return self.base.read_image(int(self.rows[index]))

    def image_paths(self) -> list[str] | None:
        paths = self.base.image_paths()
        return None if paths is None else [paths[i] for i in self.rows]

    def compute_fingerprint(self) -> str | None:
        if self.base.image_paths() is not None:
            return super().compute_fingerprint()
        base = self.base.fingerprint()  # pixels held elsewhere (CIFAR pickles): the base's content + the selection
        if base is None:
            return None
        return hashlib.sha256(base.encode() + np.asarray(self.rows, dtype="<i8").tobytes()).hexdigest()


def first_of_each_class(targets: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Mask of the first ``want[c]`` samples of each class c, in sample order (a sample's rank within its class,
    vectorised): CIFAR's ``train_per_class`` and distill's ``--labels N/class``."""
    targets = np.asarray(targets, dtype=np.int64)
    order = np.argsort(targets, kind="stable")
    starts = np.searchsorted(targets[order], np.arange(len(want)))
    rank = np.empty(len(targets), dtype=np.int64)
    rank[order] = np.arange(len(targets)) - np.repeat(starts, np.bincount(targets, minlength=len(want)))
    return rank < np.asarray(want)[targets]


def split_classes(classes: Sequence[str], parts: int, seed: int = 0) -> list[list[str]]:
    """Split a class list into ``parts`` disjoint parts of (nearly) equal size, by a seeded permutation; each part
    keeps the dataset's class order."""
    if not 2 <= parts <= len(classes) // 2:  # each part's teacher trains on 2 classes or more (check_trainable)
        most = (f"choose between 2 and {len(classes) // 2}" if len(classes) >= 4
                else "a dataset needs at least 4 classes to be split")
        raise DatasetError(f"--parts {parts}: every part needs at least 2 of the {len(classes)} classes to train a "
                           f"teacher on; {most}")
    check_seed("--seed", seed)
    perm = np.random.default_rng(seed).permutation(len(classes))
    return [[classes[i] for i in sorted(chunk)] for chunk in np.array_split(perm, parts)]


def table_lines(path: Path):
    """(line number, stripped line) of a text table, skipping blank lines and # comments (the official metadata
    files and featcache's own split / class files)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield lineno, line


def read_class_list(path: Path) -> list[str]:
    """A class-subset file: one class name per line (blank lines and # comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--classes {path}: file not found (write one with `featcache split-classes`)")
    names = [line.split("#", 1)[0].strip() for _, line in table_lines(path)]
    if not names:
        raise DatasetError(f"--classes {path}: no class names in the file")
    return names
