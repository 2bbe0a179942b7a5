"""Making a cache visible in a store: nothing, or the complete verified directory — on any file system.

Every writer (`cache publish`, `cache import`, an extract) builds the cache in a private directory of the target
store, ``<store>/.incoming/<key>@<host>@<pid>@<nonce>``, verifies it (:func:`check_complete`), then renames it to
``<store>/<key>`` in one ``rename(2)``: on a local disk and on NFS alike a reader sees no directory or the whole one,
so visibility never depends on ``flock`` (which some network file systems do not honour). When two writers race, the
second rename fails because the key exists; the loser checks that the winner's cache is the same one and discards its
own copy. A writer killed at any moment leaves only its incoming directory, which no lookup reads and which
:func:`stale_incoming` recognises (its pid is gone on this host, or it is older than a day on another) for `cache gc`.

Permissions follow the target store, as a lab's shared directory expects: created directories start from the umask
and take the store's group bits (read, execute and write, so that the group can also remove them; a setgid store
passes its group and setgid bit on). Cache files are set explicitly, whatever the umask: readable as the umask allows
(and by the store's group when the store is), never writable by anyone: a cache is immutable once visible.

Other people write to a shared store, so nothing here follows a link planted in it: a bookkeeping directory
(``.incoming``, ``.trash``, ``.leases``) that is not a real directory is never written through, a process id in a name
is parsed strictly (:func:`parse_pid`), and what is deleted is deleted without following links
(``fileio.remove_tree``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import socket
import stat
import time
from pathlib import Path
from typing import Callable, Mapping

from featcache.cache.format import MANIFEST, Manifest, canonical_json, fsync_dir, is_cache_key, shard_path
from featcache.cache.usage import check_writable
from featcache.errors import CacheError, StorageError
from featcache.util.fileio import current_umask, printable, remove_tree, unwritable
from featcache.util.hashing import file_sha256

INCOMING = ".incoming"
STALE_AFTER = 24 * 3600  # seconds: an incoming directory of another host older than this is taken as abandoned
MAX_PID = 2**31 - 1  # no host's process ids go higher (and os.kill refuses larger numbers with OverflowError)


def host() -> str:
    return socket.gethostname().replace("@", "_") or "localhost"


def new_incoming(store: Path, key: str) -> Path:
    """A fresh private directory in ``store`` to build ``key`` in (created with the store's group permissions)."""
    if not is_cache_key(key):
        raise CacheError(f"{key!r} is not a cache key")
    parent = Path(store) / INCOMING
    check_writable(Path(store), f"cannot add cache {key}")  # as root too: a store marked read-only is left as it is
    try:
        make_dir(parent, store)
        path = parent / f"{key}@{host()}@{os.getpid()}@{secrets.token_hex(4)}"
        make_dir(path, store)
    except OSError as exc:
        raise unwritable(Path(store), exc, "store") from None
    return path


def make_dir(path: Path, store: Path) -> None:
    """``mkdir`` with the umask's mode plus the store's group bits (and its setgid bit). A link (or a file) already
    at ``path`` is refused, never written through nor chmod-ed: someone else put it in the store. Another user's
    directory that exists is used as it is (its maker gave it the group's bits; only its owner may chmod it)."""
    try:
        path.mkdir()
        created = True
    except FileExistsError:
        created = False
    group = os.stat(store).st_mode & (stat.S_IRWXG | stat.S_ISGID)
    fd = _open_real_dir(path)
    try:
        st = os.fstat(fd)
        if group and (created or st.st_uid == os.geteuid()) and stat.S_IMODE(st.st_mode) & group != group:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | group)
    except PermissionError:
        pass  # best effort: its maker gave it the group's bits
    finally:
        os.close(fd)


def _open_real_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorageError(f"{printable(str(path))} is a symbolic link or a file, not a directory featcache made; "
                               "nothing is written through it: remove it, then re-run") from None
        raise


def is_real_dir(path: Path) -> bool:
    """A directory itself, not a link to one (what a maintenance command may enter)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def file_mode(store: Path) -> int:
    """The mode of a visible cache's files: read as the umask allows (the owner always), read by the store's group
    when the store is; never writable (docs/store.md)."""
    mode = (0o444 & ~current_umask()) | stat.S_IRUSR
    try:
        if os.stat(store).st_mode & stat.S_IRGRP:
            mode |= stat.S_IRGRP
    except OSError:
        pass
    return mode


def share_file(path: Path, store: Path, mode: int | None = None) -> None:
    """Set a cache file's mode explicitly (:func:`file_mode`, or ``mode`` when the caller computed it once for many
    files), whatever the umask gave it; a link is left alone."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        os.fchmod(fd, file_mode(store) if mode is None else mode)
    finally:
        os.close(fd)


