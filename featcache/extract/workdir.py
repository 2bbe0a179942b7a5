"""An extract's private work directory, and the one rename that makes its cache visible.

The shards of a cache being written go to ``<store>/.incoming/<key>@<host>@<pid>@<nonce>`` (featcache.cache.install):
readers never see a partial cache, two writers (two processes, or two machines sharing the store over NFS, where
``flock`` may not be honoured) never write into one directory, and the cache appears with one ``rename`` once it is
complete. While it works, the extract refreshes ``.heartbeat`` in its directory.

A killed extract's directory is adopted by the next extract of the same key — renamed to the adopter's own name, so
that exactly one adopter wins — once its writer is gone: its pid no longer runs on this host, or (another host) its
heartbeat is older than REMOTE_STALE. A cache an older featcache wrote in place (incomplete, or with damaged shards)
is adopted the same way, and so is a complete cache whose shards were damaged since.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from featcache.cache.format import is_cache_key
from featcache.cache.install import INCOMING, discard, host, is_real_dir, make_dir, parse_incoming, pid_alive, seal
from featcache.cache.leases import check_unleased, replace_unleased
from featcache.cache.usage import check_writable
from featcache.errors import CacheError
from featcache.util.fileio import unwritable
from featcache.util.locks import HEARTBEAT, REMOTE_STALE
from featcache.util.progress import Reporter

HEARTBEAT_FILE = ".heartbeat"
_ACTIVE: set[str] = set()  # work directories open in this process (an earlier failed extract's is adoptable)
IN_USE = "wait for it to finish (or stop it), then re-run the extract"


def check_store(store: Path, key: str, replace: bool) -> None:
    """Before an extract writes anything (its lock included): the store is one featcache writes in (as root too: a
    store marked read-only with chmod a-w is refused, as its readers take no lease there), and a cache that --force
    would replace is not being read."""
    if os.path.lexists(store):
        check_writable(Path(store), f"cannot extract cache {key}")
    if replace:
        check_unleased(Path(store), key, IN_USE + " with --force")


class WorkDir:
    """The work directory of one extract of ``key`` in ``store``: adopted or created by :meth:`open`, kept on failure
    (the next extract resumes it), made visible by :meth:`publish`."""

    def __init__(self, store: Path, key: str) -> None:
        if not is_cache_key(key):
            raise CacheError(f"{key!r} is not a cache key")
        self.store, self.key = Path(store), key
        self.path: Path | None = None
        self._stop = threading.Event()

    def open(self, reporter: Reporter, in_place: bool = False) -> Path:
        """Adopt an abandoned work directory of this key (or, ``in_place``, the store's own ``<key>`` directory,
        which the caller found unusable as it is), else create an empty one; start the heartbeat."""
        parent = self.store / INCOMING
        mine = parent / f"{self.key}@{host()}@{os.getpid()}@{os.urandom(4).hex()}"
        try:
            make_dir(self.store, self.store) if not self.store.exists() else None
            make_dir(parent, self.store)
            in_place = in_place and is_real_dir(self.store / self.key)  # a link there is never adopted
            adopted = _adopt(self.store / self.key, mine) if in_place else None
            for old in ([] if adopted else abandoned(self.store, self.key)):
                adopted = _adopt(old, mine)
                if adopted:
                    break
            if adopted:
                reporter.message(f"cache {self.key}: continuing the work of an earlier extract ({adopted.name})")
            else:
                make_dir(mine, self.store)
        except OSError as exc:
            raise unwritable(self.store, exc, "cache store") from None
        self.path = mine
        _ACTIVE.add(str(mine))
        (mine / HEARTBEAT_FILE).touch()
        threading.Thread(target=self._beat, daemon=True).start()
        return mine

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path / HEARTBEAT_FILE)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        _ACTIVE.discard(str(self.path))

    def publish(self, replace: bool, reporter: Reporter) -> Path:
        """Rename the complete work directory to ``<store>/<key>``. An existing cache there is replaced when
        ``replace`` (--force) or when it is not intact; an intact one (another writer finished first) is kept and our
        copy discarded. Returns the cache's directory."""
        from featcache.extract.manifest import intact

        self.close()
        (self.path / HEARTBEAT_FILE).unlink(missing_ok=True)
        target = self.store / self.key
        try:
            seal(self.path, self.store)  # explicit modes: never writable, whatever the umask
            if _rename(self.path, target):
                return target
            if not replace and intact(target):
                reporter.message(f"cache {self.key} was finished meanwhile by another process; using that one")
                discard(self.path)
                return target
        except OSError as exc:
            raise unwritable(self.store, exc, "cache store") from None
        # Replaced like a removal: refused while a reader leases it (this work directory is kept for the next try).
        replace_unleased(self.path, target, IN_USE + (" with --force" if replace else ""))
        return target


def _rename(src: Path, dst: Path) -> bool:
    """``rename(src, dst)``; False when ``dst`` exists (as a directory with content)."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if dst.exists():
            return False
        raise exc
    return True


def _adopt(old: Path, mine: Path) -> Path | None:
    try:
        os.rename(old, mine)
    except OSError:  # gone, or taken by another adopter
        return None
    return old


def abandoned(store: Path, key: str, now: float | None = None) -> list[Path]:
    """Work directories of ``key`` (extracts' or publishers') whose writer is gone, newest first."""
    parent = Path(store) / INCOMING
    try:
        children = [d for d in parent.iterdir() if (parse_incoming(d.name) or ("",))[0] == key]
    except OSError:
        return []
    now = time.time() if now is None else now
    out = []
    for d in children:
        if not is_real_dir(d):
            continue  # a link planted there is never adopted (the shards would be written where it points)
        _, where, pid = parse_incoming(d.name)
        beat = d / HEARTBEAT_FILE
        try:
            age = now - (beat.stat().st_mtime if beat.exists() else d.stat().st_mtime)
        except OSError:
            continue
        mine = pid == os.getpid() and str(d) not in _ACTIVE  # this process's own, from an extract that failed
        if (where == host() and (mine or not pid_alive(pid))) or (where != host() and age > REMOTE_STALE):
            out.append((age, d))
    return [d for _, d in sorted(out)]
