"""Pulling a cache from a remote store (featcache.cache.remote) into a local one, verified, resumable, once.

The pull builds the cache where an extract or an import would, in the store's ``.incoming/``, and installs it with the
same verified rename (featcache.cache.install): a reader sees no cache or the whole verified one. Each file is
downloaded to ``<file>.part``, its sha256 computed from the bytes as they are written, and renamed to its name only
when its size and sha256 are the manifest's: a partial or tampered file is never taken for a shard. The work
directory, ``.incoming/<key>@<host>@pull``, outlives the process, so a pull that was interrupted (a network error, a
kill -9) resumes there: with an HTTP Range request from the ``.part`` file's end where the server honours it, else
from the start. Up to JOBS files are downloaded at once, each by a thread of its own through its download, fsync,
check and rename (fetch_files). The key's lock (``.incoming/<key>.lock``, the one extract takes) makes two processes
pulling the same key download it once: the second waits and finds it installed. The remote manifest is read before
and after the files: a manifest that changed between the two reads (a publisher at work) is refused, nothing
installed.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from featcache.cache.format import MANIFEST, Manifest, ProjectionInfo, ShardInfo
from featcache.cache.hashpipe import start_writeback
from featcache.cache.install import INCOMING, check_complete, discard, host, install, make_dir
from featcache.cache.remote import CHUNK, RemoteStore
from featcache.errors import CacheError, CacheLockedError, RemoteError
from featcache.util.fileio import read_regular, unwritable, write_atomic
from featcache.util.hashing import file_sha256
from featcache.util.locks import DirLock
from featcache.util.progress import Reporter

PART_SUFFIX = ".part"
WRITEBACK = 16 << 20  # bytes: the disk is asked to start writing each time this much more has arrived
# Files downloaded at once (fetch_files): on a 2-core VM 8 beat 4 in each of 5 rounds, 4 beat 1 in 4 (huggingface_hub's
# snapshot_download also takes 8); each holds a connection and at most 8 MiB not yet hashed.
JOBS = 8
RETRIES = 3  # a dropped connection is resumed this many times (0.5 s, 1 s, 2 s apart) before the pull gives up


class KeyLock(DirLock):
    """The key's write lock, ``<store>/.incoming/<key>.lock``: the one extract takes (extract/manifest.py)."""

    error = CacheLockedError

    def __init__(self, root: Path, key: str) -> None:
        super().__init__(root / key, what="cache", path=root / INCOMING / f"{key}.lock", take_over_stale=True)


@dataclass
class Pulled:
    key: str
    directory: Path
    bytes: int  # the cache's bytes
    new: bool  # False: the store already held it (or another process pulled it meanwhile)


def pull(remote: RemoteStore, key: str, root: Path, reporter: Reporter | None = None, wait: bool = True) -> Pulled:
    """Bring the complete cache ``key`` of ``remote`` into the store ``root`` (a full key: lookup is the store's)."""
    reporter = reporter or Reporter()
    target = root / key
    if (target / MANIFEST).is_file():
        return Pulled(key, target, Manifest.load(target).total_bytes(), False)
    try:
        root.mkdir(parents=True, exist_ok=True)
        make_dir(root / INCOMING, root)
    except OSError as exc:
        raise unwritable(root, exc, "store") from None
    lock = KeyLock(root, key)
    try:
        lock.acquire(wait=wait, on_wait=lambda pid: reporter.message(
            f"cache {key} is being written by another process (pid {pid}); waiting for it to finish..."))
    except CacheLockedError as exc:
        raise exc.with_hint("wait for it to finish, then re-run") from None
    try:
        if (target / MANIFEST).is_file():  # the process we waited for pulled it
            return Pulled(key, target, Manifest.load(target).total_bytes(), False)
        return _pull_locked(remote, key, root, reporter)
    finally:
        lock.release()


def _pull_locked(remote: RemoteStore, key: str, root: Path, reporter: Reporter) -> Pulled:
    first = _manifest_bytes(remote, key)
    m = remote.manifest(key, first)
    if not m.complete:
        raise CacheError(f"cache {key} at {remote.url} is not complete (being written or published); pull it once "
                         "its publisher has finished")
    work = _work_dir(root, key, first, m)
    reporter.start(m.total_bytes(), f"pull {key}", unit="B")
    try:
        hashed = fetch_files(remote, key, m.files(), work, reporter)
    finally:
        reporter.stop()
    if _manifest_bytes(remote, key) != first:
        discard(work)
        raise CacheError(f"{remote.url}/{key}/{MANIFEST} changed while the cache was pulled (a publisher at work?); "
                         "nothing was installed: re-run once it is done")
    check_complete(work, key, hashed=hashed)
    new = install(work, root, key)
    return Pulled(key, root / key, m.total_bytes(), new)