def seal(directory: Path, store: Path) -> None:
    """Every regular file of a cache directory about to become visible gets its explicit mode (:func:`share_file`)."""
    mode = file_mode(store)
    with os.scandir(directory) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                share_file(Path(e.path), store, mode)


def disk_bytes(directory: Path) -> int:
    """The bytes of the regular files directly in ``directory``, counted without following a link (a cache entry
    that is a link holds nothing of this store: 0)."""
    if not is_real_dir(directory):
        return 0
    try:
        with os.scandir(directory) as it:
            return sum(e.stat(follow_symlinks=False).st_size for e in it if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


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
    try:
        seal(incoming, Path(store))
    except OSError as exc:
        discard(incoming)
        raise unwritable(Path(store), exc, "store") from None
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
    return same_manifests(ma, mb)


def same_manifests(a: Manifest, b: Manifest) -> bool:
    """Whether two manifests describe the same cache: one identity, the same files with the same checksums."""
    return (canonical_json(a.identity) == canonical_json(b.identity)
            and sorted((s.file, s.sha256) for s in a.files()) == sorted((s.file, s.sha256) for s in b.files()))


def discard(path: Path) -> None:
    """Remove a directory of ours without following links (best effort: what is left is found by stale_incoming)."""
    try:
        remove_tree(path)
    except OSError:
        pass


def parse_pid(text: str) -> int | None:
    """A process id as featcache writes it (ASCII digits, 1 to MAX_PID), else None: ``str.isdigit`` also accepts
    '²', which ``int`` refuses, and a huge number is no process id."""
    if not 0 < len(text) <= 10 or not text.isascii() or not text.isdigit():
        return None
    pid = int(text)
    return pid if 0 < pid <= MAX_PID else None


def parse_incoming(name: str) -> tuple[str, str, int] | None:
    """(key, host, pid) of an incoming (or trash) directory's name, else None (not a name featcache writes)."""
    parts = name.split("@")
    pid = parse_pid(parts[2]) if len(parts) == 4 else None
    if pid is None:
        return None
    return parts[0], parts[1], pid


def stale_incoming(store: Path, now: float | None = None) -> list[Path]:
    """Incoming directories whose writer is gone: its pid does not run on this host, or (another host) it has not
    changed for STALE_AFTER seconds."""
    return stale_children(Path(store) / INCOMING, last_change, now)


def last_change(d: Path) -> float:
    """The newest mtime of ``d`` and of what is directly in it, links not followed."""
    times = [os.lstat(d).st_mtime]
    if is_real_dir(d):
        with os.scandir(d) as it:
            times += [e.stat(follow_symlinks=False).st_mtime for e in it]
    return max(times)


def stale_children(parent: Path, changed: Callable[[Path], float], now: float | None = None) -> list[Path]:
    """The entries under ``parent`` (a real directory: a link there is never entered) whose owner is gone. Named
    KEY@HOST@PID@…: PID does not run on this host, or (another host) ``changed(d)``, its last change, is older than
    STALE_AFTER seconds. Any other name holding an ``@`` was not written by featcache: nobody can be alive behind it,
    so it is stale once unchanged for STALE_AFTER seconds, like another host's; a link is stale at once. (Names
    without ``@``, such as the keys' lock files, are left alone.)"""
    if not is_real_dir(parent):
        return []
    try:
        children = list(parent.iterdir())
    except OSError:
        return []
    now = time.time() if now is None else now
    out = []
    for d in children:
        if "@" not in d.name:
            continue
        parsed = parse_incoming(d.name)
        try:
            age = now - changed(d)
        except OSError:
            continue
        if d.is_symlink():
            gone = True  # featcache makes no links there: one is removed (as a link) at once
        elif parsed is None:
            gone = age > STALE_AFTER
        else:
            _key, where, pid = parsed
            gone = (where == host() and not pid_alive(pid)) or (where != host() and age > STALE_AFTER)
        if gone:
            out.append(d)
    return out


def pid_alive(pid: int) -> bool:
    if not 0 < pid <= MAX_PID:  # 0 would signal our own process group; larger overflows
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True
