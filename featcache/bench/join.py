"""`featcache bench join`: rows/s of the loader's row tables against naive h5py fancy indexing and one .pt file per
sample, each table next to its limit; and :func:`write_random_cache`, the random cache the benches and tests write
through the real writer."""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from featcache.bench.extract import load_1min, utc_now, versions
from featcache.errors import ConfigError
from featcache.specs import TransformSpec, WeightsInfo
from featcache.util.progress import Reporter


def write_random_cache(directory: Path, rows: int, dim: int, classes: int, shard_rows: int = 4096, seed: int = 0,
                       identity: dict | None = None, dtype: str = "float16"):
    """A complete cache of random fp16 features / fp32 logits written by the real writer (benchmarks, tests), named
    by its key as every reader requires: ``make_key(identity, "random", "bench", "train")``. Without ``identity``,
    ``directory``'s name is a label hashed into one, and the cache is written beside it under its key (the returned
    manifest's ``key``). ``dtype="int8"``: the same rows quantised as `extract --dtype int8` stores them (with their
    per-row scales)."""
    import numpy as np

    from featcache.cache.codec import quantise
    from featcache.cache.format import FEATURE_SCALE, INT8_CODEC, PART_DATA, Manifest, TeacherInfo, make_key
    from featcache.cache.writer import PartWriter

    rng = np.random.default_rng(seed)
    identity = identity or {"bench": directory.name, **({"feature_codec": INT8_CODEC} if dtype == "int8" else {})}
    key = make_key(identity, "random", "bench", "train")
    directory = directory.parent / key
    directory.mkdir(parents=True, exist_ok=True)
    m = Manifest(
        key=key, identity=identity, teacher=TeacherInfo("random", WeightsInfo.random(0), "random", dim, classes,
                                                        None, "unknown"),
        dataset={"name": "bench", "split": "train"}, classes=[str(c) for c in range(classes)],
        transform=TransformSpec(image_size=1, resize=1), dtype=dtype, logits_dtype="float32", precision="fp32",
        shard_rows=shard_rows, rows={PART_DATA: rows}, noise=None,
        feature_codec=INT8_CODEC if dtype == "int8" else None,
    )
    m.save(directory)
    writer = PartWriter(directory, m, PART_DATA, m.shards.append)
    for a in range(0, rows, shard_rows):
        b = min(a + shard_rows, rows)
        idx = np.arange(a, b)
        features, extra = rng.standard_normal((b - a, dim), dtype=np.float32).astype(np.float16), {}
        if dtype == "int8":
            q, scale = quantise(torch.from_numpy(features))
            features, extra = q.numpy(), {FEATURE_SCALE: scale.numpy()}
        writer.write(idx, features, rng.standard_normal((b - a, classes), dtype=np.float32), idx, extra)
    m.complete = True
    m.save(directory)
    return m


def _rate(fn, batches, limit_s: float) -> dict[str, Any]:
    """Rows/s of ``fn(batch)`` over ``batches``, stopping after ``limit_s`` seconds (slow anchors)."""
    rows, start = 0, time.perf_counter()
    for b in batches:
        fn(b)
        rows += len(b)
        if time.perf_counter() - start > limit_s:
            break
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0}


def _drop_page_cache(paths) -> bool:
    """Ask the kernel to forget the cached pages of ``paths`` (posix_fadvise DONTNEED: no root needed); False where
    the platform cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _maybe_cold(cold: bool, shard_paths: list[Path]) -> None:
    """Before a disk measurement with ``--cold``: drop the shards' pages from the page cache."""
    if cold and not _drop_page_cache(shard_paths):
        raise ConfigError("--cold needs posix_fadvise (Linux)")


def _batches(order, batch_size: int) -> list:
    """``order`` in full batches of ``batch_size`` (the last, partial one dropped)."""
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def _time_sequential_read(shard_paths: list[Path], rows: int) -> dict[str, Any]:
    """The out-of-core limit: the files' bytes, in order, into one reused buffer: no parsing, no copies."""
    chunk = bytearray(8 << 20)
    start, read = time.perf_counter(), 0
    for path in shard_paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(chunk):
                read += n
    seconds = time.perf_counter() - start
    total = sum(p.stat().st_size for p in shard_paths)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows * (read / total) / seconds,
            "bytes_per_s": read / seconds}


