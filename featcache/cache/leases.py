"""Reader leases: a cache being read is never removed from under its reader, on a local disk or on NFS.

A reader (distill, ``--online`` included, and the Python API's RowJoin) holds a lease on each cache it reads:
the file ``<store holding the cache>/.leases/<key>/<host>@<pid>@<nonce>``, written BEFORE it reads a shard, its
mtime refreshed every HEARTBEAT seconds by a daemon thread, deleted when the reader is done (exceptions included;
a kill -9 leaves it, and it is then stale). A lease is live while its process is: on the same host, while the pid
runs (and is the same process: its start time is in the file, so a reused pid does not count); from another host,
while its heartbeat is younger than STALE seconds. Nothing depends on ``flock``, which NFS may not honour.

A reader leases every store featcache writes in (usage.writable: the same decision lets `cache rm`, `cache gc` and
an extract write there, root included). A store mounted read-only, or marked so with ``chmod a-w``, gets no lease and
no maintenance command changes it, even as root. A reader whose user may not write the store cannot lease it either:
an admin removing from it (or from another, writable mount of it) cannot see those readers; that is the one case
leases do not cover.

Other users write here too: a name that is not one featcache writes (a pid in ASCII digits, featcache.cache.install
.parse_pid) is no lease and blocks nothing; a lease file is read only when it is a small regular file; nothing
removed here is followed through a link (``fileio.remove_tree``).

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
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from featcache.cache.format import MANIFEST, is_cache_key
from featcache.cache.install import (
    disk_bytes,
    host,
    is_real_dir,
    last_change,
    make_dir,
    parse_pid,
    pid_alive,
    stale_children,
)
from featcache.cache.usage import writable
from featcache.errors import CacheError, FeatcacheError
from featcache.util.fileio import loads_json, read_regular, remove_tree, unwritable

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
    """The lease (or remover mark) at ``path``, or None when it is gone or is not one featcache writes: a name
    without an ASCII pid, or not a regular file (a link, a FIFO: never read)."""
    parts = path.name.split("@")
    remover = parts[0] == REMOVER
    parts = parts[1:] if remover else parts
    pid = parse_pid(parts[1]) if len(parts) == 3 else None
    if pid is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:  # released meanwhile
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        info = loads_json(read_regular(path, 1000) or b"{}")
    except (OSError, ValueError):  # a file someone else wrote (nested 100k deep, not UTF-8, cut at 1000 bytes)
        info = {}
    info = info if isinstance(info, dict) else {}
    start = info.get("start") if type(info.get("start")) is int else None
    what = "".join(ch for ch in str(info.get("what", ""))[:40] if ch.isprintable())  # a file from anyone: shown tame
    age = now - st.st_mtime
    return Holder(path, parts[0], pid, what, age, _live(parts[0], pid, start, age), remover)


def holders(store: Path, key: str, now: float | None = None) -> list[Holder]:
    """Every lease and remover mark on ``key`` in ``store``, live or not."""
    if not is_real_dir(Path(store) / LEASES) or not is_real_dir(lease_dir(store, key)):
        return []  # a link planted there leads elsewhere: no lease of this store
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
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
            return path
        except FileNotFoundError:
            continue
        except (OSError, FeatcacheError):
            return None  # best effort (a full disk, a link planted as .leases): the reader carries on unguarded
    return None


def _body(what: str) -> bytes:
    return json.dumps({"what": what, "start": process_start(os.getpid())}).encode()


def _write_again(path: Path, what: str) -> None:
    store = path.parent.parent.parent
    try:
        make_dir(store / LEASES, store)
        make_dir(path.parent, store)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, _body(what))
        finally:
            os.close(fd)
    except (OSError, FeatcacheError):
        pass


def _drop(path: Path) -> None:
    try:
        remove_tree(path)  # a link is removed as a link
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
    the bytes freed. The caller holds the cache's write lock. An entry that is a link is removed as a link: nothing
    it points to is touched (0 bytes freed)."""
    store, key = directory.parent, directory.name
    mark = _write(store, key, "remove", remover=True)
    try:
        readers = live_readers(store, key)
        if readers:
            raise CacheInUseError(in_use_message(key, readers, what_to_do), readers)
        size = disk_bytes(directory)
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


