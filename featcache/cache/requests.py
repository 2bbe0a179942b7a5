"""Remembered extract requests: a re-extract that finds its cache answers in a fraction of a second.

Deriving a cache key needs the teacher's weights and default transform (torchvision) and the dataset's identity, and
importing torch and torchvision alone takes 4-8 s on a 2-core box. So after every successful extract the CLI
remembers, in ``<store>/requests/<digest>.json``, which key that exact request produced, together with a signature
of every file the request read: the dataset root(s), any file-valued dataset option, a checkpoint given as
``--weights``, and the torch hub checkpoint folder (where default weights come from). A later identical request
whose files are all unchanged (same relative paths, sizes and mtimes, the same check the dataset fingerprint makes)
and whose cache is complete, with every shard of the recorded size and checksum, gets the answer without torch;
anything else (a changed file, a new GPU, another featcache version, a shard that fails its checksum) falls through to
the full path, which re-derives the key and repairs what it must. Only the standard library is imported here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from featcache.cache.format import FORMAT_VERSION, MANIFEST, Manifest, is_cache_key, shard_path
from featcache.errors import StorageError
from featcache.util.fileio import loads_json, write_text_atomic

REQUESTS_DIR = "requests"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("featcache")
    except Exception:  # noqa: BLE001 - an uninstalled checkout: no fast path is better than a wrong one
        return "unknown"


def request_digest(request: dict[str, Any]) -> str:
    body = json.dumps({"request": request, "featcache": _version(), "format": FORMAT_VERSION}, sort_keys=True,
                      default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _hub_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def tree_signature(paths: list[Path]) -> str:
    """sha256 over (path, size, mtime_ns) of every file under ``paths`` (files or directories), walked in sorted
    order; a missing path counts as such."""
    h = hashlib.sha256()

    def walk(directory: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            h.update(f"unreadable {directory}\n".encode())
            return
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                walk(e.path)
            else:
                try:
                    st = e.stat()
                except OSError:
                    h.update(f"gone {e.path}\n".encode())
                    continue
                h.update(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())

    for path in paths:
        p = str(path)
        if os.path.isdir(p):
            h.update(f"dir {p}\n".encode())
            walk(p)
        elif os.path.exists(p):
            st = os.stat(p)
            h.update(f"file {p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"missing {p}\n".encode())
    return h.hexdigest()


def _gpu_present() -> bool:
    """Whether an NVIDIA device is visible (device=auto resolves to it, and the precision with it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return any(name.startswith("nvidia") and name[6:].isdigit() for name in os.listdir("/dev"))
    except OSError:
        return False


def request_inputs(request: dict[str, Any]) -> list[Path]:
    """The files and folders an extract request reads: its data root, path-valued dataset options, a checkpoint
    given as weights, and the torch hub checkpoints (default weights)."""
    paths: list[Path] = []
    if request.get("data_root"):
        paths.append(Path(request["data_root"]).expanduser().resolve())
    for value in (request.get("dataset_options") or {}).values():
        if isinstance(value, (str, Path)) and os.path.exists(os.path.expanduser(str(value))):
            paths.append(Path(value).expanduser().resolve())
    weights = request.get("weights")
    if weights and os.path.exists(os.path.expanduser(str(weights))):
        paths.append(Path(weights).expanduser().resolve())
    paths.append(_hub_dir())
    return paths


def _shards_intact(directory: Path, manifest: Manifest) -> bool:
    from featcache.errors import CacheError
    from featcache.util.hashing import file_sha256

    for shard in manifest.files():  # the shards and a projection file
        try:
            path = shard_path(directory, shard)
            if path.stat().st_size != shard.bytes or file_sha256(path) != shard.sha256:
                return False
        except (OSError, CacheError):
            return False
    return True


def _sample_unchanged(directory: Path, sample: list[list[Any]]) -> bool:
    """The sampled files still hash to the content digests their rows recorded (the check the full path's
    sampled content re-check makes: it catches an edit that kept a file's size and mtime)."""
    import numpy as np

    from featcache.cache.format import CONTENT
    from featcache.cache.reader import FeatureCache
    from featcache.util.hashing import content_digest

    rows = np.array([r for r, _ in sample], dtype=np.int64)
    try:
        with FeatureCache(directory) as cache:
            recorded = cache.gather(rows, fields=(CONTENT,))[CONTENT]
        for (_, path), want in zip(sample, recorded, strict=True):
            with open(path, "rb") as f:
                if content_digest(f.read()) != int(want):
                    return False
    except Exception:  # noqa: BLE001 - anything unexpected: let the full path look
        return False
    return True


def recall(store: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The complete, intact cache an identical earlier request produced, if nothing it read has changed since:
    ``{"key", "rows", "noise_rows", "bytes"}``; else None (take the full path)."""
    try:
        # The memo and the manifest are files of the store (maybe written by someone else): checked as strictly as
        # the full path checks them, and anything odd (a newer format, a foreign key) falls through to it.
        memo = loads_json((store / REQUESTS_DIR / f"{request_digest(request)}.json").read_text())
        if not isinstance(memo, dict) or not isinstance(memo.get("key"), str) or not is_cache_key(memo["key"]):
            return None
        directory = store / memo["key"]
        manifest = Manifest.from_dict(loads_json((directory / MANIFEST).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (memo.get("gpu") != _gpu_present() or not manifest.complete or manifest.key != memo["key"]
            or memo.get("inputs") != tree_signature(request_inputs(request))
            or not _shards_intact(directory, manifest)
            or (memo.get("sample") and not _sample_unchanged(directory, memo["sample"]))):
        return None
    return {"key": manifest.key, "rows": manifest.rows.get("data", 0), "noise_rows": manifest.rows.get("noise", 0),
            "bytes": manifest.total_bytes()}


def remember(store: Path, request: dict[str, Any], key: str, inputs: str,
             sample: list[tuple[int, str]] | None) -> None:
    """Record that ``request`` produced the cache ``key`` from files whose ``tree_signature`` was ``inputs`` when the
    request started (taken before the extract read them, so a file changed meanwhile can only cause a miss), with
    ``sample``: (row, file) pairs whose bytes a recall re-hashes. Best effort: a read-only store just has no fast
    path."""
    try:
        folder = store / REQUESTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"key": key, "gpu": _gpu_present(), "inputs": inputs, "request": request,
                           "sample": sample}, indent=2, default=str)
        # a new temporary file of a random name, renamed: never written through a link planted in a shared store
        write_text_atomic(folder / f"{request_digest(request)}.json", body + "\n", flag="extract request")
    except (OSError, StorageError):
        pass