def _time_pt_files(cache, pt_dir: Path, n_pt: int, rng, batch_size: int, limit_s: float,
                   reporter: Reporter) -> dict[str, Any]:
    """The first ``n_pt`` rows written as one .pt file per sample (not timed), then read back in shuffled batches."""
    reporter.message(f"writing {n_pt:,} per-sample .pt files (not timed)")
    pt_dir.mkdir()
    table = cache.read_range(0, n_pt)
    for i in range(n_pt):
        torch.save({"features": torch.from_numpy(table["features"][i]),
                    "logits": torch.from_numpy(table["logits"][i])},
                   pt_dir / f"{i}.pt")
    pt_batches = _batches(rng.permutation(n_pt), batch_size)

    def load_pt(b):
        items = [torch.load(pt_dir / f"{i}.pt", weights_only=True) for i in b]
        return torch.stack([x["features"] for x in items]), torch.stack([x["logits"] for x in items])

    reporter.message("timing one .pt file per sample (torchdistill's cache layout)")
    return _rate(load_pt, pt_batches, limit_s)


def _time_in_ram(cache, shuffled: list, batch_size: int, limit_s: float, maybe_cold: Callable[[], None],
                 reporter: Reporter) -> dict[str, Any]:
    """The in-RAM table (and its load) next to its limit, np.take of the same batches into a reused buffer."""
    import numpy as np

    from featcache.distill.loader import InMemoryTable

    reporter.message("loading the in-RAM table")
    maybe_cold()
    t0 = time.perf_counter()
    ram = InMemoryTable(cache, "data")
    load_s = time.perf_counter() - t0
    feats, logits = ram.arrays
    buf_f = np.empty((batch_size, feats.shape[1]), feats.dtype)
    buf_l = np.empty((batch_size, logits.shape[1]), logits.dtype)

    def take_reused(b):
        # mode="clip": with out= and the default "raise", numpy gathers into a temporary and copies it over
        np.take(feats, b, axis=0, out=buf_f, mode="clip")
        np.take(logits, b, axis=0, out=buf_l, mode="clip")

    reporter.message("timing np.take into a reused buffer (the in-RAM limit), then the in-RAM table")
    results = {"np_take": _rate(take_reused, shuffled, limit_s), "ram": _rate(ram.gather, shuffled, limit_s)}
    results["ram"]["load_seconds"] = load_s
    return results


def _time_row_join(cache, shuffled: list, limit_s: float, reporter: Reporter) -> dict[str, Any]:
    reporter.message("timing featcache.api.RowJoin (the rows in a user's own loop)")
    from featcache.api import RowJoin

    join = RowJoin([cache], check=False, mode="ram")  # scratch rows of no dataset: the RAM gather alone is timed
    return _rate(join.join, shuffled, limit_s)


def _time_out_of_core(cache, rows: int, batch_size: int, seed: int, limit_s: float,
                      maybe_cold: Callable[[], None], reporter: Reporter) -> dict[str, Any]:
    from featcache.distill.loader import OutOfCoreTable, epoch_plan

    reporter.message("timing the out-of-core table (block shuffle, prefetch thread)")
    plan = epoch_plan(rows, seed=seed, epoch=0, shuffle="block", block_rows=1024, window_blocks=8)
    disk = OutOfCoreTable(cache, "data", 1024, 8)
    block_batches = _batches(plan.order, batch_size)
    maybe_cold()
    disk.start_epoch(plan)
    try:
        return _rate(disk.gather, block_batches, limit_s)
    finally:
        disk.close()


