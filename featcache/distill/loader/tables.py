"""A teacher's rows as a table to gather batches from: all in RAM (``np.take``) or out of core (contiguous blocks
read ahead by a prefetch thread)."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch

from featcache.cache.format import FEATURES, LOGITS
from featcache.cache.reader import FeatureCache
from featcache.errors import ConfigError
from featcache.distill.loader.order import EpochPlan

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


class OutOfCoreTable:
    """A table read from the shards in contiguous blocks by a prefetch thread, into a ring of block slots.

    It serves a block-mode epoch plan: windows of ``window`` blocks are loaded in plan order, at most two windows
    ahead of the batch being served; windows behind it are recycled. A gather maps rows to slots with one
    vectorised index.
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
        self.capacity = 4 * window_blocks  # current, boundary, and two windows of read-ahead
        self.fields = tuple(fields)
        self._buf = cache.empty_rows(self.capacity * block_rows, self.fields)
        self._slot = np.full(self.n_blocks, -1, dtype=np.int64)
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._error: BaseException | None = None

    # The prefetch thread ------------------------------------------------------------------------------------------
    def start_epoch(self, plan: EpochPlan) -> None:
        if len(plan.blocks) == 0:
            raise ConfigError(
                "out-of-core teacher tables need a block order (--shuffle block or none); "
                "--shuffle full needs the tables in RAM (raise --cache-ram)"
            )
        self.close()
        self._slot[:] = -1
        self._windows = [plan.blocks[w : w + self.window] for w in range(0, len(plan.blocks), self.window)]
        self._window_of = np.empty(self.n_blocks, dtype=np.int64)
        for w, blocks in enumerate(self._windows):
            self._window_of[blocks] = w
        self._free = list(range(self.capacity))
        self._loaded_upto = -1  # windows [0, _loaded_upto] are resident (or were and got recycled)
        self._oldest = 0  # first window still resident
        self._stop = False
        self._error = None
        self._thread = threading.Thread(target=self._prefetch, name=f"featcache-rows-{self.part}", daemon=True)
        self._thread.start()

    def _prefetch(self) -> None:
        try:
            for w, blocks in enumerate(self._windows):
                with self._cv:
                    while not self._stop and len(self._free) < len(blocks):
                        self._cv.wait()
                    if self._stop:
                        return
                    slots = [self._free.pop() for _ in blocks]
                for b, s in zip(blocks, slots):
                    start, stop = int(b) * self.block_rows, min((int(b) + 1) * self.block_rows, self.n)
                    self.cache.read_range_into(start, stop, self._buf, s * self.block_rows, part=self.part)
                with self._cv:
                    self._slot[blocks] = slots
                    self._loaded_upto = w
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by gather()
            with self._cv:
                self._error = exc
                self._cv.notify_all()

    def gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return tuple(torch.from_numpy(self._buf[f][:0].copy()) for f in self.fields)
        blocks = idx // self.block_rows
        windows = self._window_of[blocks]
        lo, hi = int(windows.min()), int(windows.max())
        with self._cv:
            # Recycle windows the order has moved past, then wait for the ones this batch needs.
            while self._oldest < lo:
                old = self._windows[self._oldest]
                if self._oldest <= self._loaded_upto:
                    self._free.extend(int(s) for s in self._slot[old])
                    self._slot[old] = -1
                self._oldest += 1
                self._cv.notify_all()
            while self._loaded_upto < hi and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            rows = self._slot[blocks] * self.block_rows + idx % self.block_rows
        return tuple(torch.from_numpy(self._buf[f][rows]) for f in self.fields)

    def close(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None


# -- the loader ----------------------------------------------------------------------------------------------------
