"""Remote stores: a URL among the stores (``https://host/caches``, ``s3://bucket/prefix``, any fsspec URL), read-only.

A remote store has the layout of a local one, plain files (``<URL>/<key>/manifest.json`` and the shards the manifest
names), so any directory a web server serves is one. Listing reads manifests only, never shards: over HTTP(S) the
keys come from ``<URL>/index.json`` (``{"featcache_index": 1, "keys": [...]}``, written by ``cache publish``), else
from the server's HTML directory listing (``python -m http.server``, nginx's autoindex); over any other protocol from
fsspec's ``ls``. Both are hints only: every manifest read is checked as a local one is (format version, key against
identity, file names) before anything it names is fetched. featcache.cache.pull brings a cache into a local store.

HTTP(S) goes through the standard library's urllib, not fsspec's HTTP file system: a pull needs exact control of
Range requests (to resume a shard, and to notice a server that ignores them and sends the whole file again) and a
timeout per request naming the URL, and urllib needs no asyncio stack (fsspec's HTTP needs aiohttp). fsspec serves
every other protocol (its s3fs, gcsfs, adlfs are the backends huggingface_hub's and DVC's users already have).

``FEATCACHE_OFFLINE=1`` (or ``--offline``) reads no remote store at all; ``FEATCACHE_TIMEOUT`` bounds each request
(seconds, default 60); ``FEATCACHE_STORAGE_OPTIONS`` (a JSON object) is passed to fsspec as is (an S3 endpoint_url).
"""

from __future__ import annotations

import html.parser
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Generator, Iterable, Iterator

from featcache.cache.format import MANIFEST, MANIFEST_LIMIT, Manifest, is_cache_key
from featcache.errors import CacheError, ConfigError, RemoteError
from featcache.util.fileio import loads_json, printable

OFFLINE_ENV = "FEATCACHE_OFFLINE"
TIMEOUT_ENV = "FEATCACHE_TIMEOUT"
OPTIONS_ENV = "FEATCACHE_STORAGE_OPTIONS"
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a request is given up (a stalled server, not a slow one)
INDEX = "index.json"
INDEX_VERSION = 1
INDEX_LIMIT = 64 << 20  # bytes: an index of a million keys is far below this
CHUNK = 1 << 20

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/{1,3}(.*)$")  # pathlib turns "s3://b/p" into "s3:/b/p"
_PORT_RE = re.compile(r"^\d+(/|$)")


def offline_env() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def _protocols() -> set[str]:
    from fsspec.registry import known_implementations

    return ({"http", "https"} | set(known_implementations)) - {"file", "local"}


def store_url(entry: str | Path) -> str | None:
    """The URL a --store / FEATCACHE_PATH / recipe entry names, None for a local directory. A Path made from a URL has
    lost one slash of ``//``: it is put back. Only a scheme fsspec knows (or http/https) makes a URL."""
    m = _URL_RE.match(str(entry))
    if m is None or m.group(1).lower() not in _protocols():
        return None
    return f"{m.group(1).lower()}://{m.group(2).rstrip('/')}"


def split_path(value: str) -> list[str]:
    """The entries of FEATCACHE_PATH: separated by ``:`` as PATH is, except the ``:`` of a URL — the one before its
    ``//`` and the one before a port number (``https://host:8080/x:/local/dir`` is two stores)."""
    if os.pathsep != ":":
        return [p for p in value.split(os.pathsep) if p.strip()]
    out: list[str] = []
    for piece in re.split(r":(?!//)", value):
        prev = out[-1] if out else ""
        if prev and "://" in prev and "/" not in prev.split("://", 1)[1] and _PORT_RE.match(piece):
            out[-1] = f"{prev}:{piece}"  # host:port
        else:
            out.append(piece)
    return [p for p in out if p.strip()]


