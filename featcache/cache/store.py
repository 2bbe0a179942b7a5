"""The cache store: where caches live, how they are found, listed, locked and removed.

A store is a directory of caches, each a directory named by its key. featcache searches a stack of them:

    personal    $FEATCACHE_HOME (default ~/.cache/featcache) or --cache-dir: the one extract writes into
    shared      every --store DIR, then every directory of $FEATCACHE_PATH (a:b:c), in that order: read-only to
                readers (a shared store may be mounted read-only; nothing is written there but by `cache publish`,
                `cache import --to` and an extract pointed at it with --cache-dir)
    remote      a URL among them (https://host/dir, s3://bucket/prefix: featcache.cache.remote), searched after the
                local stores; read-only to every command but `cache publish`. A cache found only there is pulled into
                the personal store when it is opened (featcache.cache.pull); listing reads its manifests only

Keys can be abbreviated to any unique prefix, as git does with commit hashes. A key held by two stores must be the same
cache (the same identity and the same shard checksums); otherwise the lookup is an error, never a silent pick.
Names starting with ``.`` in a store are featcache's own bookkeeping (caches being written or published, leases,
usage records) and are never taken for caches.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from featcache.cache.format import (
    LOCK,
    MANIFEST,
    TMP_SUFFIX,
    Manifest,
    canonical_json,
    is_cache_key,
    parse_shard_name,
)
from featcache.cache.leases import remove_unleased
from featcache.cache.reader import FeatureCache
from featcache.cache.remote import RemoteStore, offline_env, split_path, store_url
from featcache.cache.requests import REQUESTS_DIR
from featcache.cache.usage import check_writable, record_use
from featcache.cache.verify import ShardCheck, VerifyReport, verify_directory  # noqa: F401 - re-exported
from featcache.errors import (
    CacheError,
    CacheIdentityError,
    CacheLockedError,
    CacheVersionError,
    RemoteError,
    StorageError,
)
from featcache.specs import TransformSpec
from featcache.util.fileio import printable
from featcache.util.locks import DirLock

if TYPE_CHECKING:
    from featcache.util.progress import Reporter

PATH_ENV = "FEATCACHE_PATH"  # shared stores searched after the personal one, separated like PATH


def default_cache_dir() -> Path:
    env = os.environ.get("FEATCACHE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featcache"


def shared_from_env() -> list[str]:
    """The stores of $FEATCACHE_PATH, in order (empty entries skipped; a URL's own colons do not separate)."""
    return split_path(os.environ.get(PATH_ENV, ""))


@dataclass
class CacheEntry:
    key: str
    directory: Path
    manifest: Manifest | None
    error: str | None = None

    orphaned: bool = False  # shards or temp files without a manifest (the manifest was lost)
    newer: bool = False  # written by a newer featcache (a format this one does not read; left as it is)
    foreign: bool = False  # its manifest is not of the key its name says (a copy under another key, an edit)
    url: str | None = None  # the remote store holding it (``directory`` is then where a pull puts it)

    @property
    def where(self) -> str:
        """The store, for messages: its directory, or its URL."""
        return self.url or str(self.store)

    @property
    def store(self) -> Path:
        """The store (directory) holding this cache."""
        return self.directory.parent

    @property
    def status(self) -> str:
        if self.orphaned:
            return "orphaned"
        if self.newer:
            return "newer format"
        if self.foreign:
            return "foreign"
        if self.manifest is None:
            return "broken"
        if self.manifest.complete:
            return "complete"
        return f"partial {len(self.manifest.shards)}/{len(self.manifest.expected_shards())}"


class CacheLock(DirLock):
    """Exclusive advisory lock on ``<cache dir>/.lock``; one writer (extract, rm) per cache at a time."""

    error = CacheLockedError

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, what="cache")

    def acquire(self, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> "CacheLock":
        if self.path.parent.is_symlink():  # a link planted in a store: the lock would be written where it points
            raise StorageError(f"{printable(str(self.path.parent))} is a symbolic link, not a directory of the store; "
                               "nothing is written through it: remove it, then re-run")
        super().acquire(wait, on_wait)
        return self


class CacheStore:
    """The stack of stores: ``root`` (personal, written by extract) then ``shared`` (each ``--store``), then
    $FEATCACHE_PATH. ``shared_env=False`` leaves the environment's stores out (a command that works on one store)."""

    def __init__(self, root: str | Path | None = None, shared: Sequence[str | Path] | None = None,
                 shared_env: bool = True, offline: bool | None = None, reporter: Reporter | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        _check_dir(self.root, "--cache-dir" if root is not None else
                   "FEATCACHE_HOME" if os.environ.get("FEATCACHE_HOME") else "the default store")
        self.layers: list[Path] = [self.root]
        self.remotes: list[RemoteStore] = []  # URLs: searched after the local layers (featcache.cache.remote)
        for source, entries in (("--store", shared or []), (PATH_ENV, shared_from_env() if shared_env else [])):
            for p in entries:
                url = store_url(p)
                if url is not None:
                    if all(r.url != url for r in self.remotes):
                        self.remotes.append(RemoteStore(url))
                    continue
                p = Path(p).expanduser()
                _check_dir(p, source)
                if not any(_same_dir(p, q) for q in self.layers):
                    self.layers.append(p)
        self.offline = offline_env() if offline is None else offline  # no remote store is read
        self.reporter = reporter  # shows a pull's progress
        self._listed: dict[str, list[CacheEntry]] = {}  # a remote store's entries, listed once
        self.unreachable: dict[str, str] = {}  # URL -> why it could not be listed (its caches are left out)

    @property
    def shared(self) -> list[Path]:
        return self.layers[1:]

    def path(self, key: str) -> Path:
        """Where ``key`` is (or would be) in the personal store: the one place extract writes."""
        return self.root / key

    def describe(self) -> str:
        """The stores searched, for messages: ``/home/a/.cache/featcache (+ /shared/x, /shared/y (missing))``."""
        extra = [f"{p}{'' if p.is_dir() else ' (missing)'}" for p in self.shared]
        extra += [f"{r.url}{' (offline: not read)' if self.offline else ''}" for r in self.remotes]
        return f"{self.root}" + (f" (+ {', '.join(extra)})" if extra else "")

    # -- listing and lookup -----------------------------------------------------------------------------------
    def entries(self, layers: Sequence[Path] | None = None) -> list[CacheEntry]:
        """Every cache directory of every store (a key held by two stores is listed twice, store by store); remote
        stores (all layers but ``layers``'s) listed by their manifests."""
        out = []
        for layer in layers if layers is not None else self.layers:
            out += _layer_entries(layer)
        if layers is None and not self.offline:
            for r in self.remotes:
                if r.url not in self._listed:
                    try:
                        self._listed[r.url] = _remote_entries(r, r.keys(), self.root)
                    except RemoteError as exc:  # a server down leaves the local stores usable, as said by ls
                        self._listed[r.url], self.unreachable[r.url] = [], str(exc)
                out += self._listed[r.url]
        return out

    def strays(self, layers: Sequence[Path] | None = None) -> list[Path]:
        """What the stores hold under names that are not cache keys (another user's directory named with a newline or
        a terminal escape, say): never read, looked up or listed as a cache; `cache ls` names them apart."""
        out = []
        for layer in layers if layers is not None else self.layers:
            try:
                names = sorted(os.listdir(layer))
            except OSError:
                continue
            out += [layer / n for n in names if not n.startswith(".") and n != REQUESTS_DIR and not is_cache_key(n)]
        return out

    def copies(self, key: str) -> list[CacheEntry]:
        """The directories named ``key`` in the stores, in search order; where none has it, the remote stores' copies
        (one manifest read each, nothing listed: an extract or a recipe then reuses a published cache)."""
        if not is_cache_key(key):
            return []
        out = []
        for layer in self.layers:
            d = layer / key
            if (d / MANIFEST).is_file() or (key and _holds_cache_files(d)):
                out += [e for e in _layer_entries(layer, only=key)]
        for r in self.remotes if not (out or self.offline) else []:
            try:
                out += _remote_entries(r, [key], self.root)
            except RemoteError as exc:  # a lookup that finds nothing names the store it could not read
                self.unreachable[r.url] = str(exc)
        return out

    def locate(self, key: str, pull: bool = True) -> CacheEntry:
        """The entry for ``key`` or a unique prefix of one, searched store by store (orphaned directories included,
        so that `rm` can find them). A key whose copies in two stores differ is an error. A cache found only in a
        remote store is pulled into the personal store (``pull``), else returned as the remote's entry."""
        copies = self.copies(key) if key and not key.startswith(".") else []
        if not copies:
            keys = sorted({e.key for e in self.entries()})
            matches = [k for k in keys if k.startswith(key)]
            if not matches:
                if self.offline and self.remotes:
                    raise CacheError(offline_missing(key, self))
                raise CacheError(
                    f"no cache {printable(repr(key))} in {printable(self.describe())}{self.skipped_note()}; list "
                    "caches with `featcache cache ls`" + (" (or pass --cache-dir / --store)" if not keys else "")
                )
            if len(matches) > 1:
                raise CacheError(f"cache key prefix {printable(repr(key))} is ambiguous ({', '.join(matches[:4])}); "
                                 "give more characters")
            copies = self.copies(matches[0])
        entry = self._one(copies)
        return self.local(entry) if pull else entry

    def local(self, entry: CacheEntry) -> CacheEntry:
        """``entry`` in a local store: a remote one pulled into the personal store first (verified, resumable)."""
        if entry.url is None:
            return entry
        if self.offline:
            raise CacheError(offline_missing(entry.key, self))
        from featcache.cache.pull import pull

        remote = next(r for r in self.remotes if r.url == entry.url)
        pulled = pull(remote, entry.key, self.root, self.reporter)
        return CacheEntry(entry.key, pulled.directory, Manifest.load(pulled.directory))

    def resolve(self, key: str) -> str:
        """The full key for ``key`` or a unique prefix of one (nothing pulled)."""
        return self.locate(key, pull=False).key

    def _one(self, copies: list[CacheEntry]) -> CacheEntry:
        """The first copy, after checking that every complete copy is the same cache."""
        complete = [e for e in copies if e.manifest is not None and e.manifest.complete]
        if len(complete) > 1:
            first = complete[0]
            for other in complete[1:]:
                why = _differs(first.manifest, other.manifest)  # type: ignore[arg-type]  # complete: a manifest
                if why:
                    raise CacheError(
                        f"cache {first.key} is in {first.where} and in {other.where} with different contents ({why}); "
                        f"one is not the cache its key names: remove one (`featcache cache rm {first.key} "
                        "--cache-dir STORE`) or leave its store out of --store / FEATCACHE_PATH")
        return complete[0] if complete else copies[0]

    def skipped_note(self) -> str:
        """Words on the caches a lookup could not consider (a newer format, a broken manifest), for "no cache"
        errors: '' when there are none."""
        skipped = [e for e in self.entries() if e.manifest is None and not e.orphaned]
        down = "".join(f" ({printable(why)})" for why in self.unreachable.values())
        if not skipped:
            return down
        newer = [e for e in skipped if e.newer]
        foreign = [e for e in skipped if e.foreign]
        what = (f"{len(newer)} written by a newer featcache, e.g. {newer[0].key}" if newer else
                f"{len(foreign)} whose manifest is not of its key, e.g. {foreign[0].key}" if foreign else
                f"{len(skipped)} with an unreadable manifest, e.g. {skipped[0].key}")
        return f" (skipped {len(skipped)} cache(s) it cannot read: {what}; see `featcache cache ls`){down}"

    def open(self, key: str) -> FeatureCache:
        entry = self.locate(key)
        if not (entry.directory / MANIFEST).is_file():
            raise CacheError(f"cache {entry.key} has lost its manifest.json, so its shards cannot be trusted; remove "
                             f"it with `featcache cache rm {entry.key}` and extract again")
        return FeatureCache(entry.directory)

    def find(
        self,
        *,
        teacher: str | None = None,
        dataset: str | None = None,
        split: str | None = None,
        dataset_identity: dict[str, Any] | None = None,
        transform: TransformSpec | None = None,
        complete: bool = True,
    ) -> list[CacheEntry]:
        """Caches matching every given criterion (None = any), one entry per key (the first store's, after checking
        that the copies agree)."""
        by_key: dict[str, list[CacheEntry]] = {}
        for e in self.entries():
            m = e.manifest
            if m is None or (complete and not m.complete):
                continue
            if teacher is not None and m.teacher.name != teacher:
                continue
            if dataset is not None and m.dataset.get("name") != dataset:
                continue
            if split is not None and m.dataset.get("split") != split:
                continue
            if dataset_identity is not None and m.identity.get("dataset") != dataset_identity:
                continue  # the identity's: checked against the key (the manifest's own copy agrees with it)
            if transform is not None and m.transform != transform:
                continue
            by_key.setdefault(e.key, []).append(e)
        return [self._one(copies) for copies in by_key.values()]

    # -- maintenance ------------------------------------------------------------------------------------------
    def remove(self, key: str) -> int:
        """Delete a cache of the personal store (after taking its lock, so a running extract is never pulled from
        under, and unless a reader leases it); returns bytes. A cache of a shared store is removed by pointing
        --cache-dir at that store."""
        entry = self.locate(key, pull=False)
        if entry.url is not None:
            raise CacheError(f"cache {entry.key} is in the remote store {entry.url}, read-only to featcache; it is "
                             "removed where it is stored")
        if not _same_dir(entry.store, self.root):
            raise CacheError(f"cache {entry.key} is in the shared store {entry.store}, not in {self.root}; to remove "
                             f"it there, run `featcache cache rm {entry.key} --cache-dir {entry.store}`")
        directory = entry.directory
        check_writable(self.root, f"cannot remove cache {entry.key}")  # root too: a store marked read-only is left
        if directory.is_symlink():  # a link is removed as a link: no lock written into what it points to
            return remove_unleased(directory)
        try:
            lock = CacheLock(directory).acquire(wait=False)
        except CacheLockedError as exc:
            raise exc.with_hint("let its extract finish (or stop it), then remove the cache") from None
        try:
            # Refused while a reader leases it (CacheInUseError); the protocol against a reader starting now, and
            # the manifest deleted first, are in leases.py.
            return remove_unleased(directory)
        finally:
            lock.release()

    def verify(self, key: str, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Recompute every shard's checksum and check its shapes against the manifest."""
        return verify_directory(self.locate(key).directory, progress=progress)


def _check_dir(path: Path, source: str) -> None:
    if path.exists() and not path.is_dir():
        raise StorageError(f"{source} {path} is a file, not a directory: point {source} at a directory (the cache "
                           "store)")


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _layer_entries(layer: Path, only: str | None = None) -> list[CacheEntry]:
    try:
        names = [only] if only is not None else sorted(os.listdir(layer))
    except OSError:  # a store that does not exist (yet) or cannot be listed holds nothing to read
        return []
    out = []
    for name in names:
        d = layer / name
        if name.startswith(".") or name == REQUESTS_DIR or not is_cache_key(name) or not d.is_dir():
            continue  # bookkeeping, or not a cache's name (CacheStore.strays)
        if not (d / MANIFEST).is_file():
            if _holds_cache_files(d):
                out.append(CacheEntry(d.name, d, None, "no manifest.json: its shards cannot be read; remove "
                                      f"them with `featcache cache rm {d.name}`", orphaned=True))
            continue
        out.append(_entry(d.name, d, functools.partial(Manifest.load, d)))
    return out


def _entry(key: str, directory: Path, load: Callable[[], Manifest], url: str | None = None) -> CacheEntry:
    """The entry of a cache whose manifest ``load`` reads; a manifest it cannot trust is an entry saying why."""
    try:
        return CacheEntry(key, directory, load(), url=url)
    except CacheVersionError as exc:
        return CacheEntry(key, directory, None, str(exc), newer=True, url=url)
    except CacheIdentityError as exc:
        return CacheEntry(key, directory, None, str(exc), foreign=True, url=url)
    except CacheError as exc:
        return CacheEntry(key, directory, None, str(exc), url=url)


def _remote_entries(remote: RemoteStore, keys: Sequence[str], root: Path) -> list[CacheEntry]:
    """The entries of ``keys`` in a remote store, each from its manifest alone (read in threads: one request each);
    a listed key whose manifest is gone is left out. ``directory``: where a pull would put it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        manifests = list(pool.map(remote.manifest_bytes, keys))
    return [_entry(k, root / k, functools.partial(remote.manifest, k, data), url=remote.url)
            for k, data in zip(keys, manifests, strict=True) if data is not None]


def offline_missing(key: str, store: CacheStore) -> str:
    """The one line for a cache that only a remote store could hold, with the network off."""
    urls = ", ".join(r.url for r in store.remotes)
    return (f"cache {printable(repr(key))} is not in the local stores ({printable(str(store.root))}"
            f"{', ' + ', '.join(map(str, store.shared)) if store.shared else ''}) and offline mode "
            f"(--offline / FEATCACHE_OFFLINE=1) reads no remote store ({printable(urls)}): fetch it first with "
            f"`featcache cache pull {printable(key)} --store {printable(store.remotes[0].url)}` where the network "
            "is reachable, then re-run")


def _differs(a: Manifest, b: Manifest) -> str | None:
    """Why two manifests of one key are not the same cache (None when they are)."""
    if canonical_json(a.identity) != canonical_json(b.identity):
        return "their identities differ"
    theirs = {s.file: s.sha256 for s in b.files()}
    for s in a.files():
        if theirs.get(s.file) != s.sha256:
            return f"shard {s.file} differs"
    if len(theirs) != len(a.files()):
        return "their shards differ"
    return None


def _holds_cache_files(directory: Path) -> bool:
    """Whether a directory without a manifest holds what an extract leaves: shards, temp files, a lock."""
    try:
        return directory.is_dir() and any(
            parse_shard_name(p.name.removesuffix(TMP_SUFFIX)) is not None or p.name in (LOCK, MANIFEST + TMP_SUFFIX)
            for p in directory.iterdir()
        )
    except OSError:
        return False


def open_cache(key_or_path: str | Path, cache_dir: str | Path | None = None,
               stores: Sequence[str | Path] | None = None) -> FeatureCache:
    """Open a complete cache by key (or unique key prefix) in the stores, or by directory path. The use is recorded
    in the personal store (`cache ls`, `cache gc`); the cache is not leased: hold ``Lease([cache])`` while reading
    it for `cache rm` and `cache gc` to leave it alone."""
    path = Path(key_or_path).expanduser()
    if (path / MANIFEST).is_file():
        cache = FeatureCache(path)
        record_use(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(), [cache.key])
        return cache
    store = CacheStore(cache_dir, stores)
    cache = store.open(str(key_or_path))
    record_use(store, [cache.key])
    return cache