def _manifest_bytes(remote: RemoteStore, key: str) -> bytes:
    data = remote.manifest_bytes(key)
    if data is None:
        raise CacheError(f"no cache {key} at {remote.url} ({remote.url}/{key}/{MANIFEST} not found); list what it "
                         f"holds with `featcache cache ls --store {remote.url}`")
    return data


def _work_dir(root: Path, key: str, manifest: bytes, m: Manifest) -> Path:
    """The pull's work directory, resumed when it was left by a pull of the same manifest, else started afresh; only
    the manifest, shards and their ``.part`` files are kept in it."""
    work = root / INCOMING / f"{key}@{host()}@pull"
    try:
        if os.path.lexists(work):
            try:
                same = read_regular(work / MANIFEST, len(manifest) + 1) == manifest
            except OSError:
                same = False
            if not same:
                discard(work)
        make_dir(work, root)
        keep = {MANIFEST} | {s.file for s in m.files()} | {s.file + PART_SUFFIX for s in m.files()}
        for p in work.iterdir():
            if p.name in keep and stat.S_ISREG(p.lstat().st_mode):
                continue
            if p.is_dir() and not p.is_symlink():
                discard(p)
            else:
                p.unlink()
        if not (work / MANIFEST).is_file():
            write_atomic(work / MANIFEST, manifest, what="store")
    except OSError as exc:
        raise unwritable(root, exc, "store") from None
    return work


class _Stopped(Exception):
    """Another file of the pull failed (or the pull was interrupted): this one stops at its next chunk, resumable."""


