"""Reader leases: a cache being read is never removed from under its reader, on a local disk or on NFS.

A reader (distill, ``--online`` included, and the Python API's RowJoin) holds a lease on each cache it reads:
the file ``<store holding the cache>/.leases/<key>/<host>@<pid>@<nonce>``, written BEFORE it reads a shard, its
mtime refreshed every HEARTBEAT seconds by a daemon thread, deleted when the reader is done (exceptions included;
a kill -9 leaves it, and it is then stale). A lease is live while its process is: on the same host, while the pid
runs (and is the same process: its start time is in the file, so a reused pid does not count); from another host,
while its heartbeat is younger than STALE seconds. Nothing depends on ``flock``, which NFS may not honour.

Only a store this process may write gets a lease: a store mounted read-only (or ``chmod a-w``) cannot be removed from
by the reader's users either. An admin removing from such a store through another, writable mount cannot see those
readers; that is the one case leases do not cover.

Removing a cache (`cache rm`, `cache gc`) follows a protocol that a reader starting at the same moment cannot lose:

    remover                                            reader
    1. write a ``removing@<host>@<pid>@<nonce>`` mark  a. write its lease
    2. any live lease? -> refuse (rm) or skip (gc)     b. a live remover mark? wait for its verdict
    3. rename the cache to ``<store>/.trash/...``      c. the cache gone? -> "removed", one line; else read it
    4. any live lease now? -> rename it back, refuse
    5. drop the mark; delete the trash

If the reader's lease (a) comes after step 2, its check (b) comes after the mark (1): it waits until the remover has
decided, and then finds the cache back in place (4) or gone (c); it never reads a cache that is being deleted. The
trash directory (a name starting with ``.``) is invisible to every lookup; a crash leaves it, and `cache gc` deletes
it (or puts it back when a live reader leases its key).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from featcache.fileio import loads_json
from featcache.cache.format import MANIFEST, is_cache_key
from featcache.cache.install import host, make_dir, pid_alive, stale_children
from featcache.cache.usage import writable
from featcache.errors import CacheError
from featcache.locks import unwritable

LEASES = ".leases"
TRASH = ".trash"
HEARTBEAT = 30.0  # seconds between two refreshes of a lease's mtime
STALE = 120.0  # seconds without a heartbeat after which another host's lease (or remover mark) is dead
REMOVER = "removing"  # prefix of a remover's mark
POLL = 0.05


class CacheInUseError(CacheError):
    """A live reader leases the cache; carries the ``holders``."""

    def __init__(self, message: str, holders: list["Holder"]) -> None:
        super().__init__(message)
        self.holders = holders


@dataclass(frozen=True)
class Holder:
    """One lease (or remover mark) file and what it says about its process."""

    path: Path
    host: str
    pid: int
    what: str
    age: float  # seconds since its last heartbeat
    live: bool
    remover: bool

    def describe(self) -> str:
        return f"pid {self.pid}@{self.host}" + (f" ({self.what})" if self.what else "")


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux): a reused pid is another process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def lease_dir(store: Path, key: str) -> Path:
    return Path(store) / LEASES / key


def _live(where: str, pid: int, start: int | None, age: float) -> bool:
    if where == host():
        if not pid_alive(pid):
            return False
        now_start = process_start(pid)
        return start is None or now_start is None or now_start == start
    return age < STALE


def _holder(path: Path, now: float) -> Holder | None:
    parts = path.name.split("@")
    remover = parts[0] == REMOVER
    parts = parts[1:] if remover else parts
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    try:
        age = now - path.stat().st_mtime
    except OSError:  # released meanwhile
        return None
    try:
        info = loads_json(path.read_text()[:1000] or "{}")
    except (OSError, ValueError):  # a file someone else wrote
        info = {}
    info = info if isinstance(info, dict) else {}
    start = info.get("start") if type(info.get("start")) is int else None
    what = "".join(ch for ch in str(info.get("what", ""))[:40] if ch.isprintable())  # a file from anyone: shown tame
    pid = int(parts[1])
    return Holder(path, parts[0], pid, what, age, _live(parts[0], pid, start, age), remover)


def holders(store: Path, key: str, now: float | None = None) -> list[Holder]:
    """Every lease and remover mark on ``key`` in ``store``, live or not."""
    try:
        paths = list(lease_dir(store, key).iterdir())
    except OSError:
        return []
    now = time.time() if now is None else now
    return [h for h in (_holder(p, now) for p in paths) if h is not None]


def live_readers(store: Path, key: str) -> list[Holder]:
    return [h for h in holders(store, key) if h.live and not h.remover]


def _write(store: Path, key: str, what: str, remover: bool = False) -> Path | None:
    """A new lease (or remover mark) file on ``key``; None where the store cannot be written (nobody can remove from
    it then: nothing to guard against)."""
    store = Path(store)
    if not is_cache_key(key) or not writable(store):
        return None
    name = f"{REMOVER + '@' if remover else ''}{host()}@{os.getpid()}@{secrets.token_hex(4)}"
    body = _body(what)
    for _ in range(5):  # a reader releasing the last lease removes the key's directory: make it again
        try:
            make_dir(store / LEASES, store)
            make_dir(lease_dir(store, key), store)
            path = lease_dir(store, key) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
            return path
        except FileNotFoundError:
            continue
        except OSError:
            return None  # best effort (a full disk): the reader carries on unguarded rather than failing
    return None


def _body(what: str) -> bytes:
    return json.dumps({"what": what, "start": process_start(os.getpid())}).encode()


def _write_again(path: Path, what: str) -> None:
    store = path.parent.parent.parent
    try:
        make_dir(store / LEASES, store)
        make_dir(path.parent, store)
        path.write_bytes(_body(what))
    except OSError:
        pass


def _drop(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        path.parent.rmdir()  # the key's directory, when this was its last lease
    except OSError:
        pass


def _await_verdict(directory: Path) -> None:
    """After writing a lease: wait out a remover caught in the act, then check the cache is still there."""
    store, key = directory.parent, directory.name
    deadline = time.monotonic() + STALE
    while any(h.remover and h.live for h in holders(store, key)) and time.monotonic() < deadline:
        time.sleep(POLL)
    if not (directory / MANIFEST).is_file():
        raise CacheError(f"cache {key} was removed from {store} (by `featcache cache gc` or `cache rm`) while this "
                         "process was opening it; extract it again, then re-run")


class Lease:
    """``with Lease(caches, what="distill"):`` read them. ``caches``: anything with a ``directory`` (FeatureCache,
    CacheEntry) or cache directories; ``add`` leases more inside the block (before their shards are read)."""

    def __init__(self, caches: Iterable[Any] = (), what: str = "reader") -> None:
        self.what = what
        self.files: list[Path] = []
        self._pending = list(caches)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, caches: Iterable[Any]) -> "Lease":
        for c in caches:
            directory = Path(getattr(c, "directory", c))
            path = _write(directory.parent, directory.name, self.what)
            if path is not None:
                self.files.append(path)
            _await_verdict(directory)
        if self.files and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="featcache-lease", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            for path in list(self.files):
                try:
                    os.utime(path)
                except FileNotFoundError:  # taken for stale by a host whose clock runs ahead: lease again
                    if not self._stop.is_set():
                        _write_again(path, self.what)
                except OSError:
                    pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)  # never unlink under a heartbeat that would write the lease again
            self._thread = None
        for path in self.files:
            _drop(path)
        self.files.clear()

    def __enter__(self) -> "Lease":
        try:
            return self.add(self._pending)
        except BaseException:
            self.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self.release()


def in_use_message(key: str, readers: list[Holder], what_to_do: str) -> str:
    who = ", ".join(h.describe() for h in readers[:3]) + (f" and {len(readers) - 3} more" if len(readers) > 3 else "")
    return f"cache {key} is being read by {who}; {what_to_do}"


def _to_trash(directory: Path) -> Path:
    """Rename a cache out of sight: ``<store>/.trash/<key>@<host>@<pid>@<nonce>``."""
    store = directory.parent
    make_dir(store / TRASH, store)
    trash = store / TRASH / f"{directory.name}@{host()}@{os.getpid()}@{secrets.token_hex(4)}"
    os.rename(directory, trash)
    return trash


def remove_unleased(directory: Path, what_to_do: str = "wait for it to finish (or stop it), then remove the "
                                                      "cache") -> int:
    """Delete a cache directory unless a live reader leases it (CacheInUseError), by the protocol above; returns
    the bytes freed. The caller holds the cache's write lock."""
    store, key = directory.parent, directory.name
    mark = _write(store, key, "remove", remover=True)
    try:
        readers = live_readers(store, key)
        if readers:
            raise CacheInUseError(in_use_message(key, readers, what_to_do), readers)
        size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        trash = _to_trash(directory)
        readers = live_readers(store, key)  # a reader that leased between the check and the rename
        if readers:
            os.rename(trash, directory)
            raise CacheInUseError(in_use_message(key, readers, what_to_do), readers)
    except OSError as exc:
        raise unwritable(directory, exc, "cache") from None
    finally:
        if mark is not None:
            _drop(mark)
    delete_trash(trash)
    drop_files(h.path for h in holders(store, key) if not h.live)  # leases of dead readers of the cache just gone
    return size


