"""`featcache cache publish KEY --to STORE`: copy a complete cache into a shared store, visible only once verified.

The cache is copied (each shard's sha256 checked against the manifest as it is read) into a private incoming
directory of the target store, verified again there, and renamed into place (featcache.cache.install): readers of the
store see nothing or the complete cache, and a second publisher of the same key loses cleanly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from featcache.cache.format import MANIFEST, shard_path
from featcache.cache.install import check_complete, discard, install, new_incoming, same_cache, share_file
from featcache.cache.store import CacheStore
from featcache.errors import CacheError, StorageError
from featcache.util.fileio import unwritable

CHUNK = 8 * 2**20


@dataclass
class Published:
    key: str
    directory: Path
    bytes: int
    new: bool  # False: the store already held the same cache


def publish(store: CacheStore, key: str, target: Path, progress: Callable[[int], None] | None = None) -> Published:
    """Copy cache ``key`` (found in ``store``'s stack) into the store directory ``target``."""
    entry = store.locate(key)
    m = entry.manifest
    if m is None or not m.complete:
        raise CacheError(f"cache {entry.key} is not complete ({entry.status}); only a complete cache can be published")
    target = Path(target).expanduser()
    if not target.is_dir():
        raise StorageError(f"--to {target}: not a directory; create the shared store first (mkdir, and chgrp/chmod "
                           "g+s for a group)")
    dest = target / entry.key
    size = m.total_bytes()
    if dest.exists():
        if same_cache(entry.directory, dest):
            return Published(entry.key, dest, size, new=False)
        raise CacheError(f"{dest} already holds a different cache under the key {entry.key}; left as it is")
    incoming = new_incoming(target, entry.key)
    try:
        for s in m.files():  # the shards and a projection file
            copy_checked(shard_path(entry.directory, s), incoming / s.file, s.sha256, target, progress)
        copy_checked(entry.directory / MANIFEST, incoming / MANIFEST, None, target, None)
        check_complete(incoming, entry.key)
        new = install(incoming, target, entry.key)
    except BaseException:
        discard(incoming)
        raise
    return Published(entry.key, dest, size, new)


def copy_checked(src: Path, dst: Path, sha256: str | None, store: Path,
                 progress: Callable[[int], None] | None) -> None:
    """Copy ``src`` to ``dst`` in chunks, hashing what is read; refuse a source whose sha256 is not ``sha256``."""
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while True:
                chunk = fin.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                fout.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        if not Path(src).exists():
            raise CacheError(f"{src} disappeared while it was copied") from None
        raise unwritable(store, exc, "store") from None
    if sha256 is not None and h.hexdigest() != sha256:
        raise CacheError(f"{src} does not match its manifest (sha256); run `featcache cache verify` on its cache")
    share_file(dst, store)
