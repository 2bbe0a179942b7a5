"""Making a cache visible in a store: nothing, or the complete verified directory — on any file system.

Every writer (`cache publish`, `cache import`, an extract) builds the cache in a private directory of the target
store, ``<store>/.incoming/<key>@<host>@<pid>@<nonce>``, verifies it (:func:`check_complete`), then renames it to
``<store>/<key>`` in one ``rename(2)``: on a local disk and on NFS alike a reader sees no directory or the whole one,
so visibility never depends on ``flock`` (which some network file systems do not honour). When two writers race, the
second rename fails because the key exists; the loser checks that the winner's cache is the same one and discards its
own copy. A writer killed at any moment leaves only its incoming directory, which no lookup reads and which
:func:`stale_incoming` recognises (its pid is gone on this host, or it is older than a day on another) for `cache gc`.

Permissions follow the target store, as a lab's shared directory expects: created directories and files start from
the umask, and take the store's group bits (read, and for directories execute and write, so that the group can also
remove them; a setgid store passes its group and setgid bit on). Cache files are never group-writable: a cache is
immutable once visible.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Callable, Mapping

from featcache.cache.format import MANIFEST, Manifest, canonical_json, fsync_dir, is_cache_key, shard_path
from featcache.errors import CacheError
from featcache.hashing import file_sha256
from featcache.locks import unwritable

INCOMING = ".incoming"
STALE_AFTER = 24 * 3600  # seconds: an incoming directory of another host older than this is taken as abandoned


def host() -> str:
    return socket.gethostname().replace("@", "_") or "localhost"


def new_incoming(store: Path, key: str) -> Path:
    """A fresh private directory in ``store`` to build ``key`` in (created with the store's group permissions)."""
    if not is_cache_key(key):
        raise CacheError(f"{key!r} is not a cache key")
    parent = Path(store) / INCOMING
    try:
        make_dir(parent, store)
        path = parent / f"{key}@{host()}@{os.getpid()}@{secrets.token_hex(4)}"
        make_dir(path, store)
    except OSError as exc:
        raise unwritable(Path(store), exc, "store") from None
    return path


def make_dir(path: Path, store: Path) -> None:
    """``mkdir`` with the umask's mode plus the store's group bits (and its setgid bit)."""
    path.mkdir(exist_ok=True)
    group = os.stat(store).st_mode & (stat.S_IRWXG | stat.S_ISGID)
    if group:
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | group)


def share_file(path: Path, store: Path) -> None:
    """A cache file readable by the store's group when the store is (never writable: caches are immutable)."""
    if os.stat(store).st_mode & stat.S_IRGRP:
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | stat.S_IRGRP)


def key_matches_identity(manifest: Manifest) -> bool:
    """Whether the key's digest is the hash of the identity the manifest records (keys say what produced them)."""
    digest = hashlib.sha256(canonical_json(manifest.identity).encode()).hexdigest()[:12]
    return manifest.key.rsplit("-", 1)[-1] == digest


def check_complete(directory: Path, key: str, progress: Callable[[int], None] | None = None,
                   hashed: Mapping[str, str] | None = None) -> Manifest:
    """The manifest of a complete cache of ``key`` in ``directory`` whose every shard has its recorded size and
    sha256, and nothing else but those files; else CacheError saying what is wrong. ``hashed``: the sha256 of shards
    the caller wrote into its private ``directory`` and hashed from the very bytes it wrote (not read again)."""
    m = Manifest.load(directory)
    if m.key != key:
        raise CacheError(f"{directory}: its manifest names the key {m.key}, not {key}")
    if not key_matches_identity(m):
        raise CacheError(f"cache {key}: the key does not match the identity its manifest records (the manifest was "
                         "edited); it is refused")
    if not m.complete or len(m.shards) != len(m.expected_shards()):
        raise CacheError(f"cache {key} is incomplete ({len(m.shards)}/{len(m.expected_shards())} shards)")
    expected = {MANIFEST} | {s.file for s in m.files()}
    extra = sorted(p.name for p in directory.iterdir() if p.name not in expected)
    if extra:
        raise CacheError(f"cache {key}: unexpected file {extra[0]!r} next to its shards")
    for s in m.files():  # the shards and a projection file
        path = shard_path(directory, s)
        digest = (hashed or {}).get(s.file)
        if not path.is_file() or path.stat().st_size != s.bytes or (digest or file_sha256(path)) != s.sha256:
            raise CacheError(f"cache {key}: shard {s.file} does not match its manifest (size or sha256)")
        if progress is not None:
            progress(s.bytes)
    return m


def install(incoming: Path, store: Path, key: str) -> bool:
    """Rename the verified ``incoming`` directory to ``store/key``; True if it became visible, False if an identical
    cache already was (``incoming`` is removed then). A different cache under the key is a CacheError."""
    target = Path(store) / key
    fsync_dir(incoming)
    try:
        os.rename(incoming, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            discard(incoming)
            raise unwritable(Path(store), exc, "store") from None
        try:
            same = same_cache(incoming, target)
        finally:
            discard(incoming)
        if not same:
            raise CacheError(f"{target} already holds a different cache under the key {key}; it was left as it is "
                             "(check it with `featcache cache verify`)") from None
        return False
    fsync_dir(Path(store))
    return True


def same_cache(a: Path, b: Path) -> bool:
    try:
        ma, mb = Manifest.load(a), Manifest.load(b)
    except CacheError:
        return False
    return (canonical_json(ma.identity) == canonical_json(mb.identity)
            and sorted((s.file, s.sha256) for s in ma.files()) == sorted((s.file, s.sha256) for s in mb.files()))


def discard(path: Path) -> None:
    """Remove a directory of ours (best effort: what is left is found by stale_incoming)."""
    shutil.rmtree(path, ignore_errors=True)


def parse_incoming(name: str) -> tuple[str, str, int] | None:
    """(key, host, pid) of an incoming directory's name, else None."""
    parts = name.split("@")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def stale_incoming(store: Path, now: float | None = None) -> list[Path]:
    """Incoming directories whose writer is gone: its pid does not run on this host, or (another host) it has not
    changed for STALE_AFTER seconds."""
    return stale_children(Path(store) / INCOMING, lambda d: max(p.stat().st_mtime for p in [d, *d.iterdir()]), now)


def stale_children(parent: Path, changed: Callable[[Path], float], now: float | None = None) -> list[Path]:
    """The directories under ``parent`` named KEY@HOST@PID@… whose owner is gone: PID does not run on this host,
    or (another host) ``changed(d)``, its last change, is older than STALE_AFTER seconds."""
    try:
        children = list(parent.iterdir())
    except OSError:
        return []
    now = time.time() if now is None else now
    out = []
    for d in children:
        parsed = parse_incoming(d.name)
        if parsed is None:
            continue
        _key, where, pid = parsed
        try:
            age = now - changed(d)
        except OSError:
            continue
        if (where == host() and not pid_alive(pid)) or (where != host() and age > STALE_AFTER):
            out.append(d)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