def delete_trash(trash: Path) -> None:
    # The manifest first: a crash mid-removal leaves a directory nobody mistakes for a cache.
    try:
        (trash / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(trash)
    except OSError as exc:
        raise unwritable(trash, exc, "cache") from None


# -- what a crash leaves (cleaned by `cache gc`) ------------------------------------------------------------------


def stale_leases(store: Path, now: float | None = None) -> list[Path]:
    """Lease and remover-mark files whose process is gone (killed, or another host silent for STALE seconds)."""
    try:
        keys = [p.name for p in (Path(store) / LEASES).iterdir()]
    except OSError:
        return []
    return [h.path for k in keys for h in holders(store, k, now) if not h.live]


def stale_trash(store: Path, now: float | None = None) -> list[Path]:
    """Trash directories whose remover is gone: its pid does not run on this host, or (another host) it has not
    changed for install.STALE_AFTER seconds."""
    return stale_children(Path(store) / TRASH, lambda d: d.stat().st_mtime, now)


def clean_trash(trash: Path) -> str:
    """Delete a stale trash directory, or put it back when a live reader leases its key (its remover died between
    renaming it away and renaming it back); returns "deleted" or "restored"."""
    key = trash.name.split("@", 1)[0]
    target = trash.parent.parent / key
    if is_cache_key(key) and live_readers(target.parent, key) and not target.exists():
        try:
            os.rename(trash, target)
            return "restored"
        except OSError:
            pass
    delete_trash(trash)
    return "deleted"


def drop_files(paths: Iterable[Path]) -> None:
    for p in paths:
        _drop(p)
