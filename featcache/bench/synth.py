"""A synthetic cache of any size, written fast and without a teacher: `featcache bench scale` (ImageNet-sized caches on
a box that has no ImageNet, no GPU and no time for a 1.28M-image teacher pass).

The cache is a real one: the extract's writer (cache/writer.py: .tmp, fsync, rename, sha256 per shard), its private
work directory and final rename (extract/workdir.py), its key lock, its manifest saves (at most one a second) and its
resume (a killed write's work directory is adopted, recorded shards with their size and sha256 are kept, the rest
redone), so `cache verify`, `cache ls`, publish, export/import, gc and the distill loader treat it as any cache. Its
key is the hash of its identity (rows, dim, classes, views, dtype, shard rows, seed), which `cache import` checks.

Rows are not random draws (generating 2.6G normal floats costs more than writing them): row r of a part is row
(r * 7919 + part) mod 4096 of a fixed pool of random rows, and its first logit is r itself (exact in float32 below
2^24), so a reader's rows can be checked against ``synthetic_rows`` and no two rows of a shard repeat.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from featcache.cache.format import (
    AUG,
    CONTENT,
    CONTENT_DIGEST,
    FEATURE_SCALE,
    FEATURES,
    INT8_CODEC,
    LOGITS,
    PART_DATA,
    TMP_SUFFIX,
    Manifest,
    TeacherInfo,
    make_key,
    parse_shard_name,
)
from featcache.cache.install import INCOMING
from featcache.cache.store import CacheLock
from featcache.cache.writer import PartWriter
from featcache.errors import ConfigError, StorageError
from featcache.specs import Timing, TransformSpec, ViewSpec, WeightsInfo
from featcache.util.progress import Reporter

POOL = 4096  # distinct random rows per (seed, dim, classes, dtype)
STRIDE = 7919  # a prime: consecutive rows of a part walk the pool without repeating within a 4096-row shard
SYNTH_DTYPES = ("float16", "float32", "int8")
MANIFEST_EVERY = 1.0  # seconds between manifest saves while writing (as extract's sweep)


@dataclass(frozen=True)
class SynthSpec:
    rows: int
    dim: int = 2048
    classes: int = 10
    views: int = 1
    dtype: str = "float16"
    shard_rows: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.dim < 1 or self.classes < 1 or self.views < 1 or self.shard_rows < 1:
            raise ConfigError(f"--rows, --dim, --classes, --views and shard rows must be >= 1, got {self}")
        if self.dtype not in SYNTH_DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose one of {', '.join(SYNTH_DTYPES)}")

    def identity(self) -> dict:
        return {"synthetic": "featcache bench scale", "rows": self.rows, "dim": self.dim, "classes": self.classes,
                "views": self.views, "dtype": self.dtype, "shard_rows": self.shard_rows, "seed": self.seed,
                **({"feature_codec": INT8_CODEC} if self.dtype == "int8" else {})}

    @property
    def key(self) -> str:
        return make_key(self.identity(), f"random{self.dim}", "synthetic", "train")

    @property
    def parts(self) -> list[str]:
        return [PART_DATA] + [f"view{v}" for v in range(1, self.views)]

    def row_bytes(self) -> int:
        """Bytes of one row of one part on disk (features and an int8 row's scale, logits, index, and the content
        digest or view params)."""
        return self.dim * np.dtype(self.dtype).itemsize + 4 * (self.dtype == "int8") + 4 * self.classes + 8 + 8

    def cache_bytes(self) -> int:
        return self.views * self.rows * self.row_bytes()


@lru_cache(maxsize=4)
def _pool(seed: int, dim: int, classes: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, logits, scales) of the pool's rows; int8 features are quantised as extract --dtype int8 does."""
    rng = np.random.default_rng([seed, dim, classes])
    features = rng.standard_normal((POOL, dim), dtype=np.float32).astype(np.float16)
    scales = np.ones(POOL, dtype=np.float32)
    if dtype == "int8":
        import torch

        from featcache.cache.codec import quantise

        q, s = quantise(torch.from_numpy(features))
        features, scales = q.numpy(), s.numpy()
    return features.astype(dtype), rng.standard_normal((POOL, classes), dtype=np.float32), scales


