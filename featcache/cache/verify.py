"""`featcache cache verify`: every shard of a cache re-hashed and its datasets' shapes checked against the manifest
(and so is the projection file of a projected cache)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py

from featcache.cache.format import (
    FEATURE_SCALE,
    FEATURES,
    INDEX,
    LOGITS,
    MANIFEST,
    PROJECTION_FILE,
    SHARD_SUFFIX,
    TMP_SUFFIX,
    Manifest,
    ShardInfo,
    parse_shard_name,
    shard_path,
)
from featcache.errors import CacheError
from featcache.util.hashing import file_sha256


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


def verify_directory(directory: Path, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    if not (directory / MANIFEST).is_file():
        raise CacheError(f"cache {directory.name} has no manifest.json (orphaned shards); remove it with "
                         f"`featcache cache rm {directory.name}` and extract again")
    m = Manifest.load(directory)
    report = VerifyReport(key=m.key, complete=m.complete)
    recorded = {s.file for s in m.files()}
    for i, s in enumerate(m.files()):
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
            problem = _check_shapes(path, m, s)
            report.checks.append(ShardCheck(s.file, "unreadable" if problem else "ok", problem or ""))
        if progress is not None:
            progress(i + 1, len(m.files()))
    for p in sorted(directory.iterdir()):
        if p.name.endswith(TMP_SUFFIX) or (p.name.endswith(SHARD_SUFFIX) and p.name not in recorded):
            name = p.name.removesuffix(TMP_SUFFIX)
            if parse_shard_name(name) is not None or name == PROJECTION_FILE:
                report.checks.append(ShardCheck(p.name, "leftover", "unfinished write; the next extract redoes it"))
    report.missing = len(m.expected_shards()) - len(m.shards)
    return report


def _check_shapes(path: Path, m: Manifest, s) -> str | None:
    if not isinstance(s, ShardInfo):  # the projection file
        from featcache.cache.codec import read_projection_file

        p = m.projection
        assert p is not None  # a projection file is listed only where the manifest records its projection
        got = read_projection_file(path, p.dim, p.source_dim)
        return got if isinstance(got, str) else None
    try:
        with h5py.File(path, "r") as f:
            return layout_problem(f, m, s)
    except OSError as exc:
        return f"HDF5 cannot open it ({exc})"


def layout_problem(f: h5py.File, m: Manifest, shard: ShardInfo) -> str | None:
    """What differs between an open shard's datasets and the shapes its manifest implies (None: nothing)."""
    rows = shard.rows
    want = {FEATURES: (rows, m.feature_dim), LOGITS: (rows, m.topk_logits or m.teacher.num_classes), INDEX: (rows,)}
    if m.feature_codec:
        want[FEATURE_SCALE] = (rows,)  # the int8 rows' per-row scales
    for name, shape in want.items():
        if name not in f:
            return f"dataset {name!r} missing"
        if f[name].shape != shape:
            return f"{name} has shape {f[name].shape}, expected {shape}"
    if f[FEATURES].dtype != m.dtype:
        return f"{FEATURES} is {f[FEATURES].dtype}, expected {m.dtype}"
    return None
