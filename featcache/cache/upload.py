"""`featcache cache publish KEY --to URL`: a complete cache uploaded to a remote store (``s3://bucket/prefix``, or
any fsspec URL whose file system can write), in the layout a reader expects (featcache.cache.remote).

Order is what keeps readers safe: every shard is uploaded and verified first, then ``<key>/manifest.json``, then the
store's ``index.json`` (a listing hint). A reader trusts nothing but a manifest, so it never sees one whose shards are
missing; an upload cut short leaves shards without a manifest, which no reader lists and the next publish completes.

Each file's sha256 is checked against the manifest as it is read here, and each upload is verified at the target:
its size, and its content by the backend's checksum where that is free (an S3 ETag is the MD5 of the bytes it
received, or of its parts: computed here from the same read), else by reading the object back and hashing it.
Publishing again is idempotent: a file already at the target that verifies is not uploaded again, and a target that
holds a different cache under the key is refused, nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fsspec.callbacks import Callback

from featcache.cache.format import MANIFEST, MANIFEST_LIMIT, Manifest, is_cache_key, shard_path
from featcache.cache.install import same_manifests
from featcache.errors import CacheError, FeatcacheError, StorageError
from featcache.util.fileio import loads_json, printable, read_regular

CHUNK = 8 * 2**20
# Backends where a put is atomic (the object appears whole or not at all): small files are written in place;
# elsewhere they go to a temporary name first and are moved.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^[0-9a-f]{32}-([0-9]+)$")


@dataclass
class Uploaded:
    key: str
    url: str  # the cache's URL at the target
    bytes: int
    new: bool  # False: the target already held the same cache, complete
    sent: int  # bytes uploaded by this call (0 when every file was already there and verified)


class Target:
    """A remote store open for writing: its fsspec file system, root path and the URL to name in messages."""

    def __init__(self, url: str) -> None:
        from featcache.cache.remote import OFFLINE_ENV, filesystem, offline_env

        self.url = url.rstrip("/")
        if offline_env():
            raise StorageError(f"--to {printable(url)}: {OFFLINE_ENV} is set, and publishing to a URL needs the "
                               f"network; unset {OFFLINE_ENV} (or publish into a directory)")
        if self.url.split("://", 1)[0].lower() in ("http", "https"):
            raise StorageError(f"--to {printable(url)}: an HTTP(S) store is read-only; publish into the directory or "
                               "bucket the server serves, and readers use the URL")
        with self.guard("open"):
            self.fs, root = filesystem(self.url)
        self.root = root.rstrip("/")
        protocol = self.fs.protocol
        self.atomic_put = bool(OBJECT_STORES & set(protocol if isinstance(protocol, (tuple, list)) else [protocol]))

    def path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def where(self, *names: str) -> str:
        return printable("/".join([self.url, *names]))

    @contextmanager
    def guard(self, doing: str, *names: str) -> Iterator[None]:
        """A backend's error (network, credentials, a missing extra) as one line naming the URL."""
        try:
            yield
        except FeatcacheError:
            raise
        except ImportError as exc:
            raise StorageError(f"--to {self.where()}: {printable(str(exc))} (pip install 'featcache[s3]' for s3://)"
                               ) from None
        except Exception as exc:  # noqa: BLE001 - every fsspec backend raises its own types
            text = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, limit=300)
            raise StorageError(f"--to {self.where(*names)}: {doing} failed ({type(exc).__name__}: {text}); check "
                               "the URL, credentials (AWS_*), FEATCACHE_STORAGE_OPTIONS, and re-run") from None

    def size(self, *names: str) -> int | None:
        """The size of a file at the target, None when there is none."""
        with self.guard("stat", *names):
            try:
                info = self.fs.info(self.path(*names))
            except FileNotFoundError:
                return None
        return int(info["size"]) if info.get("type", "file") == "file" and info.get("size") is not None else None

    def read_small(self, limit: int, *names: str) -> bytes | None:
        size = self.size(*names)
        if size is None:
            return None
        if size > limit:
            raise CacheError(f"{self.where(*names)} is larger than {limit} bytes: not a featcache file; left as it is")
        with self.guard("read", *names):
            return bytes(self.fs.cat_file(self.path(*names)))

    def write_small(self, data: bytes, *names: str) -> None:
        """Write a small file whole: in place on an object store (a put is atomic there), else through a temporary
        name moved over it, so that a reader never sees half of it."""
        final = self.path(*names)
        with self.guard("write", *names):
            if self.atomic_put:
                self.fs.pipe_file(final, data)
                return
            tmp = self.path(*names[:-1], f".{names[-1]}.{secrets.token_hex(4)}.tmp")
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, final)


