"""The out-of-core ring's memory: file blocks mapped in place (no copy) where the layout allows, read into it where not.

A block of an out-of-core table is a run of bytes of one shard file (featcache's datasets are contiguous). Copying it
into the ring with ``pread`` costs more than a sequential read of the same bytes (the ring is cold memory: at 1.28M
rows the reader thread copied at 3.3 GB/s where the sequential read ran at 8 GB/s, and the join reached 0.2 of it,
docs/benchmarks.md "Scale"). Mapped instead — ``mmap(MAP_FIXED | MAP_POPULATE)`` of the file's pages over the block's
slot of one reserved region — the block costs only its page-table entries, and the batch gather reads the page cache
directly: one copy per row instead of two.

The ring is one reserved region of ``slots`` slots of ``slot_rows`` rows; row ``i`` of slot ``s`` is row
``s * slot_rows + i`` of one array that starts ``delta`` bytes into the region, where ``delta`` is the field's
offset in its shard file modulo the page size. A block is mapped when its file offset has that same remainder (so
its rows land where the array expects them) and lies within one shard; any other block (another shard layout, a block
across two shards, a platform without mmap) gets fresh anonymous memory in its slot and is read into it with pread.

Shards are never changed in place (written to .tmp, renamed, removed only by unlink), so a mapped page stays valid;
a shard truncated behind featcache's back would raise SIGBUS when touched. ``FEATCACHE_MMAP=0`` reads every block
with pread instead.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import weakref
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
_PROT_READ, _PROT_WRITE = 1, 2
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS = 1, 2, 0x10, 0x20
_MAP_NORESERVE, _MAP_POPULATE = 0x4000, 0x8000
_FAILED = ctypes.c_void_p(-1).value


def _libc():
    if os.environ.get("FEATCACHE_MMAP", "1") == "0" or not os.uname().sysname == "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # ctypes drops the GIL around each call
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC: Any = _libc() if hasattr(os, "uname") else None  # a ring is built only where it is set


class MappedRing:
    """``slots`` slots of ``block_rows`` rows of one field, as one array (``self.array``); see the module docstring.
    ``MappedRing.create`` returns None where mapping cannot work for this field (then the caller keeps a plain
    array and reads every block into it)."""

    def __init__(self, base: int, size: int, slot_rows: int, row_bytes: int, delta: int, dtype: np.dtype,
                 row_shape: tuple[int, ...], slots: int) -> None:
        self.base, self.size, self.slot_rows, self.row_bytes, self.delta = base, size, slot_rows, row_bytes, delta
        rows = slots * slot_rows
        raw = (ctypes.c_uint8 * (rows * row_bytes)).from_address(base + delta)
        self.array = np.frombuffer(raw, dtype=dtype).reshape(rows, *row_shape)  # type: ignore[call-overload]  # a buffer
        self.array.flags.writeable = False  # mapped file pages are read-only
        weakref.finalize(self, _LIBC.munmap, ctypes.c_void_p(base), ctypes.c_size_t(size))

    @classmethod
    def create(cls, slots: int, slot_rows: int, dtype: np.dtype, row_shape: tuple[int, ...], file_offset: int, *,
               block_rows: int) -> "MappedRing | None":
        """A ring for a field whose first shard stores it at ``file_offset``, or None (no mmap, blocks that are not
        whole pages, or no spare page in a slot for the offset's remainder)."""
        row_bytes = np.dtype(dtype).itemsize * math.prod(row_shape)
        if (_LIBC is None or row_bytes == 0 or (block_rows * row_bytes) % PAGE or (slot_rows * row_bytes) % PAGE
                or (slot_rows - block_rows) * row_bytes < PAGE):
            return None
        size = slots * slot_rows * row_bytes + PAGE
        base = _LIBC.mmap(None, size, _PROT_READ | _PROT_WRITE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if base in (None, _FAILED):
            return None
        return cls(base, size, slot_rows, row_bytes, file_offset % PAGE, np.dtype(dtype), tuple(row_shape), slots)

    def _slot(self, slot: int) -> int:
        return self.base + slot * self.slot_rows * self.row_bytes

    def map_block(self, slot: int, fd: int, offset: int, rows: int) -> bool:
        """Map ``rows`` rows at byte ``offset`` of file ``fd`` over ``slot``; False when the offset does not fit the
        ring's layout (then ``anonymous`` the slot and read into it)."""
        if offset % PAGE != self.delta:
            return False
        length = -(-(self.delta + rows * self.row_bytes) // PAGE) * PAGE
        flags = _MAP_SHARED | _MAP_FIXED | _MAP_POPULATE  # replaces the slot's old pages; faults them in now
        got = _LIBC.mmap(ctypes.c_void_p(self._slot(slot)), length, _PROT_READ, flags, fd, offset - self.delta)
        if got != self._slot(slot):
            raise OSError(ctypes.get_errno(), f"mmap of a cache block failed: {os.strerror(ctypes.get_errno())}")
        return True

    def anonymous(self, slot: int) -> np.ndarray:
        """Fresh writable memory over ``slot``; returns a writable view of the ring's rows (to read a block into)."""
        length = self.slot_rows * self.row_bytes
        got = _LIBC.mmap(ctypes.c_void_p(self._slot(slot)), length, _PROT_READ | _PROT_WRITE,
                         _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_FIXED, -1, 0)
        if got != self._slot(slot):
            raise OSError(ctypes.get_errno(), f"mmap of a ring slot failed: {os.strerror(ctypes.get_errno())}")
        raw = (ctypes.c_uint8 * (self.array.shape[0] * self.row_bytes)).from_address(self.base + self.delta)
        return np.frombuffer(raw, dtype=self.array.dtype).reshape(self.array.shape)


def will_need(fd: int, offset: int, length: int) -> None:
    """Start reading a block from disk now (a cold page cache), so that mapping it later waits less."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


class BlockRing:
    """The ring of an out-of-core table: every field's array of ``slots`` slots of ``slot_rows`` rows (blocks of
    ``block_rows`` rows and some spare), fields whose blocks are whole pages as MappedRings, the others as plain
    arrays read with pread (cache/direct.py)."""

    def __init__(self, cache, part: str, slots: int, block_rows: int, fields: tuple[str, ...]) -> None:
        from featcache.cache.direct import raw_layout

        self.cache, self.part, self.block_rows = cache, part, block_rows
        self.shards = cache.manifest.shards_of(part)
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)
        proto = cache.empty_rows(1, fields)
        f = cache.shard_file(self.shards[0]) if self.shards and _LIBC is not None else None
        self._rings: dict[str, MappedRing] = {}
        extra = {}
        for name, a in proto.items():
            lay = raw_layout(f, name) if f is not None else None
            row_bytes = a.dtype.itemsize * math.prod(a.shape[1:])
            spare = PAGE // math.gcd(row_bytes, PAGE) if row_bytes else block_rows
            if lay is not None and lay[2] == a.dtype and lay[3] == a.shape[1:] and spare <= block_rows // 8:
                extra[name] = (spare, lay[0])  # small rows (logits, scales) are cheaper copied than mapped
        self.slot_rows = block_rows + max((e for e, _ in extra.values()), default=0)
        for name, (_, offset) in extra.items():
            ring = MappedRing.create(slots, self.slot_rows, proto[name].dtype, proto[name].shape[1:], offset,
                                     block_rows=block_rows)
            if ring is not None:
                self._rings[name] = ring
        plain = [n for n in fields if n not in self._rings]
        arrays = {**cache.empty_rows(slots * self.slot_rows, plain), **{n: r.array for n, r in self._rings.items()}}
        self.arrays = {n: arrays[n] for n in fields}
        self.mapped = tuple(self._rings)

    def _source(self, name: str, start: int, stop: int) -> tuple[int, int] | None:
        """(fd, byte offset) of rows [start, stop) of field ``name`` when they are one run of one shard file."""
        from featcache.cache.direct import raw_layout

        shard = self.shards[int(np.searchsorted(self._starts, start, side="right")) - 1]
        if stop > shard.stop:
            return None
        f = self.cache.shard_file(shard)
        lay = raw_layout(f, name)
        return None if lay is None else (f.id.get_vfd_handle(), lay[0] + (start - shard.start) * lay[1])

    def will_need(self, start: int, stop: int) -> None:
        """Ask the kernel to start reading the mapped fields of rows [start, stop) (async readahead: cold caches)."""
        for name, ring in self._rings.items():
            src = self._source(name, start, stop)
            if src is not None:
                will_need(src[0], src[1], (stop - start) * ring.row_bytes)

    def read_block(self, slot: int, start: int, stop: int) -> None:
        """Rows [start, stop) of every field into ``slot``: mapped where it can be, else read."""
        plain = {n: a for n, a in self.arrays.items() if n not in self._rings}
        for name, ring in self._rings.items():
            src = self._source(name, start, stop)
            if src is None or not ring.map_block(slot, src[0], src[1], stop - start):
                plain[name] = ring.anonymous(slot)
        if plain:
            self.cache.read_range_into(start, stop, plain, slot * self.slot_rows, part=self.part)
