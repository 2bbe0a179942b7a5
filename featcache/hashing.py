"""Content fingerprints used by cache keys, manifests and checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_lines(items: Sequence[str]) -> str:
    """sha256 of the items joined by newlines; the fingerprint of an ordered id or class list."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def content_digest(data) -> int:
    """64-bit BLAKE2b of a sample's bytes (its file, or its pixels as a numpy array when it has no file), as a signed
    int64: the per-row content hash that extract records and distill re-checks (format.CONTENT_DIGEST)."""
    if hasattr(data, "__array_interface__") and not isinstance(data, (bytes, bytearray, memoryview)):
        import numpy as np

        data = np.ascontiguousarray(data).data
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
