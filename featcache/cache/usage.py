"""When each cache was last used: ``<personal store>/.usage/<key>``, whose mtime is the last use.

Every reader records its keys in the PERSONAL store's index, wherever the cache lives, so that a cache of a read-only
shared store has a last use too (per user: each user's personal store holds their own uses). Recording is one
``utime`` (or one ``open(O_CREAT)`` the first time): atomic, no lock, no content. It is best effort: a personal store
that cannot be written records nothing and the reader carries on. `cache ls` shows the last use, `cache gc` removes the
least recently used caches first. Standard library only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

from featcache.cache.format import is_cache_key

USAGE = ".usage"


def writable(directory: Path) -> bool:
    """Whether featcache writes in ``directory`` (a store): the one decision behind readers' leases and usage records
    AND every maintenance command (rm, gc, extract, publish, import), so that wherever a cache can be removed its
    readers lease it. Not on a read-only mount; not where this process lacks write permission; and not where the
    mode grants nobody write (``chmod a-w``: how an admin marks a store read-only), even for root, which passes
    every permission check: root removing what root's own readers there could not lease is the fault this avoids."""
    try:
        mode = os.stat(directory).st_mode
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        return False
    effective = os.access in os.supports_effective_ids
    return bool(mode & 0o222) and os.access(directory, os.W_OK | os.X_OK, effective_ids=effective)


def check_writable(store: Path, what: str) -> None:
    """Refuse (one line, starting with ``what``: "cannot remove cache KEY") a maintenance command on a store featcache
    treats as read-only (:func:`writable`)."""
    if writable(store):
        return
    from featcache.errors import StorageError
    from featcache.util.fileio import printable

    try:
        st, readonly_fs = os.stat(store), bool(os.statvfs(store).f_flag & os.ST_RDONLY)
        why = ("is on a read-only file system" if readonly_fs else
               "is marked read-only (its mode grants nobody write: chmod a-w), which featcache honours even as root, "
               "so its readers take no lease there" if st.st_mode & 0o222 == 0 else
               "is not writable (permission denied)")
    except OSError as exc:
        why = f"cannot be used ({exc.strerror or exc})"
    raise StorageError(f"{what}: the store {printable(str(store))} {why}; featcache writes nothing there: make it "
                       "writable (chmod u+w) or choose another --cache-dir")


def _root(store: Any) -> Path:
    """The personal store of a CacheStore, or a store directory (a Path has a ``root`` too: "/")."""
    return Path(store if isinstance(store, (str, os.PathLike)) else store.root).expanduser()


def record_use(store: Any, keys: Iterable[str]) -> None:
    """Record that ``keys`` are used now, in the personal store of ``store`` (a CacheStore, or the personal store's
    directory). Keys that are not cache names (a config.json written by someone else) are ignored."""
    root = _root(store)
    keys = [k for k in keys if isinstance(k, str) and is_cache_key(k)]
    if not keys:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)  # a user whose caches are all shared has no personal store yet
        if not writable(root):
            return
        index = root / USAGE
        index.mkdir(exist_ok=True)
        if not stat.S_ISDIR(os.lstat(index).st_mode):
            return  # a link (or a file) is never written through
        for key in keys:
            path = index / key
            try:
                os.utime(path, follow_symlinks=False)
            except FileNotFoundError:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644))
    except OSError:
        return  # best effort: a full or read-only personal store must not stop a run


def last_used(store: Any, key: str) -> float | None:
    """The time (epoch seconds) ``key`` was last used by this user, or None if never recorded."""
    if not is_cache_key(key):
        return None
    try:
        return os.stat(_root(store) / USAGE / key).st_mtime
    except OSError:
        return None


def usage_times(store: Any) -> dict[str, float]:
    """Every recorded last use of the personal store, in one directory scan (`cache ls` over thousands of keys)."""
    out = {}
    try:
        with os.scandir(_root(store) / USAGE) as it:
            for e in it:
                try:
                    out[e.name] = e.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
    except OSError:
        pass
    return out
