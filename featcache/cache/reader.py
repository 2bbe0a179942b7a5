"""Reading a cache: gather rows by dataset index, or load a whole table into RAM.

    >>> from featcache.cache import open_cache
    >>> cache = open_cache("resnet50-cifar10-train-3f2a9c1d0b7e")
    >>> cache.check_dataset(dataset)                 # refuses a cache made from other data
    >>> rows = cache.gather(np.array([5, 1, 5]))     # {"features": [3, 2048], "logits": [3, 10]}

An int8 cache's features come back as float rows (FEATURE_READ_DTYPE) unless the caller asks for FEATURE_SCALE too:
then it gets the stored int8 rows and their scales, to dequantise later itself (the loaders do, on the device).

Gathers are vectorised: indices are sorted once, mapped to shards with one searchsorted, and each shard is read
with a single sorted fancy selection (h5py requires increasing, unique indices), then scattered back into the
caller's order. HDF5 handles are opened lazily in the process that reads and are dropped on pickling, because a
handle shared across fork() corrupts reads.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import h5py
import numpy as np

from featcache.cache.codec import decode_rows, is_int8, read_projection_file
from featcache.cache.commands import command_or
from featcache.cache.direct import read_rows_into
from featcache.cache.format import (
    AUG,
    CONTENT,
    FEATURE_SCALE,
    FEATURES,
    INDEX,
    LOGITS,
    LOGITS_INDEX,
    PART_DATA,
    Manifest,
    ProjectionInfo,
    ShardInfo,
    block_field,
    shard_path,
)
from featcache.cache.verify import layout_problem
from featcache.errors import CacheError, CacheMismatchError, check_choice
from featcache.specs import TransformSpec
from featcache.util.fileio import printable
from featcache.util.hashing import file_sha256

DEFAULT_FIELDS = (FEATURES, LOGITS)
CONTENT_CHECKS = ("sample", "full", "off")  # distill --content-check
CONTENT_SAMPLE = 256  # rows re-hashed by the default check: a change to 1% of the images is caught 92% of the time

# Fields compared by check_dataset, with the words used in the error message.
_DATASET_FIELDS = (
    ("name", "dataset name"),
    ("split", "split"),
    ("num_samples", "number of samples"),
    ("ids_sha256", "sample ids"),
    ("labels_sha256", "labels"),
    ("num_classes", "number of classes"),
    ("classes_sha256", "class list"),
    ("params", "dataset parameters"),
    ("fingerprint", "image files (their sizes or modification times changed since the extract)"),
)


class FeatureCache:
    """Read access to one complete cache directory."""

    def __init__(self, directory: str | Path, *, allow_incomplete: bool = False) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.load(self.directory)
        m = self.manifest
        if not m.complete and not allow_incomplete:
            done, total = len(m.shards), len(m.expected_shards())
            hint = f" by re-running `{command_or(m)}`"
            raise CacheError(f"cache {m.key} is incomplete ({done}/{total} shards); finish it{hint}")
        self._shards = {p: m.shards_of(p) for p in m.rows}
        self._starts = {p: np.array([s.start for s in shards], dtype=np.int64) for p, shards in self._shards.items()}
        self._files: dict[str, h5py.File] = {}
        if m.projection is not None and m.complete:  # checked like a shard: size always, sha256 once per process
            check_shard(shard_path(self.directory, m.projection), m.projection, self.key, self._repair_hint,
                        what="projection file")

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def num_features(self) -> int:
        """The width of the rows methods get: the projection's N for a projected cache, else the teacher's D."""
        return self.manifest.feature_dim

    @property
    def num_classes(self) -> int:
        return self.manifest.teacher.num_classes

    def num_rows(self, part: str = PART_DATA) -> int:
        return int(self.manifest.rows.get(part, 0))

    def row_bytes(self, fields: Sequence[str] = DEFAULT_FIELDS) -> int:
        """Bytes one row of ``fields`` takes in RAM (for memory budgets)."""
        m = self.manifest
        sizes = {
            FEATURES: np.dtype(m.dtype).itemsize * m.feature_dim,
            FEATURE_SCALE: 4 if is_int8(m) else 0,
            LOGITS: np.dtype(m.logits_dtype).itemsize * (m.topk_logits or m.teacher.num_classes),
            INDEX: 8,
            LOGITS_INDEX: 4 * (m.topk_logits or 0),
            **{block_field(b.name): np.dtype(m.dtype).itemsize * b.dim for b in m.blocks},
        }
        return sum(sizes[f] for f in fields)

    @property
    def join_fields(self) -> tuple[str, ...]:
        """What the loader joins besides features/logits/blocks, in this order: the int8 rows' scales (to dequantise
        them on the device) and the top-k logits' classes (to rebuild dense logits)."""
        return (FEATURE_SCALE,) * is_int8(self.manifest) + (LOGITS_INDEX,) * bool(self.manifest.topk_logits)

    def projection(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean [D], components [N, D]) of a projected cache (its rows are ``(f - mean) @ components.T``), else
        None; a damaged projection file is a CacheError naming it and the repair."""
        p = self.manifest.projection
        if p is None:
            return None
        path = shard_path(self.directory, p)
        check_shard(path, p, self.key, self._repair_hint, what="projection file")
        got = read_projection_file(path, p.dim, p.source_dim)
        if isinstance(got, str):
            raise CacheError(f"cache {self.key}: projection file {p.file} is unreadable ({got}); {self._repair_hint()}")
        return got

    @property
    def block_fields(self) -> list[str]:
        """Field names of the cached intermediate blocks (empty unless extracted with --blocks)."""
        return [block_field(b.name) for b in self.manifest.blocks]

    # -- file handles -----------------------------------------------------------------------------------------
    def _repair_hint(self) -> str:
        cmd = command_or(self.manifest)
        return f"re-run `{cmd}` (it redoes damaged shards; `featcache cache verify {self.key}` lists them all)"

    def _file(self, shard: ShardInfo) -> h5py.File:
        f = self._files.get(shard.file)
        if f is None:
            path = shard_path(self.directory, shard)
            check_shard(path, shard, self.key, self._repair_hint)
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise CacheError(f"cache {self.key}: shard {shard.file} is unreadable ({_one_line(exc)}); "
                                 f"{self._repair_hint()}") from None
            problem = layout_problem(f, self.manifest, shard)  # e.g. an int8 shard without its scales
            if problem:
                f.close()
                raise CacheError(f"cache {self.key}: shard {shard.file} is not laid out as its manifest says "
                                 f"({problem}); {self._repair_hint()}")
            self._files[shard.file] = f
        return f

    def shard_file(self, shard: ShardInfo) -> h5py.File:
        """The open HDF5 file of ``shard``, checked like every read's (size always, sha256 once per process): for
        readers that address its datasets' bytes themselves (the out-of-core loader maps them, distill/loader)."""
        return self._file(shard)

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken handle must not mask the real error
                pass
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- reads ------------------------------------------------------------------------------------------------
    def empty_rows(self, n: int, fields: Iterable[str]) -> dict[str, np.ndarray]:
        """Uninitialised arrays for ``n`` rows of ``fields`` in the stored dtypes (reused as gather buffers; an int8
        cache's FEATURES are int8 here, with FEATURE_SCALE beside them)."""
        m = self.manifest
        shapes = {
            FEATURES: ((n, m.feature_dim), m.dtype),
            **({FEATURE_SCALE: ((n,), "float32")} if is_int8(m) else {}),  # int8 rows: their scales
            LOGITS: ((n, m.topk_logits or m.teacher.num_classes), m.logits_dtype),
            INDEX: ((n,), "int64"),
            **{block_field(b.name): ((n, b.dim), m.dtype) for b in m.blocks},
            AUG: ((n, 5), "float32"),  # view parts only: the view's augmentation parameters
            **({LOGITS_INDEX: ((n, m.topk_logits), "int32")} if m.topk_logits else {}),
            **({CONTENT: ((n,), "int64")} if m.content else {}),  # data part: per-row content digests
        }
        unknown = [f for f in fields if f not in shapes]
        if unknown:
            raise CacheError(f"cache {self.key} has no field {unknown[0]!r} (blocks cached: "
                             f"{', '.join(b.name for b in m.blocks) or 'none'})")
        return {f: np.empty(*shapes[f]) for f in fields}

    def stored_fields(self, fields: Sequence[str]) -> tuple[str, ...]:
        """The stored fields that give ``fields``: int8 features need their scales to be read back as floats."""
        fields = tuple(fields)
        if is_int8(self.manifest) and FEATURES in fields and FEATURE_SCALE not in fields:
            return (*fields, FEATURE_SCALE)
        return fields

    def _decoded(self, rows: dict[str, np.ndarray], fields: Sequence[str]) -> dict[str, np.ndarray]:
        return rows if FEATURE_SCALE in fields else decode_rows(self.manifest, rows)

    def gather(
        self, indices: Sequence[int] | np.ndarray, part: str = PART_DATA, fields: Sequence[str] = DEFAULT_FIELDS
    ) -> dict[str, np.ndarray]:
        """Rows at ``indices`` (any order, repeats allowed), one sorted read per touched shard."""
        return self._decoded(self._gather_stored(indices, part, self.stored_fields(fields)), fields)

    def _gather_stored(self, indices: Sequence[int] | np.ndarray, part: str, fields: Sequence[str]
                       ) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_rows = self.num_rows(part)
        if len(idx) and (idx.min() < 0 or idx.max() >= n_rows):
            raise IndexError(f"cache {self.key} part {part!r} has {n_rows} rows; asked for {idx.min()}..{idx.max()}")
        uniq, inverse = np.unique(idx, return_inverse=True)  # sorted and unique, as h5py requires
        out = self.empty_rows(len(uniq), fields)
        shards = self._shards[part]
        which = np.searchsorted(self._starts[part], uniq, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1
        bounds = np.concatenate([[0], cuts, [len(uniq)]])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if a == b:
                continue
            shard = shards[int(which[a])]
            local = uniq[a:b] - shard.start
            f = self._file(shard)
            lo, hi = int(local[0]), int(local[-1]) + 1
            for name in fields:
                if hi - lo == len(local):  # a contiguous run: one hyperslab read straight into the output
                    f[name].read_direct(out[name], source_sel=np.s_[lo:hi], dest_sel=np.s_[a:b])
                else:
                    out[name][a:b] = f[name][local]
        if len(uniq) == len(idx) and np.array_equal(uniq, idx):
            return out
        return {name: arr[inverse] for name, arr in out.items()}

    def read_range(
        self, start: int, stop: int, part: str = PART_DATA, fields: Sequence[str] = DEFAULT_FIELDS
    ) -> dict[str, np.ndarray]:
        """Rows [start, stop) as contiguous hyperslab reads."""
        out = self.empty_rows(stop - start, self.stored_fields(fields))
        self.read_range_into(start, stop, out, 0, part=part)
        return self._decoded(out, fields)

    def read_range_into(
        self, start: int, stop: int, out: dict[str, np.ndarray], offset: int, part: str = PART_DATA
    ) -> None:
        """Read rows [start, stop) straight into ``out[field][offset : offset + stop - start]`` (no temporaries):
        the out-of-core loader's block read. One hyperslab read per touched shard and field."""
        if not 0 <= start <= stop <= self.num_rows(part):
            raise IndexError(f"cache {self.key} part {part!r}: rows [{start}, {stop}) out of range")
        shards = self._shards[part]
        first = int(np.searchsorted(self._starts[part], start, side="right")) - 1
        pos = start
        for shard in shards[max(first, 0) :]:
            if pos >= stop:
                break
            a, b = pos - shard.start, min(stop, shard.stop) - shard.start
            f = self._file(shard)
            dest = offset + pos - start
            for name, arr in out.items():  # one pread per field where the layout allows (cache/direct.py)
                read_rows_into(f, name, arr, a, b, dest)
            pos = shard.start + b

    def read_all(self, part: str = PART_DATA, fields: Sequence[str] = DEFAULT_FIELDS) -> dict[str, np.ndarray]:
        """The whole table of ``part`` in RAM, read shard by shard straight into one array per field."""
        return self.read_range(0, self.num_rows(part), part=part, fields=fields)

    def first_nonfinite(self, part: str = PART_DATA, chunk: int = 65536) -> tuple[str, int] | None:
        """(field, row) of the first NaN or inf among the features and logits of ``part``, else None (a diagnosis
        after a run diverged: it reads the whole part). int8 features are checked as they are read back (floats)."""
        n = self.num_rows(part)
        for start in range(0, n, chunk):
            rows = self.read_range(start, min(start + chunk, n), part=part)
            for name in DEFAULT_FIELDS:
                bad = np.flatnonzero(~np.isfinite(rows[name]).all(axis=1))
                if len(bad):
                    return name, start + int(bad[0])
        return None

    # -- validation -------------------------------------------------------------------------------------------
    def check_dataset(self, dataset: Any, transform: TransformSpec | None = None) -> None:
        """Refuse to join this cache with a dataset (and transform) it was not extracted from.

        ``dataset`` is an ImageDataset (its ``identity()`` is compared field by field) and ``transform`` an
        optional TransformSpec. The error names the first differing field.
        """
        mine = self.manifest.dataset
        theirs = dataset.identity()
        if "fingerprint" not in mine:
            raise CacheMismatchError(
                f"cache {self.key} was written before featcache fingerprinted image content, so it cannot be checked "
                f"against the images; re-extract it: {command_or(self.manifest, 'featcache extract ...')}"
            )
        for field, words in _DATASET_FIELDS:
            if mine.get(field) != theirs.get(field):
                a, b = _short(mine.get(field)), _short(theirs.get(field))
                raise CacheMismatchError(
                    f"cache {self.key} does not match the dataset: {words} differ (dataset.{field}: cache {a}, "
                    f"dataset {b}); extract a cache for this data with `featcache extract --teacher "
                    f"{_word(self.manifest.teacher.name)} --dataset {_word(theirs.get('name'))} --split "
                    f"{_word(theirs.get('split'))} ...`"
                )
        if transform is not None:
            mine_t, spec = self.manifest.transform.to_dict(), transform.to_dict()
            for field in sorted(set(spec) | set(mine_t)):
                if spec.get(field) != mine_t.get(field):
                    raise CacheMismatchError(
                        f"cache {self.key} was extracted with a different transform: transform.{field} is "
                        f"{_short(mine_t.get(field))} in the cache and {_short(spec.get(field))} "
                        "here; use the cache's transform or extract a new cache"
                    )


    def check_content(self, dataset: Any, mode: str = "sample", sample: int = CONTENT_SAMPLE, seed: int = 0,
                      progress: Callable[[int], None] | None = None) -> int:
        """Re-hash samples' bytes and compare them with the digests recorded at extract time; returns how many rows
        were checked. ``mode``: ``sample`` (``sample`` rows drawn with ``seed``: a change to a fraction f of the
        images is caught with probability 1 - (1 - f)^sample), ``full`` (every row) or ``off``.

        The fingerprint in check_dataset catches rewritten files (their size or mtime changes); this catches content
        changed behind an unchanged size and mtime, and pixels of datasets that have no files."""
        check_choice("--content-check", mode, CONTENT_CHECKS)
        n = self.num_rows(PART_DATA)
        if mode == "off" or n == 0:
            return 0
        if not self.manifest.content:
            raise CacheMismatchError(
                f"cache {self.key} holds no content digests (written by an older featcache); re-extract it: "
                f"{command_or(self.manifest, 'featcache extract ...')}"
            )
        if mode == "full" or sample >= n:
            rows = np.arange(n, dtype=np.int64)
        else:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        recorded = self.gather(rows, fields=(CONTENT,))[CONTENT]
        actual = np.empty(len(rows), dtype=np.int64)

        def digest(chunk: np.ndarray) -> None:
            for j in chunk:
                actual[j] = dataset.sample_digest(int(rows[j]))
            if progress is not None:
                progress(len(chunk))

        chunks = np.array_split(np.arange(len(rows)), max(1, len(rows) // 512))
        if len(chunks) == 1:
            digest(chunks[0])
        else:  # file reads and BLAKE2b release the GIL
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=4) as pool:
                for fut in [pool.submit(digest, c) for c in chunks]:
                    fut.result()
        bad = np.flatnonzero(actual != recorded)
        if len(bad):
            row = int(rows[bad[0]])
            raise CacheMismatchError(
                f"cache {self.key} does not match the images: {len(bad)} of {len(rows)} checked samples changed "
                f"since the extract (first: {dataset.sample_ids[row]!r}, row {row}, content hash differs); "
                f"re-extract with `{command_or(self.manifest, 'featcache extract ...')} --force`"
            )
        return len(rows)


# Shards whose sha256 this process has checked, by (path, inode, size, mtime_ns): each is hashed once per process,
# however many readers open it (a shard rewritten since gets a new inode or mtime and is hashed again).
_VERIFIED: set[tuple[str, int, int, int]] = set()
_VERIFIED_LOCK = threading.Lock()


def forget_verified_shards() -> None:
    """Make the next read of every shard hash it again (bench trust times that first read)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


def check_shard(path: Path, shard: ShardInfo | ProjectionInfo, key: str, hint: Callable[[], str],
                what: str = "shard") -> None:
    """Refuse a shard (or the projection file) whose size differs from the manifest (always) or whose sha256 does
    (the first time this process reads it): a cached row is what the extract wrote, or an error naming the key and
    the repair."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CacheError(f"cache {key}: {what} {shard.file} is missing; {hint()}") from None
    except OSError as exc:
        raise CacheError(f"cache {key}: {what} {shard.file} cannot be read ({_one_line(exc)}); {hint()}") from None
    if st.st_size != shard.bytes:
        raise CacheError(f"cache {key}: {what} {shard.file} is truncated or overwritten ({st.st_size:,} bytes on "
                         f"disk, the manifest says {shard.bytes:,}); {hint()}")
    stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if stamp in _VERIFIED:
        return
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise CacheError(f"cache {key}: {what} {shard.file} cannot be read ({_one_line(exc)}); {hint()}") from None
    if digest != shard.sha256:
        raise CacheError(f"cache {key}: {what} {shard.file} is corrupt (its sha256 differs from the manifest's); "
                         f"{hint()}")
    with _VERIFIED_LOCK:
        _VERIFIED.add(stamp)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return printable(text if len(text) <= 24 else text[:21] + "...")


def _word(value: Any) -> str:
    """A name from a manifest as one shell word, shown escaped."""
    import shlex

    return printable(shlex.quote(str(value)), limit=80)
