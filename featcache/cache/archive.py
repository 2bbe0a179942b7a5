"""`featcache cache export KEY -o FILE` and `featcache cache import FILE`: one file that carries a cache elsewhere.

The archive is an uncompressed POSIX tar (a pax header only for a name over 100 characters), so `tar tf` lists it:

    featcache-archive.json      the index: {"format": "featcache-archive", "version": 1, "key": KEY, "featcache",
                                "created", "members": [{"name", "bytes", "sha256"}, ...]}: KEY/manifest.json
                                first, then every shard and a projected cache's projection.h5, in the
                                order they follow
    KEY/manifest.json
    KEY/data-00000.h5 ...

Export hashes every shard as it streams it and refuses a shard that does not match its manifest (nothing is left
under -o: the archive is written to FILE.tmp and renamed once complete and fsynced). Import trusts nothing in the
file, which may come from someone else: members must be regular files named exactly as the index lists them, in
its order, with its sizes and sha256; the manifest must be a complete cache whose key is the hash of its identity
and whose shards are the index's. Everything is written into a private incoming directory of the target store and
renamed into place once verified (featcache.cache.install), so a refused, truncated or killed import leaves the key
invisible. What an archive proves is what a shared store proves: the cache is whole and self-consistent, not who
made it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from featcache import __version__
from featcache.cache.format import (
    MANIFEST,
    PROJECTION_FILE,
    Manifest,
    VersionError,
    canonical_json,
    is_cache_key,
    parse_shard_name,
    shard_path,
)
from featcache.cache.hashpipe import HashPipe, fsync_path, start_writeback, write_all
from featcache.cache.install import check_complete, discard, install, key_matches_identity, new_incoming, share_file
from featcache.cache.leases import Lease
from featcache.cache.store import CacheStore
from featcache.cache.tarstream import BLOCK, RECORD, TarReader, header, padding
from featcache.errors import CacheError, StorageError
from featcache.util.fileio import exclusive_temp, loads_json, printable, unwritable

INDEX_NAME = "featcache-archive.json"
ARCHIVE_FORMAT = "featcache-archive"
ARCHIVE_VERSION = 1
MAX_JSON = 64 * 2**20  # an index or a manifest is read into memory: refuse one larger than any real cache's
# The manifest and every shard file: far more than a real cache has (ImageNet at the default --shard-rows is ~320
# data shards), far fewer than an index of MAX_JSON could list. docs/cache-format.md names it.
MAX_MEMBERS = 65_536
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INDEX_FIELDS = {"format", "version", "key", "featcache", "created", "members"}


@dataclass
class Moved:
    key: str
    path: Path | None  # the archive written (export), the cache's directory (import); None: stdout
    bytes: int
    new: bool = True  # import: False when the store already held the same cache


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _settle(pending: list, fail: Callable[[str], Exception], wait: bool) -> dict[str, str]:
    """Compare the digests of ``pending`` [(name, expected sha256, Digest)] that are done (all of them when
    ``wait``) and drop them from it; {name: sha256} of those compared."""
    out = {}
    for item in [p for p in pending if wait or p[2].done()]:
        name, sha, digest = item
        if digest.hexdigest() != sha:
            raise fail(name)
        out[name] = sha
        pending.remove(item)
    return out


# -- export -------------------------------------------------------------------------------------------------------


def export_cache(store: CacheStore, key: str, output: Path | None,
                 progress: Callable[[int], None] | None = None) -> Moved:
    """Write cache ``key`` (found in ``store``'s stack) as one archive at ``output`` (None: stdout)."""
    entry = store.locate(key)
    with Lease([entry], what="cache export"):  # `cache rm` and `cache gc` leave it alone meanwhile
        data, m = _source_manifest(entry.directory, entry.key)
        if output is not None:
            return _export_to_file(entry.directory, m, data, Path(output).expanduser(), progress)
        if sys.stdout.isatty():
            raise CacheError("-o -: refusing to write a binary archive to a terminal; redirect it (> FILE, | ssh ...)")
        stream = sys.stdout.buffer
        size = _write_archive(stream.write, entry.directory, m, data, progress)
        stream.flush()
        return Moved(m.key, None, size)


def _export_to_file(directory: Path, m: Manifest, data: bytes, output: Path,
                    progress: Callable[[int], None] | None) -> Moved:
    """Written to a new temporary file created exclusively beside FILE, fsynced and renamed: never half an archive
    under the name asked for, never written through a link planted beside it, and a FIFO, device, link or directory
    at FILE is refused rather than replaced (fileio.exclusive_temp)."""
    if _is_dir(output):
        raise StorageError(f"-o {printable(str(output))} is a directory; name the archive file to write (e.g. "
                           f"{printable(str(output))}/{m.key}.tar)")
    with exclusive_temp(output, flag="-o", what="directory of -o") as f:
        # unbuffered (the file object's raw FileIO): start_writeback sees every byte written so far on disk's way
        size = _write_archive(f.raw.write, directory, m, data, progress, fd=f.fileno())
    return Moved(m.key, output, size)


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a directory itself (not a link to one); a path that cannot be looked at (a name too long)
    is not: writing it then says why, in one line."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _source_manifest(directory: Path, key: str) -> tuple[bytes, Manifest]:
    """The manifest's bytes, and the manifest parsed from those very bytes (what is shipped is what was checked)."""
    try:
        data = (directory / MANIFEST).read_bytes()
        m = Manifest.from_dict(loads_json(data))
    except FileNotFoundError:
        raise CacheError(f"cache {key} has no manifest.json; only a complete cache can be exported") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"cache {key}: its manifest cannot be read ({exc}); run `featcache cache verify {key}`") \
            from None
    if m.key != key:  # a cache copied under another key: its rows are not what the key names
        raise CacheError(f"cache {key} holds the manifest of cache {m.key}; it is refused: remove it with `featcache "
                         f"cache rm {key}`")
    if not m.complete:
        raise CacheError(f"cache {key} is not complete ({len(m.shards)}/{len(m.expected_shards())} shards); only a "
                         "complete cache can be exported: finish its extract first")
    if len(m.files()) + 1 > MAX_MEMBERS:  # what import would refuse is not written
        raise CacheError(f"cache {key} has {len(m.files()):,} shard files; an archive holds at most {MAX_MEMBERS:,} "
                         "members (the archive member limit, docs/cache-format.md): re-extract it with a larger "
                         "--shard-rows, or share it through a store (`featcache cache publish`)")
    return data, m


