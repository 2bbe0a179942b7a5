"""SOD: Stanford Dogs merged with the dog images of Oxford-IIIT Pet (131 classes, 25,558 images).

Sources under ``--data-root`` (side by side, or in the named subfolders), or wherever ``-o stanford_root=DIR``
(Stanford's ``Images/`` folder or its parent) and ``-o pet_root=DIR`` (the folder holding Pet's ``images/`` and
``annotations/``) say:

* Stanford Dogs: ``Images/<wnid>-<Breed>/*.jpg`` (120 breeds, 20,580 images), looked for in ROOT,
  ROOT/stanford_dogs, ROOT/stanford-dogs, ROOT/StanfordDogs.
* Oxford-IIIT Pet: ``images/<Breed_name>_<n>.jpg`` and ``annotations/list.txt`` (``Image CLASS-ID SPECIES
  BREED-ID``; species 2 = dog; 4,978 dog images of 25 breeds), looked for in ROOT, ROOT/oxford-iiit-pet,
  ROOT/oxford_pet, ROOT/OxfordPet.

**Classes** come from the shipped table ``data/sod_classes.tsv`` (override with ``classes_file=``, or use
``classes=present`` for the table of the breeds on disk: a subset of breeds). Merge rule: a
Stanford breed (the dir name after its first ``-``) and a Pet breed (image name without its trailing ``_<n>``) are
one class when equal after lower-casing and dropping every non-letter; that merges 14 breeds, so 120 + 25 - 14 =
131 classes. Canonical order: the 120 Stanford dirs sorted by name (= by wnid), then the 11 Pet-only breeds
sorted by name. ``derive_class_table`` is the rule; tests check that the shipped table equals its output.

**Split rule ``rule-v1``** (the papers give no official split, only the sizes 20,492 / 5,066): deterministic and
stratified. Of N images, T = round_half_up(N * 5066 / 25558) are test images; T is apportioned over classes in
proportion to class size by the largest-remainder (Hamilton) method, remainder ties going to the lower class
index; within a class the test images are those whose sha256(sample id) hex digests are smallest. It depends on
the id set only (not on listing order), so N = 25,558 always gives exactly 20,492 train / 5,066 test.
``split_file=`` replaces it with a user's file of ``<train|test> <id>`` lines.

Sample ids: ``stanford/<dir>/<file>.jpg`` and ``pet/<file>.jpg``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from featcache.datasets.base import ImageDataset, check_split, table_lines
from featcache.datasets.folder import list_images
from featcache.datasets.registry import register_dataset
from featcache.datasets.sod_rules import (  # noqa: F401 - re-exported
    SPLIT_RULE,
    TABLE_HEADER,
    ClassRow,
    derive_class_table,
    format_class_table,
    merge_key,
    read_class_table,
    read_split_file,
    split_rule_mask,
    stanford_breed,
)
from featcache.errors import DatasetError, FeatcacheError

TABLE_NAME = "sod_classes.tsv"

STANFORD_SUBDIRS = ("", "stanford_dogs", "stanford-dogs", "StanfordDogs")
PET_SUBDIRS = ("", "oxford-iiit-pet", "oxford_pet", "OxfordPet")
STANFORD_HINT = "extract Stanford Dogs' images.tar so that Images/<wnid>-<Breed>/ lies under --data-root"
PET_HINT = "extract Oxford-IIIT Pet's images.tar.gz and annotations.tar.gz under --data-root"

PET_DOG_BREEDS = (
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
    "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug",
    "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier",
    "yorkshire_terrier",
)  # fmt: skip


# -- the sources on disk ---------------------------------------------------------------------------------------
def _find_stanford(root: Path | None, explicit: str | Path | None = None) -> Path:
    """Stanford Dogs' ``Images/``: ``-o stanford_root=DIR`` (that folder or one holding it), else looked for under
    --data-root."""
    if explicit is not None:
        base = Path(explicit).expanduser()
        for cand in (base, base / "Images"):
            if cand.is_dir() and (cand.name == "Images" or cand == base) and _looks_like_stanford(cand):
                return cand
        raise DatasetError(f"SOD: stanford_root={base} holds no Stanford Dogs breed folders (<wnid>-<Breed>/) "
                           "directly or in Images/; point it at Stanford Dogs' Images folder")
    for sub in STANFORD_SUBDIRS:
        if root is not None and (root / sub / "Images").is_dir():
            return root / sub / "Images"
    looked = "nothing: no --data-root" if root is None else ", ".join(str(root / sub / "Images")
                                                                     for sub in STANFORD_SUBDIRS)
    raise DatasetError(f"SOD: Stanford Dogs not found (looked for {looked}); {STANFORD_HINT}, or name the folder with "
                       "-o stanford_root=DIR")


def _looks_like_stanford(path: Path) -> bool:
    with os.scandir(path) as it:
        return any(e.is_dir() and re.match(r"^n\d+-", e.name) for e in it)


def _find_pet(root: Path | None, explicit: str | Path | None = None) -> tuple[Path, Path]:
    """(images dir, list.txt) of Oxford-IIIT Pet: ``-o pet_root=DIR`` (the folder holding images/ and
    annotations/), else looked for under --data-root."""
    bases = ([Path(explicit).expanduser()] if explicit is not None
             else [root / sub for sub in PET_SUBDIRS] if root else [])
    for base in bases:
        if (base / "images").is_dir() or (base / "annotations").is_dir() or explicit is not None:
            for p in (base / "images", base / "annotations" / "list.txt"):
                if not p.exists():
                    raise DatasetError(f"SOD: {p} is missing; {PET_HINT}")
            return base / "images", base / "annotations" / "list.txt"
    looked = ", ".join(str(b / "images") for b in bases)
    raise DatasetError(f"SOD: Oxford-IIIT Pet not found (looked for {looked}); {PET_HINT}, or name the folder with "
                       "-o pet_root=DIR")


def present_class_table(stanford: Path | None, pet: tuple[Path, Path] | None) -> list[ClassRow]:
    """The class table of the breeds actually on disk: the Stanford breed folders present, and the Pet dog breeds
    that list.txt names and whose images exist (merged by the same rule as the shipped table)."""
    dirs: list[str] = []
    if stanford is not None:
        with os.scandir(stanford) as it:
            dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    breeds: set[str] = set()
    if pet is not None:
        images, list_txt = pet
        on_disk = set(os.listdir(images))
        for _, line in table_lines(list_txt):
            parts = line.split()
            if len(parts) == 4 and parts[2] == "2" and f"{parts[0]}.jpg" in on_disk:
                breed, _, number = parts[0].rpartition("_")
                if breed and number.isdigit():
                    breeds.add(breed)
    if not dirs and not breeds:
        raise DatasetError("SOD: classes=present found no breed folders and no Pet dog images")
    try:
        return derive_class_table(dirs, sorted(breeds))
    except ValueError as exc:
        raise DatasetError(f"SOD: the breeds on disk cannot be merged into one table ({exc})") from None


def _stanford_samples(images: Path, rows: Sequence[ClassRow], table: Path) -> tuple[list[str], list[int]]:
    wanted = {r.stanford_dir: r.index for r in rows if r.stanford_dir}
    with os.scandir(images) as it:
        present = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for name in present:
        if name not in wanted:
            raise DatasetError(
                f"SOD: {images / name} is not a Stanford Dogs breed of the class table {table}; remove it"
            )
    ids: list[str] = []
    labels: list[int] = []
    for d, label in wanted.items():
        if not (images / d).is_dir():
            raise DatasetError(f"SOD: Stanford Dogs breed folder {images / d} is missing; {STANFORD_HINT}")
        files = list_images(images / d, recursive=False)
        if not files:
            raise DatasetError(f"SOD: Stanford Dogs breed folder {images / d} has no images; {STANFORD_HINT}")
        ids.extend(f"stanford/{d}/{f}" for f in files)
        labels.extend([label] * len(files))
    return ids, labels


def _pet_samples(images: Path, list_txt: Path, rows: Sequence[ClassRow], table: Path,
                 present: bool = False) -> tuple[list[str], list[int]]:
    """Dog rows (species 2) of list.txt; each must map to a table breed and exist on disk (``present``: rows whose
    image is absent are the subset's and are skipped)."""
    wanted = {r.pet_breed: r.index for r in rows if r.pet_breed}
    on_disk = set(os.listdir(images))
    found: dict[str, int] = {}
    for lineno, line in table_lines(list_txt):
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]) or parts[2] not in ("1", "2"):
            raise DatasetError(
                f"SOD: {list_txt} line {lineno} is malformed ({line!r}); expected 'Image CLASS-ID SPECIES "
                f"BREED-ID' with SPECIES 1 or 2; {PET_HINT}"
            )
        if parts[2] != "2":
            continue
        name = parts[0]
        breed, _, number = name.rpartition("_")
        if not breed or not number.isdigit():
            raise DatasetError(f"SOD: {list_txt} line {lineno}: image name {name!r} is not <breed>_<number>")
        if present and f"{name}.jpg" not in on_disk:
            continue
        if breed not in wanted:
            raise DatasetError(
                f"SOD: {list_txt} line {lineno}: dog breed {breed!r} is not in the class table {table}"
            )
        if f"{name}.jpg" not in on_disk:
            raise DatasetError(
                f"SOD: {images / (name + '.jpg')} (listed in {list_txt} line {lineno}) is missing; {PET_HINT}"
            )
        if f"pet/{name}.jpg" in found:
            raise DatasetError(f"SOD: {list_txt} line {lineno}: image {name!r} is listed twice")
        found[f"pet/{name}.jpg"] = wanted[breed]
    listed = set(found.values())
    missing = sorted(b for b, i in wanted.items() if i not in listed)
    if missing:
        raise DatasetError(
            f"SOD: {list_txt} has no dog images of breed {missing[0]!r} (class table {table}); {PET_HINT}"
        )
    ids = sorted(found)
    return ids, [found[i] for i in ids]