def storage_options(url: str) -> dict[str, Any]:
    """fsspec's options from FEATCACHE_STORAGE_OPTIONS (a JSON object), for every protocol but http(s)."""
    text = os.environ.get(OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        value = loads_json(text)
    except ValueError as exc:
        raise ConfigError(f"{OPTIONS_ENV} is not JSON ({exc}); set it to an object such as "
                          '\'{"endpoint_url": "http://host:9000"}\'') from None
    if not isinstance(value, dict):
        raise ConfigError(f"{OPTIONS_ENV} must be a JSON object of fsspec options, e.g. "
                          '\'{"endpoint_url": "http://host:9000"}\'')
    return value


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path) of a store URL; a missing backend is one line naming the extra to install."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as exc:
        scheme = url.split(":", 1)[0]
        raise ConfigError(f"store {url}: the {scheme}:// backend is not installed ({exc}); pip install "
                          f"'featcache[{scheme}]' (or the fsspec backend for {scheme})") from None


def timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={printable(text)}: give the seconds a request may wait, e.g. 60")
    return value


class HttpTransport:
    """GET and ranged GET over urllib, every failure one line naming the URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout()

    def address(self, rel: str) -> str:
        return f"{self.url}/{urllib.parse.quote(rel)}"

    def get(self, rel: str, limit: int) -> bytes | None:
        """The whole file (at most ``limit`` bytes, else RemoteError), None when the server has no such file."""
        url = self.address(rel)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                data = r.read(limit + 1)
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):  # a static mirror or bucket answers 403 for a missing object
                return None
            raise RemoteError(f"{url}: HTTP {exc.code} {printable(str(exc.reason))}") from None
        except (OSError, ValueError) as exc:
            raise network_error(url, exc) from None
        if len(data) > limit:
            raise RemoteError(f"{url}: larger than {limit >> 20} MiB, not a featcache file; it is not read")
        return data

    def stream(self, rel: str, offset: int) -> tuple[int, Iterable[bytes]]:
        """(where the server's bytes start, their chunks) from ``offset``: 0 when it ignores the Range header."""
        url = self.address(rel)
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            r = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise CacheError(f"{url}: not found (404): the store lists a cache whose shard is missing; nothing "
                                 "was installed (ask its publisher to publish it again)") from None
            raise RemoteError(f"{url}: HTTP {exc.code} {printable(str(exc.reason))}") from None
        except (OSError, ValueError) as exc:
            raise network_error(url, exc) from None
        ranged = r.status == 206 and r.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
        return (offset if ranged else 0), Body(r, url)


class Body:
    """A response's body as chunks (iterate it; ``close`` it when done). ``abort`` from another thread ends a read
    blocked on a stalled server at once (the socket shut down: the read meets an early end, a RemoteError), where
    closing the response would wait for the timeout: a pull interrupted while several files download stops now."""

    def __init__(self, response: Any, url: str) -> None:
        self._response = response
        self._chunks = _chunks(response, url)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()

    def abort(self) -> None:
        """Only while the body is open (the caller's to ensure): a closed one's descriptor may be another file's."""
        try:
            with socket.socket(fileno=os.dup(self._response.fileno())) as sock:  # a duplicate: shutdown acts on the
                sock.shutdown(socket.SHUT_RDWR)  # connection, and closing the duplicate leaves the response's own
        except (OSError, ValueError):
            pass  # already closed, or not a socket: nothing is blocked on it


def _chunks(response: Any, url: str) -> Generator[bytes, None, None]:
    try:
        with response:
            while True:
                chunk = response.read1(CHUNK)  # what has arrived: a stalled body still leaves its bytes on disk
                if not chunk:
                    break
                yield chunk
        if response.length:  # read1 meets a connection closed early as an end: the length announced says
            raise ConnectionError(f"the connection closed {response.length:,} bytes before the end")
    except Exception as exc:  # OSError (a timeout, a reset) and http.client.HTTPException (IncompleteRead, ...)
        raise network_error(url, exc) from None


class FsspecTransport:
    """The same three operations over any fsspec file system (s3, gcs, azure, memory, ...)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = filesystem(self.url)

    def address(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def get(self, rel: str, limit: int) -> bytes | None:
        try:
            with self.fs.open(f"{self.root}/{rel}", "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except Exception as exc:  # each backend raises its own (botocore, aiohttp...): one line naming the URL
            raise network_error(self.address(rel), exc) from None
        if len(data) > limit:
            raise RemoteError(f"{self.address(rel)}: larger than {limit >> 20} MiB, not a featcache file")
        return data

    def stream(self, rel: str, offset: int) -> tuple[int, Iterable[bytes]]:
        try:
            f = self.fs.open(f"{self.root}/{rel}", "rb", block_size=CHUNK)
            f.seek(offset)
        except FileNotFoundError:
            raise CacheError(f"{self.address(rel)}: not found: the store lists a cache whose shard is missing; "
                             "nothing was installed") from None
        except Exception as exc:
            raise network_error(self.address(rel), exc) from None
        return offset, self._chunks(f, self.address(rel))

    @staticmethod
    def _chunks(f: Any, url: str) -> Iterator[bytes]:
        try:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except Exception as exc:
            raise network_error(url, exc) from None

    def keys(self) -> list[str]:
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise network_error(self.url, exc) from None
        return sorted({n.rstrip("/").rsplit("/", 1)[-1] for n in names} - {INDEX})


def network_error(url: str, exc: BaseException) -> RemoteError:
    reason = getattr(exc, "reason", None) or exc
    what = "timed out" if "timed out" in str(reason).lower() else printable(f"{type(exc).__name__}: {reason}", 160)
    return RemoteError(f"{url}: {what} (FEATCACHE_TIMEOUT sets the seconds a request may wait; re-run to resume: what "
                       "was downloaded is kept)")


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


class RemoteStore:
    """One remote store: its keys (listed once per instance) and its manifests."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = self.url.split(":", 1)[0] in ("http", "https")
        self._transport: HttpTransport | FsspecTransport | None = None
        self._keys: list[str] | None = None

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    @property
    def transport(self) -> HttpTransport | FsspecTransport:
        if self._transport is None:  # made on first use: a store only named costs nothing
            self._transport = HttpTransport(self.url) if self.http else FsspecTransport(self.url)
        return self._transport

    def keys(self) -> list[str]:
        """The cache keys the store holds, as its index (or listing) says."""
        if self._keys is None:
            self._keys = sorted(k for k in self._list() if is_cache_key(k))
        return self._keys

    def _list(self) -> list[str]:
        t = self.transport
        if isinstance(t, FsspecTransport):
            return t.keys()
        data = t.get(INDEX, INDEX_LIMIT)
        if data is not None:
            return _index_keys(data, t.address(INDEX))
        page = t.get("", INDEX_LIMIT)  # the server's directory listing, where it gives one
        if page is None:
            return []
        parser = _Links()
        parser.feed(page.decode("utf-8", "replace"))
        return [urllib.parse.unquote(h.split("?")[0].rstrip("/")) for h in parser.hrefs if h.rstrip("/") and
                "/" not in h.rstrip("/")]

    def manifest_bytes(self, key: str) -> bytes | None:
        return self.transport.get(f"{key}/{MANIFEST}", MANIFEST_LIMIT) if is_cache_key(key) else None

    def manifest(self, key: str, data: bytes) -> Manifest:
        """``data`` read as the manifest of ``key``, with the checks and the one-line errors of a local one."""
        with tempfile.TemporaryDirectory(prefix="featcache-remote-") as tmp:
            d = Path(tmp) / key
            d.mkdir()
            (d / MANIFEST).write_bytes(data)
            try:
                return Manifest.load(d)
            except CacheError as exc:
                raise type(exc)(str(exc).replace(str(d / MANIFEST), f"{self.url}/{key}/{MANIFEST}")) from None


def _index_keys(data: bytes, url: str) -> list[str]:
    try:
        value = loads_json(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteError(f"{url}: not a featcache index ({printable(str(exc), 80)})") from None
    if not isinstance(value, dict) or not isinstance(value.get("keys"), list):
        raise RemoteError(f"{url}: not a featcache index (an object with a list of keys)")
    version = value.get("featcache_index")
    if not isinstance(version, int) or version > INDEX_VERSION:
        raise RemoteError(f"{url}: an index of version {printable(repr(version))}, this featcache reads "
                          f"{INDEX_VERSION}: upgrade featcache")
    return [k for k in value["keys"] if isinstance(k, str)]
