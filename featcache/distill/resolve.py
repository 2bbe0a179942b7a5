"""From ``--teacher`` arguments to the training data and to opened caches that match it.

A teacher is named by teacher name (``resnet50``: the store is searched for a complete cache of that teacher on
exactly this dataset split), by cache key or unique key prefix, or by both (``resnet50:KEY`` or
``timm:NAME:KEY``, the key checked to be of that teacher). Zero or several matches are errors that say which command
to run or which key to pick.

Without ``--dataset`` the data is the one the teachers' caches were extracted from (:func:`with_data`): the dataset
and split their manifests record, the data root and dataset options of their recorded extract command. A manifest may
come from anyone (a shared store, an imported archive): those values are checked as strictly as the flags they stand
for, and nothing else of the command is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.cache.format import PART_DATA, Manifest
from featcache.cache.reader import FeatureCache
from featcache.cache.store import CacheEntry, CacheStore
from featcache.config import DistillConfig
from featcache.config.common import DEFAULT_DATASET
from featcache.datasets.base import ImageDataset
from featcache.errors import CacheError, CacheMismatchError, FeatcacheError
from featcache.util.fileio import printable

# Options that make featcache act (fetch files) rather than say which data: never taken from a manifest.
_ACTIONS = frozenset({"download"})


def _is_teacher_name(spec: str) -> bool:
    from featcache.errors import ModelError
    from featcache.models.registry import get_entry
    from featcache.models.teachers import torchvision_classifiers

    try:
        return get_entry("teacher", spec) is not None or spec in torchvision_classifiers()
    except ModelError:  # e.g. an unknown timm:NAME: then the text is NAME:KEY
        return False


def _parts(spec: str) -> tuple[str, str]:
    """``--teacher`` as (teacher name, cache key or prefix); either may be empty."""
    if _is_teacher_name(spec):  # names may hold a colon themselves (timm:NAME)
        return spec, ""
    name, sep, key = spec.rpartition(":")  # NAME:KEY, where NAME may be timm:NAME
    return (name, key) if sep else ("", spec)


def _canonical(name: str) -> str:
    from featcache.models.registry import get_entry

    entry = get_entry("teacher", name)
    return entry.name if entry is not None else name


def _extract_hint(name: str, dataset: ImageDataset) -> str:
    root = f" --data-root {dataset.root}" if dataset.root else ""
    opts = "".join(f" -o {k}={v}" for k, v in sorted(dataset.params.items()) if dataset.name == "synthetic")
    return f"featcache extract --teacher {name} --dataset {dataset.name}{root} --split {dataset.split}{opts}"


def _data_of(e: CacheEntry) -> str:
    """``KEY (sod/train, 1,234 rows, root /x)``: a cache as the data it holds, for the lines that list several."""
    from featcache.cache.commands import recorded_extract

    m = e.manifest
    assert m is not None  # entries come from CacheStore.find
    recorded = recorded_extract(m)
    root = f", root {recorded.data_root}" if recorded is not None and recorded.data_root is not None else ""
    return printable(f"{e.key} ({m.dataset.get('name')}/{m.dataset.get('split')}, {m.rows.get(PART_DATA, 0):,} "
                     f"rows{root})")


def resolve_teacher(spec: str, dataset: ImageDataset, store: CacheStore) -> FeatureCache:
    name, key = _parts(spec)
    if key:
        cache = store.open(key)
        if name and cache.manifest.teacher.name != name:
            raise CacheMismatchError(
                f"--teacher {spec}: cache {cache.key} holds teacher {cache.manifest.teacher.name!r}, not {name!r}"
            )
        return cache
    canonical = _canonical(name)
    matches = store.find(teacher=canonical, dataset_identity=dataset.identity())
    if not matches:
        others = store.find(teacher=canonical)
        # A cache of training data is what --teacher NAME:KEY without --dataset trains on.
        hint = (f"; to train on a cache's data, drop --dataset and give --teacher {canonical}:KEY"
                if any(e.manifest is not None and e.manifest.dataset.get("split") == "train" for e in others) else "")
        seen = (f" (caches of {canonical} exist for other data: {', '.join(_data_of(e) for e in others[:3])}{hint})"
                if others else "")
        raise CacheError(
            f"--teacher {spec}: no cache of {canonical} for {dataset.name}/{dataset.split} in {store.root}{seen}"
            f"{store.skipped_note()}; "
            f"create it with `{_extract_hint(canonical, dataset)}`"
        )
    if len(matches) > 1:
        choices = ", ".join(
            f"{e.key} ({e.manifest.transform.image_size} px, "
            f"weights {e.manifest.teacher.weights.ref})"
            for e in matches[:5]
        )
        raise CacheError(f"--teacher {spec} is ambiguous: {choices}; pick one with --teacher {canonical}:KEY")
    return FeatureCache(store.local(matches[0]).directory)  # a remote store's cache is pulled first


def resolve_teachers(specs: list[str], dataset: ImageDataset, store: CacheStore) -> list[FeatureCache]:
    caches = [resolve_teacher(s, dataset, store) for s in specs]
    keys = [c.key for c in caches]
    if len(set(keys)) != len(keys):
        raise CacheError(f"--teacher lists cache {next(k for k in keys if keys.count(k) > 1)} twice")
    return caches


# -- the data a teacher's cache was extracted from ----------------------------------------------------------------
@dataclass(frozen=True)
class TeacherData:
    """The data cache ``key`` was extracted from, as its manifest records it, checked as the flags are."""

    key: str
    dataset: str
    data_root: Path | None
    options: dict[str, Any]
    identity: Any  # the manifest's dataset identity: what "the same data" means

    def describe(self, data_root: Path | None) -> str:
        """Where the run's data came from (the pre-flight's ``data`` line): ``data_root`` is the run's."""
        root = f", root {printable(str(data_root))}" if data_root is not None else ""
        given = " given by --data-root" if data_root is not None and data_root != self.data_root else ""
        return f"from cache {self.key}'s manifest{root}{given}"


