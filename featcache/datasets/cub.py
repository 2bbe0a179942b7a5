"""CUB-200-2011 from its official index files.

``--data-root`` is the folder holding ``CUB_200_2011/`` or that folder itself, which contains ``images.txt``
(``<id> <relpath>``), ``image_class_labels.txt`` (``<id> <label>``, 1-based), ``train_test_split.txt``
(``<id> <is_train>``), ``classes.txt`` (``<label> <name>``) and ``images/``. Sample ids are the relative paths of
images.txt (stable across re-extractions, unlike the integer ids), in images.txt order; labels are 0-based.
"""

from __future__ import annotations

import os
from pathlib import Path

from featcache.datasets.base import check_split
from featcache.datasets.folder import FileListDataset
from featcache.datasets.registry import register_dataset
from featcache.errors import DatasetError

TITLE = "CUB-200-2011"
HINT = "extract CUB_200_2011.tgz into --data-root"


class Cub200(FileListDataset):
    name = "cub200"


def _find_root(root: Path) -> Path:
    if (root / "images.txt").is_file():
        return root
    if (root / "CUB_200_2011").is_dir():
        return root / "CUB_200_2011"
    raise DatasetError(f"{TITLE}: {root / 'CUB_200_2011' / 'images.txt'} is missing; {HINT}")


def read_pairs(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, key, value)`` of a two-column whitespace-separated file; the value may contain spaces."""
    if not path.is_file():
        raise DatasetError(f"{TITLE}: {path} is missing; {HINT}")
    rows: list[tuple[int, str, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise DatasetError(f"{TITLE}: {path} line {lineno} is malformed ({line.strip()!r}); expected 2 fields")
            rows.append((lineno, parts[0], parts[1]))
    if not rows:
        raise DatasetError(f"{TITLE}: {path} is empty; {HINT}")
    return rows


def _as_int(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{TITLE}: {path} line {lineno}: {what} {text!r} is not an integer") from None


def _by_id(path: Path, order: dict[str, int]) -> dict[str, tuple[int, str]]:
    """Map image id -> (line, value) of ``path``, checking it covers exactly the ids of images.txt, once each."""
    out: dict[str, tuple[int, str]] = {}
    for lineno, key, value in read_pairs(path):
        if key not in order:
            raise DatasetError(f"{TITLE}: {path} line {lineno}: image id {key} is not in images.txt; {HINT}")
        if key in out:
            raise DatasetError(f"{TITLE}: {path} line {lineno}: image id {key} appears twice; {HINT}")
        out[key] = (lineno, value)
    if len(out) != len(order):
        missing = next(k for k in order if k not in out)
        raise DatasetError(
            f"{TITLE}: {path} lacks image id {missing} (and {len(order) - len(out) - 1} more) listed in "
            f"images.txt; {HINT}"
        )
    return out


def _read_classes(path: Path) -> list[str]:
    names: list[str] = []
    for lineno, key, value in read_pairs(path):
        if _as_int(path, lineno, key, "class number") != len(names) + 1:
            raise DatasetError(f"{TITLE}: {path} line {lineno}: expected class number {len(names) + 1}, got {key}")
        names.append(value)
    return names


@register_dataset("cub200")
def build_cub200(root: Path | None, split: str) -> Cub200:
    """One split of CUB-200-2011 as defined by train_test_split.txt."""
    check_split(split)
    if root is None:
        raise DatasetError(f"{TITLE}: needs --data-root DIR; {HINT}")
    base = _find_root(root)
    images_txt = base / "images.txt"
    paths = read_pairs(images_txt)
    order: dict[str, int] = {}
    for lineno, key, _ in paths:
        if key in order:
            raise DatasetError(f"{TITLE}: {images_txt} line {lineno}: image id {key} appears twice; {HINT}")
        order[key] = lineno
    classes = _read_classes(base / "classes.txt")
    labels_path, split_path = base / "image_class_labels.txt", base / "train_test_split.txt"
    labels = _by_id(labels_path, order)
    is_train = _by_id(split_path, order)
    image_dir = base / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{TITLE}: {image_dir} is missing; {HINT}")

    want = "1" if split == "train" else "0"
    ids: list[str] = []
    targets: list[int] = []
    for _, key, relpath in paths:
        lineno, flag = is_train[key]
        if flag not in ("0", "1"):
            raise DatasetError(f"{TITLE}: {split_path} line {lineno}: is_train must be 0 or 1, got {flag!r}")
        if flag != want:
            continue
        lineno, text = labels[key]
        label = _as_int(labels_path, lineno, text, "label")
        if not 1 <= label <= len(classes):
            raise DatasetError(
                f"{TITLE}: {labels_path} line {lineno}: label {label} outside 1..{len(classes)} (classes.txt)"
            )
        if not os.path.isfile(image_dir / relpath):
            raise DatasetError(
                f"{TITLE}: image {image_dir / relpath} (images.txt line {order[key]}) is missing; {HINT}"
            )
        ids.append(relpath)
        targets.append(label - 1)
    return Cub200(image_root=image_dir, split=split, root=base, classes=classes, sample_ids=ids, targets=targets)