def _time_methods(root: Path, *, rows: int, dim: int, classes: int, batch_size: int, pt_files: int, limit_s: float,
                  seed: int, cold: bool, reporter: Reporter) -> dict[str, Any]:
    """Every method over one scratch cache under ``root``, in the order that frees each table before the next."""
    import numpy as np

    from featcache.cache.reader import FeatureCache

    reporter.message(f"writing {rows:,} random rows of {dim}-d fp16 features (not timed)")
    key = write_random_cache(root / "cache", rows, dim, classes, seed=seed).key
    cache = FeatureCache(root / key)
    shard_paths = [root / key / sh.file for sh in cache.manifest.shards]
    maybe_cold = functools.partial(_maybe_cold, cold, shard_paths)
    rng = np.random.default_rng(seed)
    shuffled = _batches(rng.permutation(rows), batch_size)
    results: dict[str, Any] = {}
    try:
        reporter.message("timing a sequential read of the shards (the out-of-core limit)")
        maybe_cold()
        results["sequential_read"] = _time_sequential_read(shard_paths, rows)
        reporter.message("timing naive h5py fancy indexing (one sorted read per batch and shard)")
        maybe_cold()
        results["h5py_fancy"] = _rate(lambda b: cache.gather(b), shuffled, limit_s)
        n_pt = min(pt_files, rows)
        results["pt_per_sample"] = _time_pt_files(cache, root / "pt", n_pt, rng, batch_size, limit_s, reporter)
        results.update(_time_in_ram(cache, shuffled, batch_size, limit_s, maybe_cold, reporter))
        results["library"] = _time_row_join(cache, shuffled, limit_s, reporter)
        results["disk"] = _time_out_of_core(cache, rows, batch_size, seed, limit_s, maybe_cold, reporter)
    finally:
        cache.close()
    return results


def bench_join(*, rows: int = 100_000, dim: int = 2048, classes: int = 10, batch_size: int = 128,
               pt_files: int = 5000, limit_s: float = 20.0, directory: Path | None = None, seed: int = 0,
               cold: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Rows/s of the joined loader's two table modes, each next to the machine's own limit for it, and the naive
    peers (h5py fancy indexing, one .pt file per sample).

    Limits: for the in-RAM table, ``np.take`` of the same shuffled batches into a reused buffer (a gather can be no
    faster); for the out-of-core table, a sequential read of the same shard bytes (the disk, or the page cache, can
    serve no faster). Every method serves shuffled batches of ``batch_size`` rows of the same cache (2048-d fp16
    features + logits by default). Files are freshly written, so reads come from the page cache unless ``cold``:
    then the shards' cached pages are dropped before each disk measurement.
    """
    reporter = reporter or Reporter()
    if rows < batch_size or batch_size < 1:
        raise ConfigError(f"--rows must be >= --batch-size >= 1, got {rows} and {batch_size}")
    load = [load_1min()]
    with tempfile.TemporaryDirectory(prefix="featcache-bench-join-", dir=directory) as scratch:
        results = _time_methods(Path(scratch), rows=rows, dim=dim, classes=classes, batch_size=batch_size,
                                pt_files=pt_files, limit_s=limit_s, seed=seed, cold=cold, reporter=reporter)
    load.append(load_1min())
    anchor = results["h5py_fancy"]["rows_per_s"]
    for r in results.values():
        r["vs_h5py_fancy"] = r["rows_per_s"] / anchor if anchor else None
    results["ram"]["vs_limit"] = results["ram"]["rows_per_s"] / results["np_take"]["rows_per_s"]
    results["library"]["vs_limit"] = results["library"]["rows_per_s"] / results["np_take"]["rows_per_s"]
    results["disk"]["vs_limit"] = results["disk"]["rows_per_s"] / results["sequential_read"]["rows_per_s"]
    return {
        "benchmark": "join",
        "date": utc_now(),
        "machine": platform.processor() or platform.machine(),
        "versions": versions(),
        "rows": rows, "dim": dim, "classes": classes, "batch_size": batch_size, "pt_files": min(pt_files, rows),
        "table_bytes": rows * (2 * dim + 4 * classes), "cold": cold, "load_1min": load,
        "results": results,
    }
