"""Crash-safe shard writing, off the GPU's critical path.

* A shard is written as ``<name>.h5.tmp``, closed, fsynced, renamed to ``<name>.h5`` and only then recorded in
  the manifest (itself replaced atomically). A file without a manifest entry is never trusted, so a kill -9 at any
  point leaves either a finished shard or one that the next run redoes.
* ``BackgroundWriter`` runs all HDF5 work in one thread fed by a bounded queue: the producer (the GPU loop) only
  enqueues host buffers, and the queue bound is the back-pressure that keeps memory flat.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from featcache.cache.format import (
    AUG,
    CONTENT,
    FEATURE_SCALE,
    FEATURES,
    INDEX,
    LOGITS,
    LOGITS_INDEX,
    PART_DATA,
    TMP_SUFFIX,
    Manifest,
    ShardInfo,
    block_field,
    fsync_dir,
    shard_name,
)
from featcache.errors import CacheError
from featcache.util.fileio import unwritable
from featcache.util.hashing import file_sha256

_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def nonfinite_rows(array: np.ndarray) -> np.ndarray:
    """Indices of the rows holding a NaN or inf: an all-ones exponent, tested on the bits (several times faster
    than np.isfinite on float16)."""
    kind = _EXPONENT.get(array.dtype)
    if kind is None:
        return np.empty(0, dtype=np.int64)
    bits, mask = kind
    bad = (array.view(bits) & mask) == mask
    return np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))


# int8 rows are read back as float16 (FEATURE_READ_DTYPE): a row whose largest value float16 cannot hold would come
# back as inf, so it is refused here as a float16 cache refuses it.
_READ_MAX = float(np.finfo(np.float16).max)


def check_scales(part: str, rows: np.ndarray, scale: np.ndarray) -> None:
    """Refuse int8 rows whose scale is not finite (a NaN or inf feature) or too large to be read back."""
    bad = np.flatnonzero(~(np.isfinite(scale) & (scale * 127 <= _READ_MAX)))
    if len(bad):
        raise CacheError(
            f"the teacher's features of {part} row {int(rows[bad[0]])} ({len(bad)} row(s) of this batch) are NaN, "
            "inf or beyond float16's range, which int8 rows are read back in; nothing of them was cached. Extract "
            "with --dtype float32 (or --precision fp32), or check the weights")


class PartWriter:
    """Writes the rows of one part (``data`` or ``noise``) into the manifest's fixed-size shards.

    Rows may arrive in any batch sizes but must arrive in increasing order within a shard, and every row of a
    shard that is started must eventually be written (the extract loop iterates whole pending shards).
    """

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        part: str,
        on_shard_done: Callable[[ShardInfo], None],
    ) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.part = part
        self.on_shard_done = on_shard_done
        self._open: dict[int, tuple[h5py.File, Path, int]] = {}  # number -> (file, tmp path, rows written)

    def _start(self, number: int) -> tuple[h5py.File, Path, int]:
        start, stop = self.manifest.shard_range(self.part, number)
        tmp = self.directory / (shard_name(self.part, number) + TMP_SUFFIX)
        n = stop - start
        try:
            f = h5py.File(tmp, "w")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise unwritable(self.directory, exc, "cache directory") from None
        t = self.manifest.teacher
        # Contiguous, unchunked, unfiltered: the fastest layout for the sorted fancy reads of the joined loader.
        f.create_dataset(FEATURES, shape=(n, self.manifest.feature_dim), dtype=self.manifest.dtype)
        f.create_dataset(LOGITS, shape=(n, self.manifest.topk_logits or t.num_classes),
                         dtype=self.manifest.logits_dtype)
        f.create_dataset(INDEX, shape=(n,), dtype="int64")
        for name, (dim, dtype) in self.extra_fields().items():
            f.create_dataset(name, shape=(n,) if dim is None else (n, dim), dtype=dtype)
        f.attrs["part"] = self.part
        f.attrs["start"] = start
        f.attrs["stop"] = stop
        f.attrs["key"] = self.manifest.key
        entry = (f, tmp, 0)
        self._open[number] = entry
        return entry

    def write(self, rows: np.ndarray, features: np.ndarray, logits: np.ndarray, index: np.ndarray,
              blocks: dict[str, np.ndarray] | None = None) -> None:
        """Rows ``rows`` of every field; ``blocks`` maps each manifest block's field name to its [n, dim] rows."""
        blocks = blocks or {}
        missing = [name for name in self.extra_fields() if name not in blocks]
        if missing:
            raise ValueError(f"write() lacks the rows of {missing}")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        if FEATURE_SCALE in blocks:
            check_scales(self.part, rows, blocks[FEATURE_SCALE])
        for name, array in ((FEATURES, features), (LOGITS, logits), *blocks.items()):
            bad = nonfinite_rows(np.asarray(array))
            if len(bad):
                raise CacheError(
                    f"the teacher's {name} of {self.part} row {int(rows[bad[0]])} ({len(bad)} row(s) of this batch) "
                    f"are NaN or inf in {np.asarray(array).dtype}; nothing of them was cached. Extract with --dtype "
                    "float32 (and --logits-dtype float32) if float16 overflowed, or --precision fp32, or check the "
                    "weights"
                )
        shard_rows = self.manifest.shard_rows
        numbers = rows // shard_rows
        cuts = np.flatnonzero(np.diff(numbers)) + 1
        for seg in np.split(np.arange(len(rows)), cuts):
            number = int(numbers[seg[0]])
            f, tmp, written = self._open.get(number) or self._start(number)
            start, stop = self.manifest.shard_range(self.part, number)
            local = rows[seg] - start
            lo, hi = int(local[0]), int(local[-1]) + 1
            arrays = {FEATURES: features, LOGITS: logits, INDEX: index, **blocks}
            where = np.s_[lo:hi] if hi - lo == len(seg) else local  # contiguous slab: one hyperslab write each
            try:
                for name, array in arrays.items():
                    f[name][where] = array[seg]
            except OSError as exc:
                raise unwritable(self.directory, exc, "cache directory") from None
            written += len(seg)
            self._open[number] = (f, tmp, written)
            if written == stop - start:
                self._finish(number)

    def _finish(self, number: int) -> None:
        f, tmp, _ = self._open.pop(number)
        final = self.directory / shard_name(self.part, number)
        try:
            f.close()  # HDF5 flushes here: a full disk surfaces now
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            _close_quietly(f)
            tmp.unlink(missing_ok=True)
            raise unwritable(self.directory, exc, "cache directory") from None
        fsync_dir(self.directory)
        start, stop = self.manifest.shard_range(self.part, number)
        info = ShardInfo(
            part=self.part,
            number=number,
            start=start,
            stop=stop,
            file=final.name,
            bytes=final.stat().st_size,
            sha256=file_sha256(final),
        )
        self.on_shard_done(info)

    def row_bytes(self) -> int:
        """Bytes one row of this part takes on disk (features, logits, index and the extra fields)."""
        t, m = self.manifest.teacher, self.manifest
        size = m.feature_dim * np.dtype(m.dtype).itemsize + (m.topk_logits or t.num_classes) * np.dtype(
            m.logits_dtype).itemsize + 8
        for dim, dtype in self.extra_fields().values():
            size += (dim or 1) * np.dtype(dtype).itemsize
        return size

    def extra_fields(self) -> dict[str, tuple[int | None, str]]:
        """Datasets besides features/logits/index (name -> (row width or None for one value per row, dtype)):
        cached blocks, the augmentation parameters of a view part, top-k classes, the data part's content digests,
        the int8 rows' scales."""
        out: dict[str, tuple[int | None, str]] = {
            block_field(b.name): (b.dim, self.manifest.dtype) for b in self.manifest.blocks
        }
        if self.part.startswith("view"):
            out[AUG] = (5, "float32")
        if self.manifest.topk_logits:
            out[LOGITS_INDEX] = (self.manifest.topk_logits, "int32")
        if self.part == PART_DATA and self.manifest.content:
            out[CONTENT] = (None, "int64")
        if self.manifest.feature_codec:
            out[FEATURE_SCALE] = (None, "float32")
        return out

    @property
    def unfinished(self) -> list[int]:
        return sorted(self._open)

    def abort(self) -> None:
        """Close and delete partially written shards (used on errors; a crash leaves .tmp files that resume deletes)."""
        for number in list(self._open):
            f, tmp, _ = self._open.pop(number)
            _close_quietly(f)
            tmp.unlink(missing_ok=True)


