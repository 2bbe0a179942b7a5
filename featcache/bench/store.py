"""`featcache bench store`: `cache export` and `cache import` next to a plain copy of the same bytes, `cache pull`
from an HTTP mirror next to a plain download (featcache.bench.pull), and `cache ls` over many keys.

export and import are timed through the very functions the commands call (featcache.cache.archive), on a synthetic
cache written by the real writer, each round next to ``shutil.copyfile`` of the cache's files in the same process:
bare (the kernel's copy, page cache only) and followed by an fsync of every copy (the durability export and import
give: their files reach the disk before they are renamed into sight). Every file a step reads is read once before
it (warm page cache), and ``os.sync()`` runs before each timing so that no earlier write-back lands in it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from featcache.cache.archive import export_cache, import_archive
from featcache.cache.format import MANIFEST, make_key
from featcache.cache.hashpipe import BUDGET, CHUNK
from featcache.cache.store import CacheStore
from featcache.errors import ConfigError
from featcache.util.fileio import read_json
from featcache.util.progress import Reporter

DIM, CLASSES, SHARD_ROWS = 2048, 10, 4096  # a resnet50-like row: 2048 fp16 features, 10 fp32 logits


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _timed(fn: Callable[[], Any]) -> float:
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(8 * 2**20):
                pass


def copy_files(files: list[Path], to: Path) -> tuple[float, float]:
    """Seconds of shutil.copyfile of ``files`` into ``to``, and of the same followed by an fsync of every copy."""
    to.mkdir()
    os.sync()
    start = time.perf_counter()
    for p in files:
        shutil.copyfile(p, to / p.name)
    copied = time.perf_counter() - start
    _fsync_all(sorted(to.iterdir()))
    return copied, time.perf_counter() - start


def _fsync_all(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def git_commit() -> str | None:
    """The checkout's short commit, for a bench's JSON (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def synthetic_cache(root: Path, size_mib: int, seed: int = 0) -> tuple[str, list[Path]]:
    """A complete cache of about ``size_mib`` MiB in the store ``root`` whose key `cache import` accepts; (key, its
    files)."""
    from featcache.bench.join import write_random_cache

    rows = max(1, size_mib * 2**20 // (2 * DIM + 4 * CLASSES + 16))
    identity = {"bench": "store", "rows": rows, "dim": DIM, "classes": CLASSES, "seed": seed}
    key = make_key(identity, "random", "bench", "train")
    write_random_cache(root / key, rows, DIM, CLASSES, shard_rows=SHARD_ROWS, seed=seed, identity=identity)
    return key, sorted((root / key).iterdir())


def _round(root: Path, key: str, files: list[Path]) -> dict[str, float]:
    """One round: the copy (bare, then + fsync), export, import; seconds of each."""
    store = CacheStore(root / "src", shared_env=False)
    _warm(files)
    t: dict[str, float] = dict(zip(("copy", "copy_fsync"), copy_files(files, root / "copy"), strict=True))
    shutil.rmtree(root / "copy")
    archive = root / "a.tar"
    t["export"] = _timed(lambda: export_cache(store, key, archive))
    (root / "dst").mkdir()
    _warm([archive])
    t["import"] = _timed(lambda: import_archive(archive, root / "dst"))
    t["archive_bytes"] = archive.stat().st_size
    shutil.rmtree(root / "dst")
    archive.unlink()
    return t


def many_caches(root: Path, keys: int) -> None:
    """``keys`` tiny complete caches in the store ``root``: one written, then copied under consistent keys."""
    from featcache.bench.join import write_random_cache

    first = {"bench": "ls", "n": 0}
    template = root / make_key(first, "random", "bench", "train")
    write_random_cache(template, rows=16, dim=8, classes=2, shard_rows=16, identity=first)
    manifest = read_json(template / MANIFEST)
    for n in range(1, keys):
        identity = {"bench": "ls", "n": n}
        key = make_key(identity, "random", "bench", "train")
        shutil.copytree(template, root / key)
        (root / key / MANIFEST).write_text(json.dumps({**manifest, "key": key, "identity": identity}, indent=2))


def bench_ls(root: Path, keys: int, repeats: int) -> dict[str, Any]:
    """`featcache cache ls` over ``keys`` caches: the command in a fresh process (what a user waits for) and the
    store's listing alone, medians of ``repeats``."""
    many_caches(root, keys)
    command = [sys.executable, "-m", "featcache", "cache", "ls", "--cache-dir", str(root)]
    # gc over the same keys, as a dry run with a budget that would remove half of them: it orders every cache by last
    # use and checks each for readers (leases), which is what a real gc does before it deletes
    budget = str(sum(p.stat().st_size for p in root.rglob("*.h5")) // 2)
    gc_command = [sys.executable, "-m", "featcache", "cache", "gc", "--cache-dir", str(root), "--max-size", budget,
                  "--dry-run"]
    env = {**os.environ, "FEATCACHE_PATH": ""}
    cli, entries, gc = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        cli.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(gc_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        gc.append(time.perf_counter() - start)
        start = time.perf_counter()
        listed = CacheStore(root, shared_env=False).entries()
        entries.append(time.perf_counter() - start)
    if len(listed) != keys:
        raise RuntimeError(f"cache ls listed {len(listed)} caches of {keys}")
    return {"keys": keys, "cli_seconds": _median(cli), "entries_seconds": _median(entries), "all_cli_seconds": cli,
            "all_entries_seconds": entries, "gc_dry_run_seconds": _median(gc), "all_gc_dry_run_seconds": gc}


def bench_store(*, size_mib: int = 512, repeats: int = 3, keys: int = 1000, directory: Path | None = None,
                reporter: Reporter | None = None, pull: bool = True, distill_images: int = 0) -> dict[str, Any]:
    """Export and import of a ``size_mib`` MiB cache next to copying its files, ``repeats`` rounds; its pull from an
    HTTP mirror next to a plain download (``pull``); a 1-epoch distill pulled on use vs pulled first
    (``distill_images`` > 0); ls over ``keys`` caches."""
    from featcache.bench.pull import bench_distill_pull, bench_pull

    if repeats < 1 or size_mib < 1 or keys < 1 or distill_images < 0:
        raise ConfigError("--repeats, --size-mib and --keys must be >= 1, --distill-images >= 0")
    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="featcache-bench-store-", dir=directory) as scratch:
        root = Path(scratch)
        reporter.message(f"writing a {size_mib} MiB synthetic cache")
        key, files = synthetic_cache(root / "src", size_mib)
        cache_bytes = sum(p.stat().st_size for p in files)
        copy_files(files, root / "copy")  # untimed: the first timed copy is not the first write of the session
        shutil.rmtree(root / "copy")
        loads, rounds = [_load()], []
        for r in range(repeats):
            reporter.message(f"round {r + 1}/{repeats}: copy, export, import")
            rounds.append(_round(root, key, files))
            loads.append(_load())
        pulled = bench_pull(root / "pull", root / "src", key, repeats, reporter) if pull else None
        distilled = bench_distill_pull(root / "distill", distill_images, repeats, reporter) if distill_images else None
        reporter.message(f"cache ls over {keys:,} caches")
        ls = bench_ls(root / "many", keys, repeats)
    results: dict[str, Any] = {}
    for name in ("copy", "copy_fsync", "export", "import"):
        seconds = [r[name] for r in rounds]
        results[name] = {"seconds": _median(seconds), "mb_per_s": cache_bytes / 1e6 / _median(seconds),
                         "all_seconds": seconds}
        if name in ("export", "import"):  # same-round ratios, then their median
            results[name]["vs_copy"] = _median([r["copy"] / r[name] for r in rounds])
            results[name]["vs_copy_fsync"] = _median([r["copy_fsync"] / r[name] for r in rounds])
    return {
        "benchmark": "store",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "cache_bytes": cache_bytes,
        "archive_bytes": rounds[0]["archive_bytes"],
        "shards": len(files) - 1,
        "chunk_bytes": CHUNK,
        "budget_bytes": BUDGET,
        "page_cache": "warm (every file read once before its timing; os.sync() before each timing)",
        "repeats": repeats,
        "load_1min": loads,
        "results": results,
        "pull": pulled,
        "distill_pull": distilled,
        "ls": ls,
    }
