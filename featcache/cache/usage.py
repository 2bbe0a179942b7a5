"""When each cache was last used: ``<personal store>/.usage/<key>``, whose mtime is the last use.

Every reader records its keys in the PERSONAL store's index, wherever the cache lives, so that a cache of a read-only
shared store has a last use too (per user: each user's personal store holds their own uses). Recording is one
``utime`` (or one ``open(O_CREAT)`` the first time): atomic, no lock, no content. It is best effort: a personal store
that cannot be written records nothing and the reader carries on. `cache ls` shows the last use, `cache gc` removes the
least recently used caches first. Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from featcache.cache.format import is_cache_key

USAGE = ".usage"


def writable(directory: Path) -> bool:
    """Whether this process may write in ``directory``. Root passes every permission check, so a store whose mode
    grants nobody write (``chmod a-w``: how an admin marks a store read-only) counts as read-only even to root."""
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(directory, os.W_OK)


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
        for key in keys:
            path = index / key
            try:
                os.utime(path)
            except FileNotFoundError:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
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
                    out[e.name] = e.stat().st_mtime
                except OSError:
                    continue
    except OSError:
        pass
    return out
