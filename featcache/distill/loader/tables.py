"""A teacher's rows as a table to gather batches from: all in RAM (``np.take``) or out of core (contiguous blocks
read ahead by a prefetch thread)."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch

from featcache.cache.format import FEATURES, LOGITS
from featcache.cache.reader import FeatureCache
from featcache.distill.loader.mapped import BlockRing
from featcache.distill.loader.order import EpochPlan
from featcache.errors import ConfigError

MODES = ("auto", "ram", "disk")


class InMemoryTable:
    """A teacher's features and logits for one part, in RAM; gather = one index_select per field.

    The table itself is not pinned (pinning gigabytes is slow and scarce); each batch's gathered rows go through a
    small ring of pinned slots instead (PinnedStaging), which is what makes the host→device copy asynchronous.
    """

    mode = "ram"

    def __init__(self, cache: FeatureCache, part: str, fields: Sequence[str] = (FEATURES, LOGITS)) -> None:
        arrays = cache.read_all(part, fields=tuple(fields))
        self.fields = tuple(fields)
        self.arrays = [arrays[f] for f in self.fields]

    def start_epoch(self, plan: EpochPlan) -> None:
        pass

    def gather(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The rows ``idx`` of every field, in field order (features, logits, then any blocks), in fresh arrays.

        ``np.take`` on one thread: torch's ``index_select`` spreads a gather this small over the intra-op threads,
        and on a loaded 2-core box it fell from 2M to 21-81k rows/s in some runs (issue 13); np.take held 1.5-2M."""
        index = np.ascontiguousarray(idx, dtype=np.int64)
        return tuple(torch.from_numpy(np.take(a, index, axis=0)) for a in self.arrays)

    def close(self) -> None:
        pass


# Windows the out-of-core ring holds: the one being served, the next (a batch may straddle the two) and two read ahead.
RING_WINDOWS = 4


class OutOfCoreTable:
    """A table read from the shards in contiguous blocks by a prefetch thread, into a ring of block slots.

    It serves a block-mode epoch plan: windows of ``window`` blocks are loaded in plan order. Window w always lands in
    quarter w % 4 of the ring, so where every row will sit is known when the epoch starts: two [n] maps (row -> ring
    row, row -> window) turn a batch into ring rows with one ``np.take`` and no lock in the common case. The prefetch
    thread fills window w once the batches have moved past window w - 4: wide fields (features) are mapped from the
    page cache into their slots without a copy (mapped.py), narrow ones (logits) read with one ``os.preadv`` per block
    (cache/direct.py); neither holds the GIL while it works, so the reads overlap the training loop's gathers.
    """

    mode = "disk"

    def __init__(self, cache: FeatureCache, part: str, block_rows: int, window_blocks: int,
                 fields: Sequence[str] = (FEATURES, LOGITS)) -> None:
        self.cache = cache
        self.part = part
        self.block_rows = block_rows
        self.window = window_blocks
        self.n = cache.num_rows(part)
        self.n_blocks = -(-self.n // block_rows)
        self.capacity = RING_WINDOWS * window_blocks
        self.fields = tuple(fields)
        self._ring = BlockRing(cache, part, self.capacity, block_rows, self.fields)
        self._buf = self._ring.arrays
        self.slot_rows = self._ring.slot_rows  # block_rows and the spare rows a mapped block may need
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._error: BaseException | None = None
        self._loaded = self._served = -1

    # The prefetch thread ------------------------------------------------------------------------------------------
    def start_epoch(self, plan: EpochPlan) -> None:
        if len(plan.blocks) == 0:
            raise ConfigError(
                "out-of-core teacher tables need a block order (--shuffle block or none); "
                "--shuffle full needs the tables in RAM (raise --cache-ram)"
            )
        self.close()
        blocks = np.asarray(plan.blocks, dtype=np.int64)
        if len(blocks) != self.n_blocks or not np.array_equal(np.sort(blocks), np.arange(self.n_blocks)):
            raise ValueError(f"the epoch plan visits {len(blocks)} blocks, not each of the {self.n_blocks} once")
        position = np.arange(len(blocks))
        slot_of = np.empty(self.n_blocks, dtype=np.int64)
        slot_of[blocks] = (position // self.window % RING_WINDOWS) * self.window + position % self.window
        window_of = np.empty(self.n_blocks, dtype=np.int32)
        window_of[blocks] = position // self.window
        rows = np.arange(self.n, dtype=np.int64)
        self._ring_row = slot_of[rows // self.block_rows] * self.slot_rows + rows % self.block_rows
        self._row_window = window_of[rows // self.block_rows]
        self._windows = [blocks[w : w + self.window] for w in range(0, len(blocks), self.window)]
        self._loaded = -1  # windows [0, _loaded] have been read
        self._served = 0  # the oldest window batches still need; window w may be read once w - 4 < _served
        self._stop = False
        self._error = None
        self._thread = threading.Thread(target=self._prefetch, name=f"featcache-rows-{self.part}", daemon=True)
        self._thread.start()

    def _prefetch(self) -> None:
        try:
            for w, blocks in enumerate(self._windows):
                with self._cv:
                    while not self._stop and w - RING_WINDOWS >= self._served:
                        self._cv.wait()
                    if self._stop:
                        return
                first = (w % RING_WINDOWS) * self.window
                for b in self._windows[w + 1] if w + 1 < len(self._windows) else []:  # disk reads ahead (cold)
                    self._ring.will_need(*self._rows_of(b))
                for j, b in enumerate(blocks):
                    if self._stop:
                        return
                    self._ring.read_block(first + j, *self._rows_of(b))
                with self._cv:
                    self._loaded = w
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by gather()
            with self._cv:
                self._error = exc
                self._cv.notify_all()

    def _rows_of(self, block) -> tuple[int, int]:
        return int(block) * self.block_rows, min((int(block) + 1) * self.block_rows, self.n)

    def gather(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The rows ``idx`` of every field, in fresh arrays (the ring is overwritten as the epoch moves on)."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return tuple(torch.from_numpy(self._buf[f][:0].copy()) for f in self.fields)
        windows = self._row_window[idx]
        lo, hi = int(np.minimum.reduce(windows)), int(np.maximum.reduce(windows))  # (no Python-level wrappers)
        if lo != self._served or hi > self._loaded or self._error is not None:
            self._advance(lo, hi)
        rows = self._ring_row[idx]
        return tuple([torch.from_numpy(np.take(self._buf[f], rows, axis=0)) for f in self.fields])

    def _advance(self, lo: int, hi: int) -> None:
        """Move on to the windows [lo, hi] of a batch: free the windows behind it, wait until its own are read."""
        if lo < self._served or hi - lo >= RING_WINDOWS:
            raise ConfigError(
                f"a batch needs windows {lo}..{hi} of the epoch's block order while the ring holds windows "
                f"{self._served}..{self._served + RING_WINDOWS - 1}: out-of-core tables serve the plan's order, with "
                "batches of at most four windows (raise --cache-ram for larger windows, or lower --batch-size)"
            )
        with self._cv:
            if lo > self._served:
                self._served = lo
                self._cv.notify_all()
            while self._loaded < hi and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None


# -- the loader ----------------------------------------------------------------------------------------------------
