"""CIFAR-10 and CIFAR-100, from the official python pickles or from an ImageFolder tree of the same images.

Layouts, tried in this order:

* ``pickle``: ``ROOT/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or
  ``ROOT/cifar-100-python/`` (``train``, ``test``, ``meta``; fine labels), or ROOT being that folder itself.
  The split is held in RAM as one uint8 array [N, 3, 32, 32]: the pickles store each image as planar R, G, B
  planes, so a reshape (no transpose, no copy) gives CHW and ``read_image`` is a zero-copy view.
  Ids are the official index: ``train/00042``.
* ``folder``: ``ROOT/{train,test}/<class>/*.jpg|png`` or ``ROOT/cifar10-jpg/{train,test}/...``
  (``cifar100-jpg`` for CIFAR-100). Class folders must be exactly the official class names; the label order is
  the official one. Ids are paths relative to the split folder: ``airplane/0001.jpg``.

``params["layout"]`` records the layout, so caches built from the (JPEG re-encoded) folder copy never get mixed
up with caches of the original pickles.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featcache.datasets.base import ImageDataset, check_split, first_of_each_class
from featcache.datasets.folder import FileListDataset, class_dirs, scan_class_tree
from featcache.datasets.registry import register_dataset
from featcache.errors import DatasetError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The official fine_label_names of cifar-100-python/meta (alphabetical).
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)


@dataclass(frozen=True)
class _Variant:
    """What differs between CIFAR-10 and CIFAR-100."""

    title: str
    pickle_dir: str
    folder_dir: str
    files: dict[str, tuple[str, ...]]
    meta_file: str
    label_key: bytes
    names_key: bytes
    classes: tuple[str, ...]
    archive: str
    torchvision_class: str


CIFAR10 = _Variant(
    title="CIFAR-10",
    pickle_dir="cifar-10-batches-py",
    folder_dir="cifar10-jpg",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    classes=CIFAR10_CLASSES,
    archive="cifar-10-python.tar.gz",
    torchvision_class="CIFAR10",
)
CIFAR100 = _Variant(
    title="CIFAR-100",
    pickle_dir="cifar-100-python",
    folder_dir="cifar100-jpg",
    files={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    classes=CIFAR100_CLASSES,
    archive="cifar-100-python.tar.gz",
    torchvision_class="CIFAR100",
)


class CifarArrayDataset(ImageDataset):
    """A CIFAR split held in RAM as uint8 [N, 3, 32, 32]."""

    def __init__(self, *, images: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images

    def read_image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index])

    def compute_fingerprint(self) -> str:
        """The pixels themselves (150 MB for CIFAR-10 train: about 0.1 s of sha256)."""
        return hashlib.sha256(np.ascontiguousarray(self.images).data).hexdigest()


class Cifar10Array(CifarArrayDataset):
    name = "cifar10"
    native_size = 32


class Cifar100Array(CifarArrayDataset):
    name = "cifar100"
    native_size = 32


class Cifar10Folder(FileListDataset):
    name = "cifar10"
    native_size = 32


class Cifar100Folder(FileListDataset):
    name = "cifar100"
    native_size = 32


# -- pickle layout -----------------------------------------------------------------------------------------------
def _find_pickle_dir(root: Path, v: _Variant) -> Path | None:
    if (root / v.pickle_dir).is_dir():
        return root / v.pickle_dir
    # ROOT is the pickle folder itself: its name, or its meta file next to at least one batch file.
    data_files = [f for files in v.files.values() for f in files]
    if root.name == v.pickle_dir or (
        (root / v.meta_file).is_file() and any((root / f).is_file() for f in data_files)
    ):
        return root
    return None


# What the official CIFAR pickles hold: dicts, lists, bytes and numpy arrays (numpy 1.x and 2.x module names).
_CIFAR_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("_reconstruct", "scalar")}
_CIFAR_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    """The one unpickler in featcache (the official CIFAR release is pickles): it builds numpy arrays and plain
    containers only, so a crafted file under --data-root cannot name a function to run."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which the official CIFAR pickles never do")
        return super().find_class(module, name)


def _load_pickle(path: Path, v: _Variant) -> dict:
    hint = f"re-extract {v.archive} into --data-root (or pass download=True)"
    if not path.is_file():
        raise DatasetError(f"{v.title}: {path} is missing; {hint}")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{v.title}: {path} is not an official CIFAR pickle ({exc}); it was not loaded. {hint}") \
            from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise DatasetError(f"{v.title}: {path} is not a readable CIFAR pickle ({type(exc).__name__}); {hint}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{v.title}: {path} does not hold a CIFAR dict; {hint}")
    return obj


def _field(obj: dict, key: bytes, path: Path, v: _Variant) -> Any:
    # Pickles written by Python 3 tools may use str keys instead of the official bytes keys.
    for k in (key, key.decode()):
        if k in obj:
            return obj[k]
    raise DatasetError(f"{v.title}: {path} has no {key.decode()!r} entry; re-extract {v.archive}")


def _read_batch(path: Path, v: _Variant) -> tuple[np.ndarray, np.ndarray]:
    obj = _load_pickle(path, v)
    data = np.asarray(_field(obj, b"data", path, v))
    labels = np.asarray(_field(obj, v.label_key, path, v))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{v.title}: {path} 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]; "
            f"re-extract {v.archive}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{v.title}: {path} has {labels.size} labels for {len(data)} images; re-extract {v.archive}"
        )
    return data, labels.astype(np.int64)


