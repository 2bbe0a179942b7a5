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
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from featcache.errors import DatasetError
from featcache.hashing import sha256_lines

SPLITS = ("train", "test")


# torchvision's libjpeg-turbo/libpng decoders are several times faster than PIL for this job. torchvision 0.29
# deprecates them in favour of TorchCodec (warning on import/use); PIL remains the fallback if they disappear.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
try:
    from torchvision.io import ImageReadMode as _ImageReadMode
    from torchvision.io import decode_image as _decode_image

    _RGB = _ImageReadMode.RGB
except ImportError:  # pragma: no cover - a future torchvision without decoders
    _decode_image = None
    _RGB = None


def read_image_file(path: Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor [3, H, W].

    torchvision's decoder handles JPEG/PNG/GIF/WebP quickly; PIL is the fallback for anything it refuses
    (CMYK JPEGs and BMPs exist in the wild, e.g. in Oxford-IIIT Pet).
    """
    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file {path} is missing; re-extract the dataset archive") from None
    except OSError as exc:
        raise DatasetError(f"image file {path} cannot be read ({exc.strerror or exc})") from None
    if _decode_image is not None:
        try:
            return _decode_image(data, mode=_RGB)
        except (RuntimeError, ValueError):
            pass
    try:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is corrupt
        raise DatasetError(f"image file {path} is not a readable image ({exc}); replace or remove it") from None


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
    def read_image(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a uint8 RGB tensor [3, H, W]."""
        raise NotImplementedError

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
        }

    def __repr__(self) -> str:
        root = f", root={str(self.root)!r}" if self.root else ""
        return f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes}{root})"


def require_dir(path: Path, what: str, hint: str) -> Path:
    """Return ``path`` if it is a directory, else raise a one-line DatasetError naming it."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} is missing; {hint}")
    return path


def require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path} is missing; {hint}")
    return path


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

    def read_image(self, index: int) -> torch.Tensor:
        return self.base.read_image(int(self.rows[index]))


def split_classes(classes: Sequence[str], parts: int, seed: int = 0) -> list[list[str]]:
    """Split a class list into ``parts`` disjoint parts of (nearly) equal size, by a seeded permutation; each part
    keeps the dataset's class order."""
    if not 2 <= parts <= len(classes):
        raise DatasetError(f"--parts {parts}: choose between 2 and the number of classes ({len(classes)})")
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
