"""`featcache cache publish KEY --to STORE`: copy a complete cache into a shared store, visible only once verified.

A URL target (``s3://bucket/prefix``, any fsspec URL that can be written) is uploaded by featcache.cache.upload.
Into a directory, the cache is copied (each shard's sha256 checked against the manifest as it is read) into a
private incoming directory of the target store, verified again there, and renamed into place
(featcache.cache.install): readers of the store see nothing or the complete cache, and a second publisher of the same
key loses cleanly. The store's ``index.json`` then lists its keys, so that a web server serving the directory as it
is makes it a store readers can list (HTTP has no listing of its own).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from featcache.cache.format import MANIFEST, is_cache_key, shard_path
from featcache.cache.install import (
    check_complete,
    discard,
    file_mode,
    install,
    is_real_dir,
    new_incoming,
    same_cache,
    share_file,
)
from featcache.cache.remote import INDEX, store_url
from featcache.cache.store import CacheStore
from featcache.cache.upload import index_bytes, publish_remote
from featcache.errors import CacheError, StorageError
from featcache.util.fileio import unwritable, write_atomic

CHUNK = 8 * 2**20


@dataclass
class Published:
    key: str
    directory: Path | str  # a URL for a remote store
    bytes: int
    new: bool  # False: the store already held the same cache


def publish(store: CacheStore, key: str, target: Path | str,
            progress: Callable[[int], None] | None = None) -> Published:
    """Copy cache ``key`` (found in ``store``'s stack) into the store ``target``: a directory, or a URL."""
    entry = store.locate(key)
    m = entry.manifest
    if m is None or not m.complete:
        raise CacheError(f"cache {entry.key} is not complete ({entry.status}); only a complete cache can be published")
    url = store_url(target)
    if url is not None:
        up = publish_remote(entry.directory, m, url, progress)
        return Published(up.key, up.url, up.bytes, up.new)
    target = Path(target).expanduser()
    if not target.is_dir():
        raise StorageError(f"--to {target}: not a directory; create the shared store first (mkdir, and chgrp/chmod "
                           "g+s for a group)")
    dest = target / entry.key
    size = m.total_bytes()
    if dest.exists():
        if same_cache(entry.directory, dest):
            write_index(target)
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
    write_index(target)
    return Published(entry.key, dest, size, new)


def write_index(target: Path) -> None:
    """``target/index.json``: the caches the directory holds (each a directory of a key with its manifest: visible
    caches are complete), rebuilt from the directory, so that it also lists what others published or imported."""
    try:
        keys = [n for n in os.listdir(target) if not n.startswith(".") and n != INDEX and is_cache_key(n)
                and is_real_dir(target / n) and (target / n / MANIFEST).is_file()]
    except OSError as exc:
        raise unwritable(target, exc, "store") from None
    write_atomic(target / INDEX, index_bytes(keys), flag="--to", mode=file_mode(target), what="store")


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
