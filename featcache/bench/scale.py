"""`featcache bench scale`: an ImageNet-sized cache on this box, each figure next to its limit in the same process.

A synthetic cache of N rows × D dims × K views (featcache/bench/synth.py: the real format, writer, work directory and
resume) is written into a store, then measured through the functions the commands call:

* join: an epoch of shuffled batches through ``JoinedLoader.iter_rows`` with ``--cache-mode disk`` (the
  out-of-core table distill uses: block order, prefetch thread, ring), next to a sequential read of the same shards
  (the limit), warm and cold page cache, peak RSS above the process's baseline; the first epoch of a process also
  checks every shard's sha256 on first read, so it is given next to a sequential read + sha256;
* ram: what ``--cache-mode auto`` decides for the cache (printed), and the in-RAM load where the table fits the
  budget, next to a sequential read + sha256 (the load checks every shard too);
* verify, ls, the re-extract answer, resume after kill -9, publish / export / import / gc: scale_life.py.

Cold runs drop the shards' pages (``posix_fadvise(DONTNEED)``, no root needed) and check with ``mincore`` that none
of the sampled pages stayed resident.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import mmap
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from featcache.bench.synth import SynthSpec
from featcache.cache.format import FEATURES, LOGITS, PART_DATA
from featcache.cache.reader import FeatureCache, forget_verified_shards
from featcache.errors import ConfigError
from featcache.util.runtime import PeakRSS

READ_CHUNK = 8 << 20  # the sequential read's reused buffer (bench join's limit)
HASH_CHUNK = 1 << 20  # read + sha256: a chunk hashed while still in the CPU's cache


def load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def shard_files(cache: FeatureCache, parts: tuple[str, ...] | None = None) -> list[Path]:
    return [cache.directory / s.file for s in cache.manifest.shards if parts is None or s.part in parts]


def drop_pages(paths: list[Path]) -> None:
    """Ask the kernel to forget the cached pages of ``paths`` (clean pages only: they were fsynced when written)."""
    if not hasattr(os, "posix_fadvise"):
        raise ConfigError("cold runs need posix_fadvise (Linux)")
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[Path], sample: int = 16) -> float | None:
    """Share of the pages of ``sample`` of ``paths`` (spread over the list) in the page cache, by ``mincore``: how a
    cold run shows that its pages were dropped. None where mincore is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return None
    picked = paths[:: max(1, len(paths) // sample)][:sample]
    resident = total = 0
    for p in picked:
        size = p.stat().st_size
        if not size:
            continue
        with open(p, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
            pages = -(-size // mmap.PAGESIZE)
            vec = (ctypes.c_ubyte * pages)()
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            if mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
                return None
            resident += sum(b & 1 for b in vec)
            total += pages
    return resident / total if total else None


def sequential_read(paths: list[Path], sha256: bool = False) -> dict[str, float]:
    """Seconds to read ``paths`` in order into one reused buffer (and hash them): the limit of any reader."""
    buf = bytearray(HASH_CHUNK if sha256 else READ_CHUNK)
    view = memoryview(buf)
    done, start = 0, time.perf_counter()
    for p in paths:
        h = hashlib.sha256() if sha256 else None
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                done += n
                if h is not None:
                    h.update(view[:n])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": done, "bytes_per_s": done / seconds}


class _Samples:
    """The dataset a join-only loader needs: its length (no images are read; check=False)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def release(loader) -> None:
    """Close a loader and free its tables now: a JoinedLoader is in a reference cycle (its DataLoader's batch sampler
    points back at it), so without a collection each round's ring or 5 GB in-RAM table waits for the next gc."""
    loader.close()
    loader.tables.clear()
    gc.collect()


def make_loader(cache: FeatureCache, batch_size: int, mode: str, views: bool = False, ram_budget: int | None = None):
    from featcache.distill.loader import JoinedLoader

    # views: a transform is required to replay a view's image; iter_rows reads none, so any stands in for it
    return JoinedLoader(_Samples(cache.num_rows()), [cache],  # type: ignore[arg-type]  # what iter_rows reads
                        batch_size=batch_size, seed=0, workers=0, device="cpu",
                        mode=mode, check=False, views=views, ram_budget=ram_budget,
                        transform=cache.manifest.transform if views else None)


def join_epoch(loader) -> dict[str, Any]:
    """One epoch of ``loader.iter_rows()`` (the join as distill runs it), with peak RSS above the baseline."""
    base = PeakRSS.now() or 0
    rows = 0
    with PeakRSS() as rss:
        start = time.perf_counter()
        for batch in loader.iter_rows():
            rows += len(batch)
        seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "rss_above_baseline": (rss.peak or base) - base}


def _timed_pair(limit: Callable[[], dict], run: Callable[[], dict], cold: bool, paths: list[Path]) -> dict[str, Any]:
    """The limit, then the measured step, each after dropping the pages when ``cold``; their ratio."""
    out: dict[str, Any] = {"load_before": load()}
    for name, fn in (("limit", limit), ("run", run)):
        if cold:
            drop_pages(paths)
            out[f"{name}_resident_before"] = resident_fraction(paths)
        else:
            sequential_read(paths)  # warm: every page read once before
        out[name] = fn()
    out["load_after"] = load()
    return out


def bench_join_scale(cache: FeatureCache, batch_sizes: tuple[int, ...], repeats: int, temps: tuple[str, ...],
                     reporter) -> dict[str, Any]:
    """Out-of-core join epochs vs a sequential read of the data part's shards, interleaved in ``repeats`` rounds of
    every (batch size, warm/cold); then the first epoch of a process (shards hashed on first read) vs read + sha256."""
    paths = shard_files(cache, (PART_DATA,))
    rows = cache.num_rows()
    out: dict[str, Any] = {"rounds": []}
    for r in range(repeats):
        for bs in batch_sizes:
            for temp in temps:
                reporter.message(f"join round {r + 1}/{repeats}: batch {bs}, {temp} page cache")
                loader = make_loader(cache, bs, "disk")
                cache_files_checked(cache)
                got = _timed_pair(lambda: sequential_read(paths), lambda: join_epoch(loader),  # noqa: B023 (called now)
                                  temp == "cold", paths)
                release(loader)
                got.update(batch_size=bs, temp=temp, round=r, window_blocks=loader.window_blocks,
                           limit_rows_per_s=rows * got["limit"]["bytes"] / sum(p.stat().st_size for p in paths)
                           / got["limit"]["seconds"])
                got["ratio"] = got["run"]["rows_per_s"] / got["limit_rows_per_s"]
                out["rounds"].append(got)
    for temp in temps:
        reporter.message(f"first epoch of a process (every shard hashed on first read), {temp} page cache")
        loader = make_loader(cache, batch_sizes[0], "disk")

        def first() -> dict[str, Any]:
            forget_verified_shards()
            cache.close()
            return join_epoch(loader)  # noqa: B023 (called by _timed_pair below, before the loop moves on)

        got = _timed_pair(lambda: sequential_read(paths, sha256=True), first, temp == "cold", paths)
        release(loader)
        got["ratio"] = got["limit"]["seconds"] / got["run"]["seconds"]
        out[f"first_epoch_{temp}"] = got
    return out


def cache_files_checked(cache: FeatureCache) -> None:
    """Open (and so hash, once per process) every shard before a timed epoch: later epochs' state."""
    for shard in cache.manifest.shards_of(PART_DATA):
        cache.gather(np.array([shard.start]), fields=(LOGITS,))


def auto_decision(cache: FeatureCache, spec: SynthSpec, views: bool) -> dict[str, Any]:
    """What ``--cache-mode auto`` does with this cache (and --views when it has views), without loading anything
    when it would stream or refuse: the modes, the budget, the table's size, or the refusal's message."""
    from featcache.distill.loader import EAGER_RAM_BYTES, default_ram_budget

    need = (spec.views if views else 1) * cache.num_rows() * cache.row_bytes()
    budget = default_ram_budget()
    out: dict[str, Any] = {"views": views, "table_bytes": need, "budget_bytes": budget,
                           "eager_ram_bytes": EAGER_RAM_BYTES}
    if need <= budget and (views or need <= EAGER_RAM_BYTES):
        out["decision"] = "ram"  # it would load the tables: the ram step times that
        return out
    try:
        loader = make_loader(cache, 128, "auto", views=views)
    except ConfigError as exc:
        out["decision"] = "refused"
        out["message"] = str(exc)
        return out
    out["decision"] = loader.describe()
    out["modes"] = loader.modes
    release(loader)
    return out


def bench_ram_load(cache: FeatureCache, spec: SynthSpec, views: bool, repeats: int, temps: tuple[str, ...],
                   reporter) -> dict[str, Any]:
    """The in-RAM tables' load (as ``--cache-mode ram`` does it, shards hashed on first read) next to a sequential
    read + sha256 of the same bytes; peak RSS above the baseline."""
    parts = tuple(spec.parts) if views else (PART_DATA,)
    paths = shard_files(cache, parts)
    out: dict[str, Any] = {"rounds": []}
    for r in range(repeats):
        for temp in temps:
            reporter.message(f"in-RAM load round {r + 1}/{repeats}, {temp} page cache")

            def run() -> dict[str, Any]:
                forget_verified_shards()
                cache.close()
                base = PeakRSS.now() or 0
                with PeakRSS() as rss:
                    start = time.perf_counter()
                    loader = make_loader(cache, 128, "ram", views=views)
                    seconds = time.perf_counter() - start
                got = {"seconds": seconds, "rss_above_baseline": (rss.peak or base) - base, "modes": loader.modes}
                release(loader)
                return got

            got = _timed_pair(lambda: sequential_read(paths, sha256=True), run, temp == "cold", paths)
            got.update(temp=temp, round=r, ratio=got["limit"]["seconds"] / got["run"]["seconds"])
            out["rounds"].append(got)
    return out


def bench_ram_join(cache: FeatureCache, batch_size: int, repeats: int) -> dict[str, Any]:
    """An epoch of the in-RAM join (``iter_rows``, --cache-mode ram) vs ``np.take`` of the same batches into a
    reused buffer (a gather can be no faster), ``repeats`` rounds."""
    from featcache.distill.loader import epoch_plan

    loader = make_loader(cache, batch_size, "ram")
    feats, logits = loader.tables[0].arrays[:2]
    order = epoch_plan(cache.num_rows(), seed=loader.seed, epoch=0, shuffle=loader.shuffle,
                       block_rows=loader.block_rows, window_blocks=loader.window_blocks).order
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]  # the loader's epoch 0
    buf_f = np.empty((batch_size, feats.shape[1]), feats.dtype)
    buf_l = np.empty((batch_size, logits.shape[1]), logits.dtype)
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            np.take(feats, b, axis=0, out=buf_f[: len(b)], mode="clip")
            np.take(logits, b, axis=0, out=buf_l[: len(b)], mode="clip")
        limit = cache.num_rows() / (time.perf_counter() - start)
        got = join_epoch(loader)
        rounds.append({"limit_rows_per_s": limit, "rows_per_s": got["rows_per_s"],
                       "ratio": got["rows_per_s"] / limit, "load": load()})
    feats = logits = None
    release(loader)
    return {"batch_size": batch_size, "rounds": rounds, "fields": [FEATURES, LOGITS]}