def _write_archive(raw_write: Callable, directory: Path, m: Manifest, manifest: bytes,
                   progress: Callable[[int], None] | None, fd: int | None = None) -> int:
    """The archive, through ``raw_write``; every shard hashed as it is copied; the disk starts writing each shard of
    the file ``fd`` as soon as it is copied. Returns the bytes written."""
    written = 0
    full = write_all(raw_write)

    def write(data) -> None:
        nonlocal written
        full(data)
        written += len(data)

    members = [(f"{m.key}/{MANIFEST}", len(manifest), _sha256(manifest))]
    members += [(f"{m.key}/{s.file}", s.bytes, s.sha256) for s in m.files()]  # shards, then a projection file
    index = {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "key": m.key, "featcache": __version__,
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "members": [{"name": n, "bytes": b, "sha256": h} for n, b, h in members]}
    pending: list = []

    def fail(file: str) -> CacheError:
        return CacheError(f"cache {m.key}: shard {file} does not match its manifest (sha256); nothing was exported: "
                          f"run `featcache cache verify {m.key}`, then re-extract it")

    with HashPipe(progress=progress) as pipe:
        for name, data in ((INDEX_NAME, json.dumps(index, indent=1).encode() + b"\n"), (members[0][0], manifest)):
            write(header(name, len(data), time.time()))
            pipe.copy_bytes(data, write)
            write(bytes(padding(len(data))))
        for s in m.files():
            start = written
            pending.append((s.file, s.sha256, _copy_shard(pipe, write, directory, m.key, s)))
            _settle(pending, fail, wait=False)  # a corrupt shard stops the export early
            if fd is not None:
                start_writeback(fd, start, written - start)
        write(bytes(2 * BLOCK))
        write(bytes(-written % RECORD))
        _settle(pending, fail, wait=True)
    return written


def _copy_shard(pipe: HashPipe, write: Callable, directory: Path, key: str, s):
    path = shard_path(directory, s)
    try:
        f = open(path, "rb", buffering=0)
    except OSError as exc:
        raise CacheError(f"cache {key}: shard {s.file} cannot be read ({exc.strerror or exc}); run `featcache cache "
                         f"verify {key}`") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != s.bytes:
            raise CacheError(f"cache {key}: shard {s.file} is {st.st_size} bytes, its manifest says {s.bytes}; run "
                             f"`featcache cache verify {key}` (nothing was exported)")
        write(header(f"{key}/{s.file}", s.bytes, st.st_mtime))

        def read_into(buf: memoryview) -> int:
            try:
                return f.readinto(buf) or 0
            except OSError as exc:
                raise CacheError(f"cache {key}: shard {s.file} cannot be read ({exc.strerror or exc})") from None

        digest, n = pipe.copy(read_into, write, s.bytes)
    if n != s.bytes:
        raise CacheError(f"cache {key}: shard {s.file} shrank while it was exported; run `featcache cache verify "
                         f"{key}`")
    write(bytes(padding(s.bytes)))
    return digest


