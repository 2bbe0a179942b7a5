"""The cache store: where caches live, how they are found, listed, verified, locked and removed.

Caches live under ``$FEATCACHE_HOME`` (default ``~/.cache/featcache``) or an explicit ``--cache-dir``; each is a
directory named by its key. Keys can be abbreviated to any unique prefix, as git does with commit hashes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py

from featcache.cache.format import (
    FEATURES,
    INDEX,
    LOCK,
    LOGITS,
    MANIFEST,
    SHARD_SUFFIX,
    TMP_SUFFIX,
    Manifest,
    parse_shard_name,
    shard_path,
)
from featcache.cache.reader import FeatureCache
from featcache.cache.requests import REQUESTS_DIR
from featcache.errors import CacheError, CacheLockedError, CacheVersionError, StorageError
from featcache.locks import DirLock, unwritable
from featcache.hashing import file_sha256

def default_cache_dir() -> Path:
    env = os.environ.get("FEATCACHE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featcache"


@dataclass
class CacheEntry:
    key: str
    directory: Path
    manifest: Manifest | None
    error: str | None = None

    orphaned: bool = False  # shards or temp files without a manifest (the manifest was lost)
    newer: bool = False  # written by a newer featcache (a format this one does not read; left as it is)

    @property
    def status(self) -> str:
        if self.orphaned:
            return "orphaned"
        if self.newer:
            return "newer format"
        if self.manifest is None:
            return "broken"
        if self.manifest.complete:
            return "complete"
        return f"partial {len(self.manifest.shards)}/{len(self.manifest.expected_shards())}"


@dataclass
class ShardCheck:
    file: str
    status: str  # ok | missing | truncated | corrupt | unreadable | leftover
    detail: str = ""


@dataclass
class VerifyReport:
    key: str
    complete: bool
    checks: list[ShardCheck] = field(default_factory=list)
    missing: int = 0  # shards an incomplete cache has not written yet

    @property
    def bad(self) -> list[ShardCheck]:
        return [c for c in self.checks if c.status not in ("ok", "leftover")]

    @property
    def ok(self) -> bool:
        return not self.bad


class CacheLock(DirLock):
    """Exclusive advisory lock on ``<cache dir>/.lock``; one writer (extract, rm) per cache at a time."""

    error = CacheLockedError

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, what="cache")


class CacheStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        if self.root.exists() and not self.root.is_dir():
            source = ("--cache-dir" if root is not None else
                      "FEATCACHE_HOME" if os.environ.get("FEATCACHE_HOME") else "the default store")
            raise StorageError(f"{source} {self.root} is a file, not a directory: point {source} at a directory "
                               "(the cache store)")

    def path(self, key: str) -> Path:
        return self.root / key

    # -- listing and lookup -----------------------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != REQUESTS_DIR):
            if not (d / MANIFEST).is_file():
                if _holds_cache_files(d):
                    out.append(CacheEntry(d.name, d, None, "no manifest.json: its shards cannot be read; remove "
                                          f"them with `featcache cache rm {d.name}`", orphaned=True))
                continue
            try:
                out.append(CacheEntry(d.name, d, Manifest.load(d)))
            except CacheVersionError as exc:
                out.append(CacheEntry(d.name, d, None, str(exc), newer=True))
            except CacheError as exc:
                out.append(CacheEntry(d.name, d, None, str(exc)))
        return out

    def resolve(self, key: str) -> str:
        """Full key for ``key`` or a unique prefix of one (orphaned directories included, so `rm` can find them)."""
        if (self.root / key / MANIFEST).is_file() or (key and _holds_cache_files(self.root / key)):
            return key
        keys = [e.key for e in self.entries()]
        matches = [k for k in keys if k.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CacheError(
                f"no cache {key!r} in {self.root}{self.skipped_note()}; list caches with `featcache cache ls`"
                + (" (or pass --cache-dir)" if not keys else "")
            )
        raise CacheError(f"cache key prefix {key!r} is ambiguous ({', '.join(matches[:4])}); give more characters")

    def skipped_note(self) -> str:
        """Words on the caches a lookup could not consider (a newer format, a broken manifest), for "no cache"
        errors: '' when there are none."""
        skipped = [e for e in self.entries() if e.manifest is None and not e.orphaned]
        if not skipped:
            return ""
        newer = [e for e in skipped if e.newer]
        what = (f"{len(newer)} written by a newer featcache, e.g. {newer[0].key}" if newer else
                f"{len(skipped)} with an unreadable manifest, e.g. {skipped[0].key}")
        return f" (skipped {len(skipped)} cache(s) it cannot read: {what}; see `featcache cache ls`)"

    def open(self, key: str) -> FeatureCache:
        full = self.resolve(key)
        if not (self.path(full) / MANIFEST).is_file():
            raise CacheError(f"cache {full} has lost its manifest.json, so its shards cannot be trusted; remove it "
                             f"with `featcache cache rm {full}` and extract again")
        return FeatureCache(self.path(full))

    def find(
        self,
        *,
        teacher: str | None = None,
        dataset: str | None = None,
        split: str | None = None,
        dataset_identity: dict[str, Any] | None = None,
        transform: dict[str, Any] | None = None,
        complete: bool = True,
    ) -> list[CacheEntry]:
        """Caches matching every given criterion (None = any)."""
        out = []
        for e in self.entries():
            m = e.manifest
            if m is None or (complete and not m.complete):
                continue
            if teacher is not None and m.teacher.name != teacher:
                continue
            if dataset is not None and m.dataset.get("name") != dataset:
                continue
            if split is not None and m.dataset.get("split") != split:
                continue
            if dataset_identity is not None and m.dataset != dataset_identity:
                continue
            if transform is not None and m.transform != transform:
                continue
            out.append(e)
        return out

    # -- maintenance ------------------------------------------------------------------------------------------
    def remove(self, key: str) -> int:
        """Delete a cache (after taking its lock, so a running extract is never pulled from under); returns bytes."""
        full = self.resolve(key)
        directory = self.path(full)
        try:
            lock = CacheLock(directory).acquire(wait=False)
        except CacheLockedError as exc:
            raise exc.with_hint("let its extract finish (or stop it), then remove the cache") from None
        try:
            size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
            # Drop the manifest first: a crash mid-removal leaves a directory nobody mistakes for a cache.
            (directory / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(directory)
        except OSError as exc:
            raise unwritable(directory, exc, "cache") from None
        finally:
            lock.release()
        return size

    def verify(self, key: str, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Recompute every shard's checksum and check its shapes against the manifest."""
        full = self.resolve(key)
        return verify_directory(self.path(full), progress=progress)