def _close_quietly(f: h5py.File) -> None:
    """Close an HDF5 file whose flush may fail (full disk): the error that stopped the extract is the one reported,
    and a file left open would be flushed again, noisily, when the garbage collector finds it."""
    try:
        f.close()
    except Exception:  # noqa: BLE001
        try:
            f.id.close()  # the handle itself, even when flushing its objects failed
        except Exception:  # noqa: BLE001
            pass


class BackgroundWriter:
    """One writer thread for all parts. ``submit`` enqueues a batch; errors surface on the next call."""

    _STOP = object()

    def __init__(self, writers: dict[str, PartWriter], max_pending: int = 4, threaded: bool = True) -> None:
        self.writers = writers
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._failed = False  # after the first error every later batch is dropped, not half-written
        # Unthreaded (CPU extraction), submit writes in the caller: a writer thread has no idle core to use there,
        # and its h5py calls hold the GIL while the teacher's forward waits for it between layers (measured: the
        # forward ran 10-13% slower with the thread than without).
        self._thread = threading.Thread(target=self._run, name="featcache-writer", daemon=True) if threaded else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            part, rows, features, logits, index, ready, release, blocks = item
            try:
                if not self._failed:
                    if ready is not None:
                        ready()  # e.g. a CUDA event's synchronize(): the device->host copy has landed
                    self.writers[part].write(rows, features, logits, index, blocks)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer thread
                self._error = exc
                self._failed = True
            finally:
                if release is not None:
                    release()

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, OSError):
                raise CacheError(f"writing the cache failed: {' '.join(str(err).split())}") from None
            raise err

    def submit(self, part, rows, features, logits, index, ready=None, release=None, blocks=None) -> None:
        self._check()
        self._queue.put((part, rows, features, logits, index, ready, release, blocks))
        if self._thread is None:
            self._queue.put(self._STOP)
            self._run()
            self._check()

    def close(self) -> None:
        """Drain the queue, stop the thread and raise any error the thread hit."""
        if self._thread is None:
            self._check()
            return
        self._queue.put(self._STOP)
        self._thread.join()
        self._check()