class _Live:
    """The pull's stop signal and the bodies its threads are reading. ``stop`` also aborts every open body
    (remote.Body.abort), so that a thread blocked on a stalled server ends now, not after the request's timeout: an
    interrupted pull (Ctrl-C, another file's failure) returns at once. A body leaves the set before it is closed, and
    both happen under the lock, so that an abort never reaches a descriptor already closed (and maybe reused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: set[object] = set()
        self.stopped = threading.Event()

    def opened(self, body: object) -> None:
        with self._lock:
            self._bodies.add(body)
            if self.stopped.is_set():
                getattr(body, "abort", lambda: None)()

    def close(self, body: object) -> None:
        with self._lock:
            self._bodies.discard(body)
            getattr(body, "close", lambda: None)()  # a generator or a Body: its response closed

    def stop(self) -> None:
        with self._lock:
            self.stopped.set()
            for body in self._bodies:
                getattr(body, "abort", lambda: None)()


class _Bytes:
    """The bytes the download threads have written since the reporter last heard of them: the reporter (a terminal's
    progress bar, a run's log) is only ever called from the pull's own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._n += n

    def take(self) -> int:
        with self._lock:
            n, self._n = self._n, 0
        return n


def fetch_files(remote: RemoteStore, key: str, files: list[ShardInfo | ProjectionInfo], work: Path,
                reporter: Reporter) -> dict[str, str]:
    """Every file of the cache into ``work``, verified, up to JOBS at once; their sha256 by file name.

    Each thread takes one file through download, fsync, size and sha256 check and rename, so one file's fsync and the
    tail of its hash overlap the others' downloads, and a server (or an object store) sends JOBS files at once: on a
    loaded 2-core VM serving a 256 MiB cache over loopback, 8 at once made a pull 1.4 times as fast as one at a time
    (0.44 -> 0.59 of a plain one-connection download, 0.71 -> 1.01 of one that also fsyncs: docs/benchmarks.md); what
    is left is the sha256's CPU. Nothing is weakened: a file still reaches its name only durable
    and verified, the cache is installed only when all are, and each ``.part`` resumes on its own. The first failure
    stops the other threads at once (_Live; their bytes stay for a re-run) and is the one raised; the pull returns,
    and so releases the key's lock, only once every thread has ended."""
    done = _Bytes()
    live = _Live()
    pool = futures.ThreadPoolExecutor(min(JOBS, max(1, len(files))), thread_name_prefix="featcache-pull")
    try:
        order = {pool.submit(fetch_file, remote, key, s, work, done.add, live): i for i, s in enumerate(files)}
        pending = set(order)
        while pending:
            finished, pending = futures.wait(pending, timeout=0.2, return_when=futures.FIRST_EXCEPTION)
            reporter.advance(done.take())
            for f in sorted(finished, key=order.__getitem__):
                f.result()  # the first failure in the manifest's order is raised; the finally stops the rest
        return {files[i].file: f.result() for f, i in order.items()}
    except OSError as exc:  # the network's are RemoteErrors: this is the local disk (full, read-only, failing)
        raise unwritable(work.parent.parent, exc, "store") from None
    finally:
        live.stop()
        pool.shutdown(wait=True, cancel_futures=True)


def fetch_file(remote: RemoteStore, key: str, s: ShardInfo | ProjectionInfo, work: Path,
               advance: Callable[[int], None], live: _Live | None = None) -> str:
    """One file of the cache into ``work``, verified and durable; its sha256. A network error is retried from where
    it stopped; ``live.stop()`` ends the download at once (_Stopped or RemoteError, its bytes kept)."""
    live = live or _Live()
    final = work / s.file
    if final.is_file():  # verified before it was renamed; checked again, as a kill may have come at any point
        if final.stat().st_size == s.bytes and file_sha256(final) == s.sha256:
            advance(s.bytes)
            return s.sha256
        final.unlink()
    part = work / (s.file + PART_SUFFIX)
    for attempt in range(RETRIES + 1):
        try:
            digest = _download(remote, f"{key}/{s.file}", part, s, advance, live)
            break
        except RemoteError:
            if attempt == RETRIES or live.stopped.wait(0.5 * 2**attempt):
                raise
    os.rename(part, final)
    return digest


def _download(remote: RemoteStore, rel: str, part: Path, s: ShardInfo | ProjectionInfo,
              advance: Callable[[int], None], live: _Live) -> str:
    """Append the rest of ``rel`` to ``part`` (from its end when the server honours Range, else from 0); its sha256,
    the file fsynced."""
    url = remote.transport.address(rel)
    offset = part.stat().st_size if part.is_file() else 0
    offset = offset if offset <= s.bytes else 0
    chunks: Iterable[bytes]
    if 0 < offset == s.bytes:  # all there (killed before the rename): nothing to ask for (a server would say 416)
        start, chunks = offset, iter(())
    else:
        start, chunks = remote.transport.stream(rel, offset)
    live.opened(chunks)
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    h = Hasher()
    try:
        with os.fdopen(fd, "r+b") as f:
            if start:  # resumed: the bytes already there enter the hash first
                while block := f.read(min(CHUNK, start - f.tell())):
                    h.update(block)
            f.seek(start)
            f.truncate()
            written = start
            try:
                for chunk in chunks:
                    if live.stopped.is_set():
                        raise _Stopped
                    if written + len(chunk) > s.bytes:
                        raise CacheError(f"{url}: the server sends more than the {s.bytes:,} bytes its manifest "
                                         "records; it is refused, nothing was installed")
                    f.write(chunk)
                    h.update(chunk)
                    if (written + len(chunk)) // WRITEBACK != written // WRITEBACK:
                        f.flush()
                        start_writeback(f.fileno(), 0, written + len(chunk))  # the fsync below finds less to do
                    written += len(chunk)
                    advance(len(chunk))
            finally:
                live.close(chunks)
                f.flush()
                os.fsync(f.fileno())
                digest = h.hexdigest()  # also on an error: the hashing thread ends
    except CacheError:
        part.unlink(missing_ok=True)
        raise
    if live.stopped.is_set():  # an aborted body may end early without an error: not a short file, its bytes kept
        raise _Stopped
    if written < s.bytes:  # the whole file was sent (a dropped connection is a RemoteError): it is short
        part.unlink(missing_ok=True)
        raise CacheError(f"{url}: the server's file has {written:,} bytes, its manifest records {s.bytes:,}; it is "
                         "refused, nothing was installed")
    if digest != s.sha256:
        part.unlink(missing_ok=True)
        raise CacheError(f"{url}: its bytes do not match the sha256 its manifest records (altered at the store or in "
                         "transit); it is refused, nothing was installed")
    return digest


class Hasher:
    """sha256 computed by a thread of its own from the chunks handed to it (hashlib releases the GIL), so that the
    download goes on while the hash catches up: hashing in the downloading thread made a pull from a local HTTP
    mirror about half as fast as a plain download (featcache.cache.hashpipe does the same for export/import)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # <= ~8 MiB ahead of the hash
        self._thread = threading.Thread(target=self._run, name="featcache-pull-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def hexdigest(self) -> str:
        self._chunks.put(None)
        self._thread.join()
        return self._hash.hexdigest()