def recorded_data(key: str, m: Manifest) -> TeacherData:
    """The data cache ``key`` (manifest ``m``) was extracted from; a value no flag would take is a one-line error."""
    from featcache.cache.commands import recorded_extract
    from featcache.datasets import list_datasets

    name = m.dataset.get("name")
    if not isinstance(name, str) or name not in list_datasets():
        raise CacheError(f"cache {key} records dataset {printable(str(name))!r}, which featcache does not read by "
                         "name; give the training data with --dataset NAME (and --data-root DIR)")
    recorded = recorded_extract(m)
    if recorded is not None:
        root, options = recorded.data_root, dict(recorded.dataset_options)
    else:  # a cache of the Python API: only the synthetic dataset's parameters are its options (commands.py)
        params = m.dataset.get("params")
        root, options = None, dict(params) if name == "synthetic" and isinstance(params, dict) else {}
    return TeacherData(key, name, _checked_root(key, root), _checked_options(key, name, options),
                       m.identity.get("dataset"))


def _checked_root(key: str, root: Any) -> Path | None:
    if root is None:
        return None
    text = str(root)
    if not text or not text.isprintable():  # control characters or a NUL: no folder a flag would name
        raise CacheError(f"cache {key} records the data root {printable(text)!r}, which is no folder name; give "
                         "the data's folder with --data-root DIR")
    return Path(text)