# -- import -------------------------------------------------------------------------------------------------------


def import_archive(source: Path | None, target: Path, progress: Callable[[int], None] | None = None) -> Moved:
    """Import the archive ``source`` (None: stdin) into the store directory ``target``."""
    where = "<stdin>" if source is None else str(source)
    target = Path(target).expanduser()
    try:
        is_dir = stat.S_ISDIR(os.stat(target).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = False
    except OSError as exc:  # a name no file system takes, no permission to look
        raise StorageError(f"--to {printable(str(target))}: cannot be used as a store ({exc.strerror or exc}); name "
                           "another directory") from None
    if not is_dir:
        raise StorageError(f"--to {target}: not a directory; create the store first (mkdir, and chgrp/chmod g+s for "
                           "a group)")
    if source is None:
        return _import(TarReader(sys.stdin.buffer, where), target, progress)
    try:
        f = open(Path(source).expanduser(), "rb", buffering=0)
    except OSError as exc:
        raise CacheError(f"archive {where} cannot be read ({exc.strerror or exc}); name a file `featcache cache "
                         "export` wrote") from None
    with f:
        return _import(TarReader(f, where), target, progress)


def _import(reader: TarReader, target: Path, progress: Callable[[int], None] | None) -> Moved:
    key, members = _read_index(reader)
    manifest, m = _read_manifest(reader, key, members)
    dest = target / key
    size = m.total_bytes() + len(manifest)
    if dest.exists():
        if _same_cache(dest, m):
            return Moved(key, dest, size, new=False)
        raise CacheError(f"{dest} already holds a different cache under the key {key}; it was left as it is (check "
                         f"it with `featcache cache verify {key}`; nothing was imported)")
    incoming = new_incoming(target, key)
    try:
        _create(incoming / MANIFEST, target, lambda write: write(memoryview(manifest)))
        hashed = _read_shards(reader, incoming, members[1:], target, progress)
        reader.expect_end()
        for path in incoming.iterdir():  # every file on disk before the rename makes it visible
            _fsync(path, target)
        check_complete(incoming, key, hashed=hashed)
        new = install(incoming, target, key)
    except BaseException:
        discard(incoming)
        raise
    return Moved(key, dest, size, new)


def _same_cache(directory: Path, m: Manifest) -> bool:
    """Whether ``directory`` holds the cache ``m`` describes (its identity and every shard's sha256)."""
    try:
        other = Manifest.load(directory)
    except CacheError:
        return False
    return (canonical_json(other.identity) == canonical_json(m.identity)
            and sorted((s.file, s.sha256) for s in other.files()) == sorted((s.file, s.sha256) for s in m.files()))


def _read_index(reader: TarReader) -> tuple[str, list[tuple[str, int, str]]]:
    got = reader.next_member(INDEX_NAME)
    if got is None or got[0] != INDEX_NAME:
        raise reader.refused(f"it is not a featcache archive (its first member is not {INDEX_NAME})")
    if got[1] > MAX_JSON:
        raise reader.refused(f"its index is {got[1]:,} bytes, more than any cache needs")
    data = reader.read_exact(got[1], "its index")
    reader.read_exact(padding(got[1]), "its index")
    try:
        index = loads_json(data)
    except ValueError:
        raise reader.refused("its index is not JSON") from None
    return _check_index(index, reader)


def _check_index(index: object, reader: TarReader) -> tuple[str, list[tuple[str, int, str]]]:
    if not isinstance(index, dict) or index.get("format") != ARCHIVE_FORMAT:
        raise reader.refused(f"{INDEX_NAME} is not a featcache archive index")
    version = index.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > ARCHIVE_VERSION:
        raise reader.refused(f"it was written by a newer featcache (archive version {version}; this one reads "
                             f"{ARCHIVE_VERSION}): upgrade featcache to import it")
    if version != ARCHIVE_VERSION or set(index) - _INDEX_FIELDS:
        raise reader.refused(f"its index has version {version!r} or fields featcache does not write")
    key, entries = index.get("key"), index.get("members")
    if not isinstance(key, str) or not is_cache_key(key):
        raise reader.refused(f"its index names no valid cache key ({key!r})")
    if not isinstance(entries, list) or not entries:
        raise reader.refused("its index lists no members")
    if len(entries) > MAX_MEMBERS:
        raise reader.refused(f"its index lists {len(entries):,} members, more than the {MAX_MEMBERS:,} an archive may "
                             "hold (the archive member limit, docs/cache-format.md)")
    members: list[tuple[str, int, str]] = []
    seen: set[str] = set()  # every check here is linear: an index may list tens of thousands of members
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"name", "bytes", "sha256"}:
            raise reader.refused(f"its index entry {i} is not {{name, bytes, sha256}}")
        name, size, sha = e["name"], e["bytes"], e["sha256"]
        prefix, _, file = name.partition("/") if isinstance(name, str) else ("", "", "")
        wanted = file == MANIFEST if i == 0 else parse_shard_name(file) is not None or file == PROJECTION_FILE
        if prefix != key or not wanted:
            raise reader.refused(f"its index lists {name!r}, which is not " +
                                 (f"{key}/{MANIFEST} (the first member)" if i == 0 else f"a shard of {key}"))
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not isinstance(sha, str) \
                or not _SHA256.match(sha):
            raise reader.refused(f"its index gives {name} no valid size and sha256")
        if name in seen:
            raise reader.refused(f"its index lists {name} twice")
        seen.add(name)
        members.append((name, size, sha))
    return key, members