def _pick(spec: SynthSpec, part: str, start: int, stop: int) -> np.ndarray:
    offset = 0 if part == PART_DATA else int(part.removeprefix("view"))
    return (np.arange(start, stop, dtype=np.int64) * STRIDE + offset) % POOL


def synthetic_rows(spec: SynthSpec, part: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(features as stored, logits) of rows [start, stop) of ``part``, exactly as the generator writes them."""
    features, logits, _ = _pool(spec.seed, spec.dim, spec.classes, spec.dtype)
    pick = _pick(spec, part, start, stop)
    out_l = np.take(logits, pick, axis=0)
    out_l[:, 0] = np.arange(start, stop)
    return np.take(features, pick, axis=0), out_l


def synthetic_scales(spec: SynthSpec, part: str, start: int, stop: int) -> np.ndarray:
    """The per-row scales an int8 cache stores beside rows [start, stop) of ``part``."""
    return np.take(_pool(spec.seed, spec.dim, spec.classes, spec.dtype)[2], _pick(spec, part, start, stop))


def new_manifest(spec: SynthSpec, command: str) -> Manifest:
    return Manifest(
        key=spec.key, identity=spec.identity(),
        teacher=TeacherInfo(f"random{spec.dim}", WeightsInfo.random(0), "random", spec.dim, spec.classes, None,
                            "unknown"),
        dataset={"name": "synthetic-scale", "split": "train", "num_samples": spec.rows},
        classes=[str(c) for c in range(spec.classes)], transform=TransformSpec(224, 256), dtype=spec.dtype,
        logits_dtype="float32", precision="fp32", shard_rows=spec.shard_rows, rows={p: spec.rows for p in spec.parts},
        noise=None, views=ViewSpec(spec.views, "rrc-flip", spec.seed) if spec.views > 1 else None,
        feature_codec=INT8_CODEC if spec.dtype == "int8" else None,
        content=CONTENT_DIGEST, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        command=command,
    )


def _resume(work: Path, spec: SynthSpec, command: str, reporter: Reporter) -> Manifest:
    """The work directory's manifest with its intact shards (an adopted, killed write), else a new one; leftover
    shard files (unfinished .tmp, or not recorded) are removed — what extract's prepare_directory does."""
    from featcache.extract.manifest import load_manifest, shard_intact

    m = load_manifest(work)
    if m is not None and m.identity == spec.identity():
        kept = [s for s in m.shards if shard_intact(work, s)]
        reporter.message(f"resuming {spec.key}: {len(kept)}/{len(m.expected_shards())} shards kept "
                         f"({len(m.shards) - len(kept)} damaged)")
        m.shards, m.complete = kept, False
    else:
        m = new_manifest(spec, command)
    keep = {s.file for s in m.shards}
    for p in work.iterdir():
        if parse_shard_name(p.name.removesuffix(TMP_SUFFIX)) is not None and (
                p.name.endswith(TMP_SUFFIX) or p.name not in keep):
            p.unlink()
    return m


@dataclass
class Written:
    key: str
    directory: Path
    shards_kept: int  # recorded shards a resumed write found intact
    shards_written: int
    seconds: float
    bytes: int
    reused: bool = False  # the complete cache was already in the store


def write_synthetic_cache(store: Path, spec: SynthSpec, *, reporter: Reporter | None = None,
                          command: str = "") -> Written:
    """Write (or finish, or find) the synthetic cache ``spec`` in ``store``; see the module docstring."""
    from featcache.extract.manifest import load_manifest
    from featcache.extract.workdir import WorkDir

    reporter = reporter or Reporter()
    store = Path(store)
    target = store / spec.key
    done = load_manifest(target) if target.is_dir() else None
    if done is not None and done.complete:
        return Written(spec.key, target, len(done.shards), 0, 0.0, done.total_bytes(), reused=True)
    (store / INCOMING).mkdir(parents=True, exist_ok=True)
    lock = CacheLock(target)
    lock.path, lock.take_over_stale = store / INCOMING / f"{spec.key}.lock", True
    lock.acquire()
    work = WorkDir(store, spec.key)
    try:
        path = work.open(reporter)
        m = _resume(path, spec, command, reporter)
        kept = len(m.shards)
        m.save(path)
        todo = [(p, n) for p, n in m.expected_shards() if n not in {s.number for s in m.shards_of(p)}]
        need = sum(b - a for a, b in (m.shard_range(p, n) for p, n in todo)) * spec.row_bytes()
        if need > shutil.disk_usage(path).free:
            raise StorageError(f"the synthetic cache needs {need / 2**30:.1f} GiB more in {store}, but only "
                               f"{shutil.disk_usage(path).free / 2**30:.1f} GiB are free")
        start = time.perf_counter()
        _write_shards(path, m, todo, spec, reporter)
        m.complete = True
        m.finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        m.timing = Timing(seconds=round(time.perf_counter() - start, 3), images=int(need // spec.row_bytes()))
        m.save(path)
        seconds = time.perf_counter() - start
        directory = work.publish(False, reporter)
    finally:
        work.close()
        lock.release()
    return Written(spec.key, directory, kept, len(todo), seconds, Manifest.load(directory).total_bytes())


def _write_shards(path: Path, m: Manifest, todo: list[tuple[str, int]], spec: SynthSpec, reporter: Reporter,
                  threads: int = 2) -> None:
    """Every shard of ``todo`` through the extract's PartWriter, one write call per shard, in ``threads`` threads:
    a shard's fsync and sha256 (GIL released) overlap the next shard's HDF5 write (measured: 1.9x on 2 cores)."""
    saved, lock = time.monotonic(), threading.Lock()

    def on_done(info) -> None:
        nonlocal saved
        with lock:
            m.shards.append(info)
            if time.monotonic() - saved >= MANIFEST_EVERY:  # a save per shard would cost O(shards²) (extract's rule)
                m.save(path)
                saved = time.monotonic()

    items, errors = iter(todo), list[BaseException]()

    def work() -> None:
        writers: dict[str, PartWriter] = {}  # one per thread and part: a PartWriter's open shards are its own
        while not errors:
            with lock:
                item = next(items, None)
            if item is None:
                return
            part, number = item
            writer = writers.setdefault(part, PartWriter(path, m, part, on_done))
            a, b = m.shard_range(part, number)
            features, logits = synthetic_rows(spec, part, a, b)
            rows = np.arange(a, b, dtype=np.int64)
            extra = {CONTENT: rows} if part == PART_DATA else {AUG: np.zeros((b - a, 5), dtype=np.float32)}
            if spec.dtype == "int8":
                extra[FEATURE_SCALE] = synthetic_scales(spec, part, a, b)
            try:
                writer.write(rows, features, logits, rows, extra)
                reporter.advance(1)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                writer.abort()
                errors.append(exc)
                return

    reporter.start(len(todo), f"writing {spec.key}", unit="shard")
    pool = [threading.Thread(target=work, name="featcache-synth", daemon=True) for _ in range(threads)]
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    except BaseException as exc:  # Ctrl-C: the threads stop after their current shard
        errors.append(exc)
        for t in pool:
            t.join()
    finally:
        reporter.stop()
        with lock:
            m.save(path)  # every shard that finished (after an error too: the resume keeps them)
    if errors:
        raise errors[0]


def read_back_matches(directory: Path, spec: SynthSpec, rows: np.ndarray) -> bool:
    """Whether the cache at ``directory`` holds, at ``rows`` of every part, what ``synthetic_rows`` says (tests)."""
    from featcache.cache.reader import FeatureCache

    stored = (FEATURES, LOGITS) + ((FEATURE_SCALE,) if spec.dtype == "int8" else ())  # int8: the rows as stored
    with FeatureCache(directory) as cache:
        for part in spec.parts:
            got = cache.gather(rows, part=part, fields=stored)
            for k, r in enumerate(rows):
                want_f, want_l = synthetic_rows(spec, part, int(r), int(r) + 1)
                if not (np.array_equal(got[FEATURES][k], want_f[0]) and np.array_equal(got[LOGITS][k], want_l[0])):
                    return False
                scale = synthetic_scales(spec, part, int(r), int(r) + 1)[0]
                if spec.dtype == "int8" and got[FEATURE_SCALE][k] != scale:
                    return False
    return True


def remove_cache(store: Path, key: str) -> None:
    """Remove a synthetic cache and anything of its key in the store's .incoming/ (scratch runs)."""
    shutil.rmtree(Path(store) / key, ignore_errors=True)
    incoming = Path(store) / INCOMING
    if incoming.is_dir():
        for p in incoming.iterdir():
            if p.name.startswith(key):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free if os.path.exists(path) else 0