def check_unleased(store: Path, key: str, what_to_do: str) -> None:
    """CacheInUseError when a live reader leases ``key`` in ``store`` (a replacement refused before its work)."""
    readers = live_readers(store, key)
    if readers:
        raise CacheInUseError(in_use_message(key, readers, what_to_do), readers)


def replace_unleased(new: Path, target: Path, what_to_do: str) -> None:
    """Rename the directory ``new`` to the cache ``target`` in place of the one there, unless a live reader leases
    it (CacheInUseError, ``new`` left where it is). As for a removal, a mark keeps a reader starting meanwhile waiting
    until the new cache is in place; the old one goes to the trash, then is deleted (a link as a link); what cannot
    be deleted now is left in the trash for `cache gc`."""
    store, key = target.parent, target.name
    mark = _write(store, key, "replace", remover=True)
    try:
        check_unleased(store, key, what_to_do)
        trash = _to_trash(target)  # out of sight first: readers see the old cache or the new one, never a mix
        try:
            os.rename(new, target)
        except OSError:
            if os.path.lexists(target):
                raise CacheError(f"{target} was written again while it was being replaced; re-run the "
                                 "extract") from None
            raise
    except OSError as exc:
        raise unwritable(store, exc, "cache store") from None
    finally:
        if mark is not None:
            _drop(mark)
    try:
        delete_trash(trash)
    except FeatcacheError:
        pass


def delete_trash(trash: Path) -> None:
    """Delete a cache moved to the trash, the manifest first (a crash mid-removal leaves a directory nobody mistakes
    for a cache); a link there is removed as a link, never followed."""
    try:
        try:
            fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            fd = None  # not a real directory: remove_tree unlinks it
        if fd is not None:
            try:
                os.unlink(MANIFEST, dir_fd=fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        remove_tree(trash)
    except OSError as exc:
        raise unwritable(trash, exc, "cache") from None


# -- what a crash leaves (cleaned by `cache gc`) ------------------------------------------------------------------


def stale_leases(store: Path, now: float | None = None) -> list[Path]:
    """Lease and remover-mark files whose process is gone (killed, or another host silent for STALE seconds), and
    what is in ``.leases`` but is no lease featcache writes (a link, a name without an ASCII pid) once unchanged for
    STALE seconds: nobody can be alive behind it. A link is never entered."""
    root = Path(store) / LEASES
    if not is_real_dir(root):
        return []
    try:
        keys = list(root.iterdir())
    except OSError:
        return []
    now = time.time() if now is None else now
    out = []
    for d in keys:
        if not is_real_dir(d):
            out += _foreign([d], now)
            continue
        found = holders(store, d.name, now)
        out += [h.path for h in found if not h.live]
        try:
            known = {h.path for h in found}
            out += _foreign([p for p in d.iterdir() if p not in known], now)
        except OSError:
            continue
    return out


def _foreign(paths: list[Path], now: float) -> list[Path]:
    """Those of ``paths`` (no lease featcache wrote) that are stale: a link at once, anything else once unchanged
    for STALE seconds."""
    out = []
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or now - st.st_mtime > STALE:
            out.append(p)
    return out


def stale_trash(store: Path, now: float | None = None) -> list[Path]:
    """Trash entries whose remover is gone: its pid does not run on this host, or (another host) it has not
    changed for install.STALE_AFTER seconds. A link there is stale like a directory, and removed as a link."""
    return stale_children(Path(store) / TRASH, last_change, now)


def clean_trash(trash: Path) -> str:
    """Delete a stale trash directory, or put it back when a live reader leases its key (its remover died between
    renaming it away and renaming it back); returns "deleted" or "restored". Only a real directory is ever put back:
    a link there is no cache this store held."""
    key = trash.name.split("@", 1)[0]
    target = trash.parent.parent / key
    if (is_real_dir(trash) and is_cache_key(key) and live_readers(target.parent, key)
            and not os.path.lexists(target)):
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
