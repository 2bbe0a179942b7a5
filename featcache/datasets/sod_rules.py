"""SOD's two rules, data rather than code paths: which Stanford Dogs and Oxford-IIIT Pet breeds are one class (the
merge rule and the class table, data/sod_classes.tsv) and which images are test images (split rule ``rule-v1``, or a
user's split file). featcache/datasets/sod.py describes both."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from featcache.datasets.base import table_lines
from featcache.errors import DatasetError

TABLE_HEADER = ("index", "class_name", "stanford_dir", "pet_breed")
SPLIT_RULE = "rule-v1"
TEST_NUM, TEST_DEN = 5066, 25558  # test share of the papers' sizes (5,066 of 25,558)


class ClassRow(NamedTuple):
    """One SOD class; an empty ``stanford_dir`` / ``pet_breed`` means that source lacks the breed."""

    index: int  # type: ignore[assignment]  # shadows tuple.index (a field of the table, read by name)
    class_name: str
    stanford_dir: str
    pet_breed: str



# -- the merge rule and the class table -------------------------------------------------------------------------
def merge_key(breed: str) -> str:
    """Lower-cased letters only: ``Staffordshire_bullterrier`` and ``staffordshire_bull_terrier`` agree."""
    return re.sub(r"[^a-z]", "", breed.lower())


def stanford_breed(dirname: str) -> str:
    """``n02093256-Staffordshire_bullterrier`` -> ``Staffordshire_bullterrier`` (text after the first ``-``)."""
    return dirname.split("-", 1)[1] if "-" in dirname else dirname


def derive_class_table(stanford_dirs: Sequence[str], pet_breeds: Sequence[str]) -> list[ClassRow]:
    """The SOD classes in canonical order: Stanford dirs sorted by name, then Pet-only breeds sorted by name."""
    by_key: dict[str, str] = {}
    for breed in pet_breeds:
        if merge_key(breed) in by_key:
            raise ValueError(f"Pet breeds {by_key[merge_key(breed)]!r} and {breed!r} share merge key")
        by_key[merge_key(breed)] = breed
    rows: list[ClassRow] = []
    merged: set[str] = set()
    for d in sorted(stanford_dirs):
        pet = by_key.get(merge_key(stanford_breed(d)), "")
        if pet in merged:
            raise ValueError(f"two Stanford dirs merge with Pet breed {pet!r}")
        if pet:
            merged.add(pet)
        rows.append(ClassRow(len(rows), stanford_breed(d), d, pet))
    for breed in sorted(set(pet_breeds) - merged):
        rows.append(ClassRow(len(rows), breed, "", breed))
    return rows


def format_class_table(rows: Sequence[ClassRow]) -> str:
    lines = ["\t".join(TABLE_HEADER)]
    lines += [f"{r.index}\t{r.class_name}\t{r.stanford_dir}\t{r.pet_breed}" for r in rows]
    return "\n".join(lines) + "\n"


def read_class_table(path: Path) -> list[ClassRow]:
    """Parse and validate a class table (header, then ``index class_name stanford_dir pet_breed`` rows)."""
    fix = "restore it from the featcache checkout (data/sod_classes.tsv) or fix the line"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        raise DatasetError(f"SOD: class table {path} is missing or unreadable; {fix}") from None
    lines = text.splitlines()
    if not lines or tuple(lines[0].split("\t")) != TABLE_HEADER:
        raise DatasetError(f"SOD: {path} line 1 must be the header {'<TAB>'.join(TABLE_HEADER)}; {fix}")
    rows: list[ClassRow] = []
    seen_dirs: set[str] = set()
    seen_pets: set[str] = set()
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 4 or not cells[0].isdigit() or int(cells[0]) != len(rows) or not cells[1]:
            raise DatasetError(
                f"SOD: {path} line {lineno} is malformed ({line!r}); expected index {len(rows)}, a class name, "
                f"a Stanford dir and a Pet breed separated by tabs; {fix}"
            )
        row = ClassRow(int(cells[0]), cells[1], cells[2], cells[3])
        if not row.stanford_dir and not row.pet_breed:
            raise DatasetError(f"SOD: {path} line {lineno}: class {row.class_name!r} has no source; {fix}")
        checks = ((row.stanford_dir, seen_dirs, "Stanford dir"), (row.pet_breed, seen_pets, "Pet breed"))
        for value, seen, what in checks:
            if value and value in seen:
                raise DatasetError(f"SOD: {path} line {lineno}: {what} {value!r} appears twice; {fix}")
            seen.add(value)
        rows.append(row)
    if not rows:
        raise DatasetError(f"SOD: {path} has no classes; {fix}")
    return rows


# -- splits ----------------------------------------------------------------------------------------------------
def split_rule_mask(ids: Sequence[str], labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Split rule ``rule-v1``: boolean is_test per sample (see the module docstring). Pure and order-free."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids but {n} labels")
    if n == 0:
        return np.zeros(0, dtype=bool)
    total = (2 * n * TEST_NUM + TEST_DEN) // (2 * TEST_DEN)  # round half up, in exact integers
    classes, counts = np.unique(labels, return_counts=True)
    quota = total * counts  # class quota = quota / n seats, kept exact as integer numerators
    seats = quota // n
    remainder = quota % n
    leftover = int(total - seats.sum())
    # Largest remainder first; np.unique sorted the classes, so lexsort's stability breaks ties by class index.
    seats[np.lexsort((classes, -remainder))[:leftover]] += 1

    digests = np.array([hashlib.sha256(s.encode("utf-8")).hexdigest() for s in ids])
    order = np.lexsort((np.asarray(ids, dtype=str), digests, labels))  # by class, then digest (id: total order)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank_in_class = np.arange(n) - starts
    is_test = np.empty(n, dtype=bool)
    is_test[order] = rank_in_class < np.repeat(seats, counts)
    return is_test


def read_split_file(path: Path, ids: Sequence[str]) -> np.ndarray:
    """is_test mask from a ``<train|test> <id>`` file that lists every sample exactly once."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"SOD: split file {path} (split_file) is missing")
    position = {sid: i for i, sid in enumerate(ids)}
    is_test = np.zeros(len(ids), dtype=bool)
    seen = np.zeros(len(ids), dtype=bool)
    first_line: dict[int, int] = {}
    for lineno, line in table_lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("train", "test"):
            raise DatasetError(
                f"SOD: split file {path} line {lineno} is malformed ({line!r}); expected '<train|test> <id>'"
            )
        i = position.get(parts[1])
        if i is None:
            raise DatasetError(
                f"SOD: split file {path} line {lineno}: unknown sample id {parts[1]!r}; ids look like "
                "stanford/<dir>/<file>.jpg or pet/<file>.jpg"
            )
        if seen[i]:
            raise DatasetError(
                f"SOD: split file {path} line {lineno}: sample {parts[1]!r} already listed on line {first_line[i]}"
            )
        seen[i] = True
        first_line[i] = lineno
        is_test[i] = parts[0] == "test"
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise DatasetError(
            f"SOD: split file {path} does not list sample {ids[missing[0]]!r} ({len(missing)} samples missing); "
            "every sample must appear exactly once"
        )
    return is_test