def _read_class_names(path: Path, v: _Variant) -> list[str]:
    obj = _load_pickle(path, v)
    names = _field(obj, v.names_key, path, v)
    out = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    if len(out) != len(v.classes):
        raise DatasetError(
            f"{v.title}: {path} lists {len(out)} class names, expected {len(v.classes)}; re-extract {v.archive}"
        )
    return out


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` samples of every class, in sample order (a deterministic smaller training set)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = int(labels.max()) + 1 if len(labels) else 0
    return np.flatnonzero(first_of_each_class(labels, np.full(classes, n)))


def _build_pickle(pdir: Path, split: str, v: _Variant, cls: type[CifarArrayDataset],
                  per_class: int | None = None) -> CifarArrayDataset:
    classes = _read_class_names(pdir / v.meta_file, v)
    batches = [_read_batch(pdir / name, v) for name in v.files[split]]
    data = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
    labels = np.concatenate([b[1] for b in batches]) if len(batches) > 1 else batches[0][1]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(
            f"{v.title}: labels in {pdir} span [{labels.min()}, {labels.max()}] but there are {len(classes)} "
            f"classes; re-extract {v.archive}"
        )
    images = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)  # planar RGB -> CHW, a view
    ids = np.array([f"{split}/{i:05d}" for i in range(len(images))])
    params: dict[str, Any] = {"layout": "pickle"}
    if per_class is not None:
        keep = first_per_class(labels, per_class)
        images, ids, labels, params["per_class"] = (np.ascontiguousarray(images[keep]), ids[keep], labels[keep],
                                                     per_class)
    return cls(
        images=images,
        split=split,
        root=pdir,
        classes=classes,
        sample_ids=ids.tolist(),
        targets=labels,
        params=params,
    )


# -- folder layout -----------------------------------------------------------------------------------------------
def _find_folder_root(root: Path, split: str, v: _Variant) -> Path | None:
    for base in (root, root / v.folder_dir):
        if (base / split).is_dir():
            return base
    return None


def _build_folder(base: Path, split: str, v: _Variant, cls: type[FileListDataset],
                  per_class: int | None = None) -> FileListDataset:
    split_dir = base / split
    found = class_dirs(split_dir)
    official = set(v.classes)
    for name in found:
        if name not in official:
            raise DatasetError(
                f"{v.title}: unexpected class folder {split_dir / name}; the folder layout needs exactly the "
                f"{len(v.classes)} official class names (e.g. {', '.join(v.classes[:3])}, ...)"
            )
    for name in v.classes:
        if name not in found:
            raise DatasetError(f"{v.title}: class folder {split_dir / name} is missing; re-extract the dataset")
    ids, labels = scan_class_tree(split_dir, v.classes)
    if not ids:
        raise DatasetError(f"{v.title}: no images under {split_dir}/<class>/; re-extract the dataset")
    params: dict[str, Any] = {"layout": "folder"}
    if per_class is not None:
        keep = first_per_class(np.asarray(labels), per_class)
        ids, labels, params["per_class"] = [ids[i] for i in keep], [labels[i] for i in keep], per_class
    return cls(
        image_root=split_dir,
        split=split,
        root=base,
        classes=v.classes,
        sample_ids=ids,
        targets=labels,
        params=params,
    )


# -- download ----------------------------------------------------------------------------------------------------
def _download(root: Path, v: _Variant) -> None:
    """Fetch the official pickles into ``root`` with torchvision (which verifies the archive's md5)."""
    import torchvision.datasets as tvd

    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(tvd, v.torchvision_class)(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network, disk and checksum failures all end the same way
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(
            f"{v.title}: download into {root} failed ({msg}); without network access, download {v.archive} "
            f"elsewhere and extract it so that {root / v.pickle_dir} exists"
        ) from None


def _build(root: Path | None, split: str, download: bool, v: _Variant, array_cls: type, folder_cls: type,
           train_per_class: int | None = None):
    check_split(split)
    if not isinstance(download, bool):
        raise DatasetError(f"{v.title}: option download={download!r} must be true or false")
    if train_per_class is not None and (isinstance(train_per_class, bool) or not isinstance(train_per_class, int)
                                        or train_per_class < 1):
        raise DatasetError(f"{v.title}: option train_per_class={train_per_class!r} must be a whole number >= 1")
    # A smaller training set (the first N images of every class); the test split stays whole.
    per_class = train_per_class if split == "train" else None
    if root is None:
        raise DatasetError(f"{v.title}: needs --data-root DIR")
    pdir = _find_pickle_dir(root, v)
    if pdir is None and download:
        _download(root, v)
        pdir = _find_pickle_dir(root, v)
    if pdir is not None:
        return _build_pickle(pdir, split, v, array_cls, per_class)
    base = _find_folder_root(root, split, v)
    if base is not None:
        return _build_folder(base, split, v, folder_cls, per_class)
    raise DatasetError(
        f"{v.title}: no dataset under {root}: looked for {root / v.pickle_dir}/ (official python pickles), "
        f"{root / split}/<class>/ and {root / v.folder_dir / split}/<class>/ (image folders); extract "
        f"{v.archive} into --data-root or pass download=True"
    )


@register_dataset("cifar10")
def build_cifar10(root: Path | None, split: str, download: bool = False,
                  train_per_class: int | None = None) -> ImageDataset:
    """CIFAR-10 from ``cifar-10-batches-py`` or an image-folder copy (see the module docstring);
    ``train_per_class=N`` keeps the first N training images of each class."""
    return _build(root, split, download, CIFAR10, Cifar10Array, Cifar10Folder, train_per_class)


@register_dataset("cifar100")
def build_cifar100(root: Path | None, split: str, download: bool = False,
                   train_per_class: int | None = None) -> ImageDataset:
    """CIFAR-100 (fine labels) from ``cifar-100-python`` or an image-folder copy (see the module docstring);
    ``train_per_class=N`` keeps the first N training images of each class."""
    return _build(root, split, download, CIFAR100, Cifar100Array, Cifar100Folder, train_per_class)