def _holds_cache_files(directory: Path) -> bool:
    """Whether a directory without a manifest holds what an extract leaves: shards, temp files, a lock."""
    try:
        return directory.is_dir() and any(
            parse_shard_name(p.name.removesuffix(TMP_SUFFIX)) is not None or p.name in (LOCK, MANIFEST + TMP_SUFFIX)
            for p in directory.iterdir()
        )
    except OSError:
        return False


def verify_directory(directory: Path, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    if not (directory / MANIFEST).is_file():
        raise CacheError(f"cache {directory.name} has no manifest.json (orphaned shards); remove it with "
                         f"`featcache cache rm {directory.name}` and extract again")
    m = Manifest.load(directory)
    report = VerifyReport(key=m.key, complete=m.complete)
    recorded = {s.file for s in m.shards}
    for i, s in enumerate(m.shards):
        try:
            path = shard_path(directory, s)
        except CacheError as exc:
            report.checks.append(ShardCheck(s.file, "refused", str(exc).split("; ")[0].split(": ", 1)[-1]))
            continue
        if not path.is_file():
            report.checks.append(ShardCheck(s.file, "missing", "file not found"))
        elif path.stat().st_size != s.bytes:
            report.checks.append(
                ShardCheck(s.file, "truncated", f"{path.stat().st_size} bytes on disk, manifest says {s.bytes}")
            )
        elif file_sha256(path) != s.sha256:
            report.checks.append(ShardCheck(s.file, "corrupt", "sha256 differs from the manifest"))
        else:
            problem = _check_shapes(path, s.rows, m.teacher.num_features, m.teacher.num_classes)
            report.checks.append(ShardCheck(s.file, "unreadable" if problem else "ok", problem or ""))
        if progress is not None:
            progress(i + 1, len(m.shards))
    for p in sorted(directory.iterdir()):
        if p.name.endswith(TMP_SUFFIX) or (p.name.endswith(SHARD_SUFFIX) and p.name not in recorded):
            if parse_shard_name(p.name.removesuffix(TMP_SUFFIX)) is not None:
                report.checks.append(ShardCheck(p.name, "leftover", "unfinished write; the next extract redoes it"))
    report.missing = len(m.expected_shards()) - len(m.shards)
    return report


def _check_shapes(path: Path, rows: int, dim: int, classes: int) -> str | None:
    try:
        with h5py.File(path, "r") as f:
            want = {FEATURES: (rows, dim), LOGITS: (rows, classes), INDEX: (rows,)}
            for name, shape in want.items():
                if name not in f:
                    return f"dataset {name!r} missing"
                if f[name].shape != shape:
                    return f"{name} has shape {f[name].shape}, expected {shape}"
    except OSError as exc:
        return f"HDF5 cannot open it ({exc})"
    return None


def open_cache(key_or_path: str | Path, cache_dir: str | Path | None = None) -> FeatureCache:
    """Open a complete cache by key (or unique key prefix) in the store, or by directory path."""
    path = Path(key_or_path).expanduser()
    if (path / MANIFEST).is_file():
        return FeatureCache(path)
    return CacheStore(cache_dir).open(str(key_or_path))
