"""From ``--teacher`` arguments to opened caches that match the training data.

A teacher is named by teacher name (``resnet50``: the store is searched for a complete cache of that teacher on
exactly this dataset split), by cache key or unique key prefix, or by both (``resnet50:KEY`` or
``timm:NAME:KEY``, the key checked to be of that teacher). Zero or several matches are errors that say which command
to run or which key to pick.
"""

from __future__ import annotations

from featcache.cache.reader import FeatureCache
from featcache.cache.store import CacheStore
from featcache.datasets.base import ImageDataset
from featcache.errors import CacheError, CacheMismatchError


def _is_teacher_name(spec: str) -> bool:
    from featcache.errors import ModelError
    from featcache.models.registry import get_entry
    from featcache.models.teachers import torchvision_classifiers

    try:
        return get_entry("teacher", spec) is not None or spec in torchvision_classifiers()
    except ModelError:  # e.g. an unknown timm:NAME: then the text is NAME:KEY
        return False


def _extract_hint(name: str, dataset: ImageDataset) -> str:
    root = f" --data-root {dataset.root}" if dataset.root else ""
    opts = "".join(f" -o {k}={v}" for k, v in sorted(dataset.params.items()) if dataset.name == "synthetic")
    return f"featcache extract --teacher {name} --dataset {dataset.name}{root} --split {dataset.split}{opts}"


def resolve_teacher(spec: str, dataset: ImageDataset, store: CacheStore) -> FeatureCache:
    if _is_teacher_name(spec):  # names may hold a colon themselves (timm:NAME)
        name, key = spec, ""
    else:
        name, sep, key = spec.rpartition(":")  # NAME:KEY, where NAME may be timm:NAME
        if not sep:
            name, key = "", spec
    if key:
        cache = store.open(key)
        if name and cache.manifest.teacher.name != name:
            raise CacheMismatchError(
                f"--teacher {spec}: cache {cache.key} holds teacher {cache.manifest.teacher.name!r}, not {name!r}"
            )
        return cache
    from featcache.models.registry import get_entry

    entry = get_entry("teacher", name)
    canonical = entry.name if entry is not None else name
    matches = store.find(teacher=canonical, dataset_identity=dataset.identity())
    if not matches:
        others = store.find(teacher=canonical)
        seen = (f" (caches of {canonical} exist for other data: {', '.join(e.key for e in others[:3])})" if others
                else "")
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
    return FeatureCache(matches[0].directory)


def resolve_teachers(specs: list[str], dataset: ImageDataset, store: CacheStore) -> list[FeatureCache]:
    caches = [resolve_teacher(s, dataset, store) for s in specs]
    keys = [c.key for c in caches]
    if len(set(keys)) != len(keys):
        raise CacheError(f"--teacher lists cache {next(k for k in keys if keys.count(k) > 1)} twice")
    return caches
