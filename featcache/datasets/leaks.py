"""A test split that is not the training images: the same files (after resolving links), or byte-identical copies
of them, are refused before a run measures its "test accuracy" on training images."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

from featcache.datasets.images import read_file_bytes
from featcache.errors import DatasetError

ImageDataset = Any  # featcache.datasets.base.ImageDataset (base imports this module, so not imported here)


def _real_paths(paths: Sequence[str]) -> list[str]:
    """Paths with their directories resolved (symlinks, ``..``): a few realpath calls per folder, not per file."""
    dirs: dict[str, str] = {}
    out = []
    for p in paths:
        head, tail = os.path.split(p)
        real = dirs.get(head)
        if real is None:
            real = dirs[head] = os.path.realpath(head)
        out.append(os.path.join(real, tail))
    return out


_TAIL = 16 << 10  # bytes read from a file's end to find copies: a whole small image, the last scan data of a big one


def _tail_digest(path: str, size: int) -> bytes:
    """blake2b of a file's last _TAIL bytes (the whole file when smaller): equal for copies, rarely for others."""
    if size <= _TAIL:
        return hashlib.blake2b(read_file_bytes(path), digest_size=16).digest()
    try:
        with open(path, "rb") as f:
            f.seek(size - _TAIL)
            return hashlib.blake2b(f.read(_TAIL), digest_size=16).digest()
    except OSError as exc:
        raise DatasetError(f"image file {path} cannot be read ({exc.strerror or exc})") from None


def _same_bytes(a: str, b: str) -> bool:
    return read_file_bytes(a) == read_file_bytes(b)


def _tail_digests(files: list[tuple[str, int]]) -> list[bytes]:
    """_tail_digest of each (path, size): serial while reads are fast (local, cached: ~8 µs each), threads once the
    first chunk shows slow ones (cold disks, network file systems: reads release the GIL while they wait)."""
    import time

    step = 4096
    start = time.perf_counter()
    out = [_tail_digest(p, n) for p, n in files[:step]]
    if len(files) <= step or (time.perf_counter() - start) / step < 50e-6:
        return out + [_tail_digest(p, n) for p, n in files[step:]]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        return out + list(pool.map(lambda f: _tail_digest(*f), files[step:], chunksize=256))


def copied_files(train: ImageDataset, test: ImageDataset) -> list[tuple[str, str]]:
    """(test file, train file) for every test image that is a byte-identical copy of a training image.

    Cheap first: only files whose byte sizes occur in both splits are read (the sizes come from the stat the
    fingerprint needs anyway), and of those only the last 16 KiB; candidates are then confirmed byte by byte. On
    CIFAR-10's 60,000 JPEGs sizes barely filter (all lie in 692..1124 bytes), so every file is read once: ~0.7 s
    with a warm page cache."""
    a, b = train.image_paths(), test.image_paths()
    sa, sb = train.file_stats(), test.file_stats()
    if a is None or b is None or sa is None or sb is None:
        return []
    common = set(sa[:, 0].tolist()).intersection(sb[:, 0].tolist())
    if not common:
        return []
    files_a = [(p, n) for p, n in zip(a, sa[:, 0].tolist(), strict=True) if n in common]
    files_b = [(p, n) for p, n in zip(b, sb[:, 0].tolist(), strict=True) if n in common]
    seen: dict[tuple[int, bytes], list[str]] = {}
    for (path, size), digest in zip(files_a, _tail_digests(files_a), strict=True):
        seen.setdefault((size, digest), []).append(path)
    copies = []
    for (path, size), digest in zip(files_b, _tail_digests(files_b), strict=True):
        for original in seen.get((size, digest), ()):
            if size <= _TAIL or _same_bytes(path, original):  # a small file's digest covered all of it
                copies.append((path, original))
                break
    return copies


def check_same_classes(train: ImageDataset, test: ImageDataset, dataset: str) -> None:
    """The two splits name the same classes in the same order (a label means one class in both), or one line that
    says which differ."""
    if list(train.classes) == list(test.classes):
        return
    only_train = [c for c in train.classes if c not in set(test.classes)]
    only_test = [c for c in test.classes if c not in set(train.classes)]

    def show(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") if names else "none"

    what = (f"only in train: {show(only_train)}; only in test: {show(only_test)}" if only_train or only_test
            else "the same names in another order")
    raise DatasetError(f"dataset {dataset}: the train and test splits list different classes ({what}); give every "
                       "class its folder in both splits (an empty class folder is a class without images)")


def check_disjoint(train: ImageDataset, test: ImageDataset) -> None:
    """Refuse a test split that shares image files with the training split, or holds byte-identical copies of its
    images (a test/ copied from train/): its "test accuracy" would be measured on training images. Any one exact
    copy is refused; the real CIFAR-10 has none (near-duplicates, re-encoded or cropped, are not looked for)."""
    a, b = train.image_paths(), test.image_paths()
    if a is None or b is None:
        return
    fix = ("give the dataset a separate test split (for folder: a test/ folder, -o test_root=DIR or "
           "-o holdout=0.1)")
    shared = set(_real_paths(a)).intersection(_real_paths(b))
    if shared:
        example = min(shared)
        raise DatasetError(
            f"{test.name}: the test split holds {len(shared):,} of the training split's images (e.g. {example}), so "
            f"its accuracy would be measured on training images; {fix}"
        )
    copies = copied_files(train, test)
    if copies:
        copy, original = min(copies)
        raise DatasetError(
            f"{test.name}: {len(copies):,} of the test split's {len(b):,} images are byte-identical copies of training "
            f"images (e.g. {copy} = {original}), so its accuracy would be measured on training images; remove the "
            f"copies from the test split, or {fix}"
        )