def publish_remote(entry_dir: Path, manifest: Manifest, url: str,
                   progress: Callable[[int], None] | None = None) -> Uploaded:
    """Upload the complete cache in ``entry_dir`` (its ``manifest``) into the remote store ``url``."""
    key = manifest.key
    if not is_cache_key(key):
        raise CacheError(f"{printable(key)} is not a cache key")
    target = Target(url)
    theirs = remote_manifest(target, key)
    if theirs is not None and not same_manifests(manifest, theirs):
        raise CacheError(f"{target.where(key)} already holds a different cache under the key {key}; left as it is")
    sent = 0
    for s in manifest.files():  # the shards and a projection file, before the manifest that names them
        sent += upload_file(target, shard_path(entry_dir, s), (key, s.file), s.bytes, s.sha256, progress)
    if theirs is None or sent:
        target.write_small(read_regular(entry_dir / MANIFEST, MANIFEST_LIMIT, whole=True), key, MANIFEST)
    add_to_index(target, key)
    return Uploaded(key, target.where(key), manifest.total_bytes(), new=theirs is None or sent > 0, sent=sent)


def remote_manifest(target: Target, key: str) -> Manifest | None:
    """The manifest the target holds under ``key`` (None: none there); one that cannot be read is refused."""
    data = target.read_small(MANIFEST_LIMIT, key, MANIFEST)
    if data is None:
        return None
    try:
        return Manifest.from_dict(loads_json(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{target.where(key, MANIFEST)} is not a manifest this featcache reads "
                         f"({printable(str(exc), limit=200)}); left as it is: remove it there or publish elsewhere"
                         ) from None


def digests(path: Path, part_size: int | None = None) -> tuple[str, str, str | None]:
    """sha256 and md5 of a local file in one read, and the S3 multipart ETag of its ``part_size`` parts."""
    sha, md5, parts = hashlib.sha256(), hashlib.md5(usedforsecurity=False), []
    part, filled = hashlib.md5(usedforsecurity=False), 0
    step = min(CHUNK, part_size) if part_size else CHUNK
    with open(path, "rb") as f:
        while chunk := f.read(step if not part_size else min(step, part_size - filled)):
            sha.update(chunk)
            md5.update(chunk)
            if part_size:
                part.update(chunk)
                filled += len(chunk)
                if filled == part_size:
                    parts.append(part.digest())
                    part, filled = hashlib.md5(usedforsecurity=False), 0
    if part_size and filled:
        parts.append(part.digest())
    multipart = (f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"
                 if part_size else None)
    return sha.hexdigest(), md5.hexdigest(), multipart


def upload_file(target: Target, local: Path, names: tuple[str, ...], size: int, sha256: str,
                progress: Callable[[int], None] | None) -> int:
    """Upload one file of the cache unless the target already holds it verified; the bytes sent."""
    try:
        sha, md5, _ = digests(local)
    except OSError as exc:
        raise CacheError(f"{printable(str(local))} cannot be read ({printable(str(exc))}); run `featcache cache "
                         "verify` on its cache") from None
    if sha != sha256:
        raise CacheError(f"{printable(str(local))} does not match its manifest (sha256); run `featcache cache verify` "
                         "on its cache")
    if not verified(target, local, names, size, sha, md5):
        with target.guard("upload", *names):
            target.fs.put_file(str(local), target.path(*names), callback=_Progress(progress))
        if not verified(target, local, names, size, sha, md5):
            raise CacheError(f"{target.where(*names)}: the uploaded copy of {printable(str(local))} does not verify "
                             "(size or checksum); no manifest was written: re-run `featcache cache publish`")
        return size
    if progress is not None:  # already there (the same cache, or a publish cut short): counted as done
        progress(size)
    return 0


def verified(target: Target, local: Path, names: tuple[str, ...], size: int, sha256: str, md5: str) -> bool:
    """Whether the target holds ``local``'s bytes at ``names``: its size, then the backend's checksum where it is an
    MD5 (an S3 ETag: of the whole object, or of its parts), else the object read back and hashed."""
    path = target.path(*names)
    with target.guard("stat", *names):
        try:
            target.fs.invalidate_cache(path)
            info = target.fs.info(path)
        except FileNotFoundError:
            return False
    if info.get("type", "file") != "file" or int(info.get("size") or -1) != size:
        return False
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    if _MD5.match(etag) and etag == md5:
        return True
    multipart = _MULTIPART.match(etag)
    part = part_size(target, names) if multipart else None
    if part is not None and digests(local, part)[2] == etag:
        return True
    return read_back(target, names) == sha256  # no checksum, a server-side encrypted ETag, or one that differs


def part_size(target: Target, names: tuple[str, ...]) -> int | None:
    """The size of an S3 multipart object's first part (all but the last have it), None off S3."""
    call = getattr(target.fs, "call_s3", None)
    if call is None:
        return None
    bucket, key, _ = target.fs.split_path(target.path(*names))
    with target.guard("stat", *names):
        size = call("head_object", Bucket=bucket, Key=key, PartNumber=1).get("ContentLength")
    return int(size) if size else None


def read_back(target: Target, names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    with target.guard("read back", *names), target.fs.open(target.path(*names), "rb", block_size=CHUNK) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def index_bytes(keys: set[str] | list[str]) -> bytes:
    """A store's index.json: the keys it holds (a listing hint for stores without a listing, HTTP)."""
    from featcache.cache.remote import INDEX_VERSION

    return (json.dumps({"featcache_index": INDEX_VERSION, "keys": sorted(set(keys))}, indent=1) + "\n").encode()


def index_keys(data: bytes | None, where: str) -> set[str]:
    """The keys of an index.json (none from one that is not featcache's: it is rewritten whole); one written by a
    newer featcache is refused rather than overwritten."""
    from featcache.cache.remote import INDEX_VERSION

    try:
        doc = loads_json(data) if data else None
    except (ValueError, UnicodeDecodeError):
        return set()
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return set()
    version = doc.get("featcache_index")
    if isinstance(version, int) and version > INDEX_VERSION:
        raise CacheError(f"{where} was written by a newer featcache (index version {version}); upgrade featcache to "
                         "publish there")
    return {k for k in doc["keys"] if isinstance(k, str) and is_cache_key(k)}


def add_to_index(target: Target, key: str) -> None:
    """Add ``key`` to the target's index.json, after its manifest (two publishers racing may drop the other's key
    from the hint, never data: the next publish adds it back)."""
    from featcache.cache.remote import INDEX, INDEX_LIMIT

    keys = index_keys(target.read_small(INDEX_LIMIT, INDEX), target.where(INDEX))
    if key not in keys:
        target.write_small(index_bytes(keys | {key}), INDEX)


class _Progress(Callback):
    """An fsspec callback that forwards each upload's bytes to a reporter's ``advance``."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        super().__init__()
        self.progress = progress

    def relative_update(self, inc: int = 1) -> None:
        if self.progress is not None:
            self.progress(inc)