def _read_manifest(reader: TarReader, key: str, members: list[tuple[str, int, str]]) -> tuple[bytes, Manifest]:
    """The archive's manifest, checked against the index before any shard is read: a complete cache of ``key``
    whose key is the hash of its identity and whose shards are exactly the index's."""
    name, size, sha = members[0]
    if size > MAX_JSON:
        raise reader.refused(f"its manifest is {size:,} bytes, more than any cache needs")
    reader.expect_member(name, size)
    data = reader.read_exact(size, name)
    reader.read_exact(padding(size), name)
    if _sha256(data) != sha:
        raise reader.refused(f"{name} does not match the sha256 its index records (damaged or altered)")
    try:
        m = Manifest.from_dict(loads_json(data))
    except VersionError as exc:
        raise reader.refused(f"its cache was written by a newer featcache ({exc}): upgrade featcache") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise reader.refused(f"its manifest is not one featcache writes ({exc})") from None
    if m.key != key:
        raise reader.refused(f"its manifest names the key {m.key}, its index {key}")
    if not key_matches_identity(m):
        raise reader.refused(f"the key {key} is not the hash of the identity its manifest records (the manifest was "
                             "edited)")
    if not m.complete or len(m.shards) != len(m.expected_shards()):
        raise reader.refused("its manifest is of an incomplete cache")
    if {(f"{key}/{s.file}", s.bytes, s.sha256) for s in m.files()} != set(members[1:]):
        raise reader.refused("its index and its manifest list different shards (sizes or sha256)")
    return data, m


def _read_shards(reader: TarReader, incoming: Path, members: list[tuple[str, int, str]], store: Path,
                 progress: Callable[[int], None] | None) -> dict[str, str]:
    """Stream every shard member into ``incoming``, each hashed as it is written; {file: sha256} once all match."""
    pending: list = []
    hashed: dict[str, str] = {}

    def fail(name: str) -> CacheError:
        return reader.refused(f"{name} does not match the sha256 its index records (a flipped byte in transit, or an "
                              "altered archive)")

    with HashPipe(progress=progress) as pipe:
        for name, size, sha in members:
            reader.expect_member(name, size)
            digest, n = _create(incoming / name.partition("/")[2], store,
                                lambda write: pipe.copy(reader.readinto, write, size))  # noqa: B023 (called now)
            if n != size:
                raise reader.truncated(name)
            reader.read_exact(padding(size), name)
            pending.append((name, sha, digest))
            hashed.update(_settle(pending, fail, wait=False))  # a tampered shard stops the import early
        hashed.update(_settle(pending, fail, wait=True))
    return {name.partition("/")[2]: sha for name, sha in hashed.items()}


def _create(path: Path, store: Path, fill: Callable):
    """A new file of the incoming directory, filled by ``fill(write)``, its write-back to disk started; write
    errors name the store."""
    try:
        f = open(path, "xb", buffering=0)
    except OSError as exc:
        raise unwritable(store, exc, "store") from None
    full = write_all(f.write)

    def write(data) -> None:
        try:
            full(data)
        except OSError as exc:
            raise unwritable(store, exc, "store") from None

    with f:
        result = fill(write)
        start_writeback(f.fileno())
    share_file(path, store)
    return result


def _fsync(path: Path, store: Path) -> None:
    try:
        fsync_path(path)
    except OSError as exc:
        raise unwritable(store, exc, "store") from None
