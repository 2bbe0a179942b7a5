"""Copying a stream of members while computing each one's sha256, with the hashing overlapped with the copy.

sha256 runs at about 1.3 GB/s on one core, a page-cache copy at about 3 GB/s: hashing in the copying thread would
make `cache export` and `cache import` hash-bound on one core. Here the copying thread reads a chunk, writes it and
hands it to the member's own hashing thread (hashlib and file I/O release the GIL for large buffers), so the copy
goes on while the hash catches up, and consecutive members are hashed on different cores. The chunks come from a
fixed pool of ``budget`` bytes (the most the copy runs ahead of the hashing: two default shards, so two are hashed
at once), reused last-in first-out so that a chunk usually is still in the CPU's cache when it is hashed (on the
development box, read-hash-write in 256 KiB chunks ran about twice as fast as in 4 MiB ones, and a 256 MiB pool was
slower than a 16-64 MiB one). ``start_writeback`` overlaps the disk's writing with the copy in the same spirit.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Callable

CHUNK = 256 * 2**10
BUDGET = 32 * 2**20
PROGRESS_EVERY = 16 * 2**20  # a progress bar's update costs microseconds: not one per chunk


class Digest:
    """The sha256 of one member, computed by its own thread from the chunks the copy hands over."""

    def __init__(self, free: queue.LifoQueue) -> None:
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._free = free
        self._hash = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="featcache-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._chunks.get()) is not None:
            buf, n = item
            self._hash.update(memoryview(buf)[:n])
            self._free.put(buf)

    def feed(self, buf: bytearray, n: int) -> None:
        self._chunks.put((buf, n))

    def close(self) -> None:
        """No more chunks: the thread ends once it has hashed those it holds."""
        self._chunks.put(None)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def hexdigest(self) -> str:
        self._thread.join()
        return self._hash.hexdigest()


class HashPipe:
    """``with HashPipe() as pipe: digest, n = pipe.copy(read_into, write, size)`` for each member in turn."""

    def __init__(self, chunk: int = CHUNK, budget: int = BUDGET,
                 progress: Callable[[int], None] | None = None) -> None:
        self._free: queue.LifoQueue = queue.LifoQueue()
        for _ in range(max(2, budget // chunk)):
            self._free.put(bytearray(chunk))
        self._progress = progress
        self._unreported = 0

    def copy(self, read_into: Callable[[memoryview], int], write: Callable[[memoryview], None],
             size: int) -> tuple[Digest, int]:
        """Copy ``size`` bytes, fewer if ``read_into`` returns 0 (the end of its input), from ``read_into`` to
        ``write``; the member's Digest (wait on it with ``hexdigest``) and the bytes copied."""
        digest = Digest(self._free)
        done = 0
        try:
            while done < size:
                buf = self._free.get()
                try:
                    n = read_into(memoryview(buf)[:min(len(buf), size - done)])
                    if n:
                        write(memoryview(buf)[:n])
                except BaseException:
                    self._free.put(buf)
                    raise
                if not n:
                    self._free.put(buf)
                    break
                digest.feed(buf, n)
                done += n
                self._report(n)
        finally:
            digest.close()  # also after an exception: its thread ends once it has hashed what it holds
        return digest, done

    def copy_bytes(self, data: bytes, write: Callable[[memoryview], None]) -> str:
        """A small member already in memory (an index, a manifest): written and hashed here."""
        write(memoryview(data))
        self._report(len(data))
        return hashlib.sha256(data).hexdigest()

    def _report(self, n: int) -> None:
        if self._progress is None:
            return
        self._unreported += n
        if self._unreported >= PROGRESS_EVERY:
            self._progress(self._unreported)
            self._unreported = 0

    def __enter__(self) -> "HashPipe":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None and self._unreported:
            self._progress(self._unreported)
            self._unreported = 0


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writing a file's just-written range to disk now, without waiting (Linux: POSIX_FADV_DONTNEED queues the
    write-back of dirty pages and drops only clean ones), so that the fsync before the rename finds little left to
    do. Measured on the development box: a 1 GiB import took 1.4-1.6 s so, 2.0 s with every fsync at the end and
    2.2-3.2 s with each file fsynced in a background thread while the next was written."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass  # only a head start: the fsync still does the work


def fsync_path(path) -> None:
    """fsync a finished file by its path (a read-only descriptor is enough on Linux and macOS)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(write: Callable[[memoryview], int | None]) -> Callable[[memoryview], None]:
    """A write that writes everything: an unbuffered file's ``write`` may write less than it is given."""

    def full(data: memoryview) -> None:
        data = memoryview(data)
        while data:
            n = write(data)
            if n is None:  # a non-blocking stream that cannot take more now: not a file featcache writes
                raise BlockingIOError("the output did not accept the data")
            data = data[n:]

    return full