def _checked_options(key: str, dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    from featcache.config.flags import check_type
    from featcache.datasets.registry import dataset_option_types

    declared = dataset_option_types(dataset)
    checked = {}
    for k, v in options.items():
        if k in _ACTIONS:
            continue
        if k not in declared:
            raise CacheError(f"cache {key} records dataset option {printable(str(k))!r}, which {dataset} does not "
                             f"take (its options: {', '.join(sorted(declared)) or 'none'}); give the data with "
                             "--dataset and -o")
        checked[k] = check_type(declared[k], v, f"cache {key}'s dataset option {k}")
    return checked


def with_data(config: DistillConfig, store: CacheStore) -> tuple[DistillConfig, TeacherData | None]:
    """``config`` with the data it trains on: as given (``--dataset``); else the data the teachers' caches were
    extracted from (``--data-root`` and ``-o``, when given, in place of the recorded ones) and that cache; else the
    synthetic set. The test split is the same dataset's, with the same root and options."""
    if config.dataset is not None:
        return config, None
    found = _teachers_data(config.teachers, store)
    if found is None:
        return dataclasses.replace(config, dataset=DEFAULT_DATASET), None
    root = config.data_root if config.data_root is not None else _readable_root(found)
    options = {**found.options, **config.dataset_options}
    return dataclasses.replace(config, dataset=found.dataset, data_root=root, dataset_options=options), found


def _teachers_data(specs: list[str], store: CacheStore) -> TeacherData | None:
    """The data of the teachers' caches, which must be the same data; None when no teacher names a cache (their
    own errors follow, naming the extract to run)."""
    found = [(spec, d) for spec in specs if (d := _spec_data(spec, store)) is not None]
    if not found:
        return None
    (spec0, first), rest = found[0], found[1:]
    for spec, d in rest:
        if d.identity != first.identity:
            raise CacheError(f"--teacher {printable(spec0)} and --teacher {printable(spec)}: their caches were "
                             f"extracted from different data ({first.key}: {first.dataset}, {d.key}: {d.dataset}, "
                             "different images or splits); a run trains on one dataset: extract both teachers on the "
                             "same data, or choose it with --dataset NAME --data-root DIR")
    return first


def _spec_data(spec: str, store: CacheStore) -> TeacherData | None:
    """The data of the cache one ``--teacher`` names: its training-split caches must all be of the same data."""
    name, key = _parts(spec)
    if key:
        entry = store.locate(key)
        return recorded_data(entry.key, entry.manifest) if entry.manifest is not None else None
    canonical = _canonical(name)
    groups: dict[str, list[CacheEntry]] = {}
    for e in store.find(teacher=canonical, split="train"):
        assert e.manifest is not None  # find returns readable manifests only
        groups.setdefault(json.dumps(e.manifest.identity.get("dataset"), sort_keys=True, default=str), []).append(e)
    if len(groups) > 1:
        listed = ", ".join(_data_of(g[0]) for g in list(groups.values())[:5])
        raise CacheError(f"--teacher {printable(spec)}: the stores hold caches of {canonical} for different data: "
                         f"{listed}; choose one with --teacher {canonical}:KEY, or the data with --dataset NAME "
                         "--data-root DIR")
    if not groups:
        return None
    first = next(iter(groups.values()))[0]
    assert first.manifest is not None
    return recorded_data(first.key, first.manifest)


def _readable_root(d: TeacherData) -> Path | None:
    """The recorded data root, when the dataset reads one: it must still be a folder this user can read."""
    from featcache.datasets.registry import needs_root

    if not needs_root(d.dataset):
        return d.data_root
    if d.data_root is None:
        raise CacheError(f"cache {d.key} of {d.dataset} does not record where its images are; give their folder with "
                         "--data-root DIR")
    if not (os.path.isdir(d.data_root) and os.access(d.data_root, os.R_OK | os.X_OK)):
        raise CacheError(f"cache {d.key} was extracted from {d.dataset} at {printable(str(d.data_root))}, which no "
                         "longer exists or cannot be read; give the data's folder with --data-root DIR (its images "
                         "are checked against the cache's digests)")
    return d.data_root


# -- the caches a run without a teacher could use -----------------------------------------------------------------
def stored_teachers(store: CacheStore, student: str, data: Any = None, limit: int = 3) -> str | None:
    """Words for the no-teacher warning: a few complete training-split caches of the stores (those of ``data``, a
    dataset identity, first) and the command that distils from one; None when the stores hold none. Reads manifests
    only."""
    try:
        entries = store.find(split="train")
    except (FeatcacheError, OSError):  # an unreadable store: the warning goes without the list
        return None
    if not entries:
        return None
    entries.sort(key=lambda e: e.manifest is None or e.manifest.identity.get("dataset") != data)
    listed = []
    for e in entries[:limit]:
        m = e.manifest
        assert m is not None
        listed.append(printable(f"{m.teacher.name} on {m.dataset.get('name')} ({e.key})"))
    first = entries[0].manifest
    assert first is not None
    spec = f"{first.teacher.name}:{entries[0].key}" if _is_teacher_name(first.teacher.name) else entries[0].key
    more = f" and {len(entries) - limit} more (`featcache cache ls`)" if len(entries) > limit else ""
    return (f"the stores hold {', '.join(listed)}{more}: distil from one with "
            f"`featcache distill --student {shlex.quote(student)} --teacher {shlex.quote(printable(spec))}`")