class SodDataset(ImageDataset):
    name = "sod"

    def __init__(self, *, stanford_images: Path | None, pet_images: Path | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._roots = {"stanford": stanford_images, "pet": pet_images}

    def image_path(self, index: int) -> str:
        source, rel = self.sample_ids[index].split("/", 1)
        return os.path.join(self._roots[source], rel)  # type: ignore[arg-type]  # set for every source it lists


@register_dataset("sod", needs_root=False)  # the two sources may be named by options instead
def build_sod(
    root: Path | None,
    split: str,
    split_file: str | Path | None = None,
    classes_file: str | Path | None = None,
    classes: str | None = None,
    stanford_root: str | Path | None = None,
    pet_root: str | Path | None = None,
) -> SodDataset:
    """One split of SOD. ``split_file``: a user's ``<train|test> <id>`` split instead of rule-v1.
    ``classes_file``: a class table replacing the shipped ``data/sod_classes.tsv``; ``classes="present"``: the
    table of the breeds on disk (a subset of breeds). ``stanford_root`` / ``pet_root``: the two sources wherever
    they are (then --data-root may be omitted)."""
    check_split(split)
    if root is None and stanford_root is None and pet_root is None:
        raise DatasetError(f"SOD: needs --data-root DIR (or -o stanford_root=DIR -o pet_root=DIR); {STANFORD_HINT}; "
                           f"{PET_HINT}")
    if classes not in (None, "present"):
        raise DatasetError(f"SOD: option classes={classes!r}: the only value is 'present' (use classes_file=PATH "
                           "for a table of your own)")
    if classes is not None and classes_file is not None:
        raise DatasetError("SOD: give either classes=present or classes_file=PATH, not both")
    params: dict = {"classes": "present"} if classes == "present" else {}
    rows, table = _class_table(root, classes, classes_file, stanford_root, pet_root)
    ids: list[str] = []
    labels: list[int] = []
    stanford = pet = None
    if any(r.stanford_dir for r in rows):
        stanford = _find_stanford(root, stanford_root)
        more_ids, more_labels = _stanford_samples(stanford, rows, table)
        ids += more_ids
        labels += more_labels
    if any(r.pet_breed for r in rows):
        pet, list_txt = _find_pet(root, pet_root)
        more_ids, more_labels = _pet_samples(pet, list_txt, rows, table, present=classes == "present")
        ids += more_ids
        labels += more_labels

    if split_file is not None:
        is_test = read_split_file(Path(split_file), ids)
        params.update(split="file", split_sha256=hashlib.sha256(Path(split_file).read_bytes()).hexdigest())
    else:
        is_test = split_rule_mask(ids, labels)
        params["split"] = SPLIT_RULE
    keep = np.flatnonzero(is_test if split == "test" else ~is_test)
    return SodDataset(
        stanford_images=stanford,
        pet_images=pet,
        split=split,
        root=root,
        classes=[r.class_name for r in rows],
        sample_ids=[ids[i] for i in keep],
        targets=np.asarray(labels, dtype=np.int64)[keep],
        params=params,
    )


def _class_table(root: Path | None, classes: str | None, classes_file: str | Path | None,
                 stanford_root: str | Path | None, pet_root: str | Path | None) -> tuple[list[ClassRow], Path]:
    """The class table and where it came from: the breeds on disk (``classes=present``), a user's file, or the
    shipped data/sod_classes.tsv."""
    if classes == "present":
        stanford = _find_stanford(root, stanford_root) if (stanford_root or _has_stanford(root)) else None
        pet_found = _find_pet(root, pet_root) if (pet_root or _has_pet(root)) else None
        return present_class_table(stanford, pet_found), Path("<classes=present>")
    try:
        table = Path(classes_file) if classes_file is not None else _shipped_table()
    except FeatcacheError as exc:
        raise DatasetError(f"SOD: {exc}") from None
    return read_class_table(table), table


def _has_stanford(root: Path | None) -> bool:
    return root is not None and any((root / sub / "Images").is_dir() for sub in STANFORD_SUBDIRS)


def _has_pet(root: Path | None) -> bool:
    return root is not None and any((root / sub / "images").is_dir() for sub in PET_SUBDIRS)


def _shipped_table() -> Path:
    from featcache.util.resources import data_path

    return data_path(TABLE_NAME)


def main(argv: Sequence[str]) -> int:
    """``python -m featcache.datasets.sod STANFORD_DIRS [OUT] [--pet PET_ROOT]``: write the class table.

    STANFORD_DIRS is a Stanford Dogs ``Images/`` folder or a text file with one breed dir name per line. The Pet
    breeds are the 25 of PET_DOG_BREEDS, or with ``--pet PET_ROOT`` (the folder holding images/ and annotations/)
    the dog breeds present there, so a subset of the data gets a table of its own breeds. OUT defaults to stdout.
    """
    args = list(argv)
    pet_root = None
    if "--pet" in args:
        at = args.index("--pet")
        if at + 1 >= len(args):
            print(main.__doc__, file=sys.stderr)
            return 2
        pet_root = args[at + 1]
        del args[at : at + 2]
    if len(args) not in (1, 2):
        print(main.__doc__, file=sys.stderr)
        return 2
    src = Path(args[0])
    try:
        if src.is_dir():
            dirs = [e.name for e in os.scandir(src) if e.is_dir() and not e.name.startswith(".")]
        else:
            dirs = [line.strip() for line in src.read_text().splitlines() if line.strip()]
        if pet_root is not None:
            rows = present_class_table(None, _find_pet(None, pet_root))
            breeds = [r.pet_breed for r in rows]
        else:
            breeds = list(PET_DOG_BREEDS)
        text = format_class_table(derive_class_table(dirs, breeds))
    except (OSError, ValueError, FeatcacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(args) == 2:
        from featcache.util.fileio import write_text_atomic

        try:
            write_text_atomic(Path(args[1]), text, flag="output")
        except FeatcacheError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
