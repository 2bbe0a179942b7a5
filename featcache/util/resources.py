"""Locate files shipped in the repository's data/ folder, for editable and regular installs alike."""

from __future__ import annotations

import sys
from pathlib import Path

from featcache.errors import FeatcacheError


def data_path(name: str) -> Path:
    """Path of a shipped data file (e.g. ``sod_classes.tsv``)."""
    candidates = [
        Path(__file__).resolve().parents[2] / "data" / name,  # source checkout / editable install
        Path(sys.prefix) / "share" / "featcache" / name,  # regular install (pyproject data-files)
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FeatcacheError(
        f"shipped data file {name!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
        "reinstall featcache with `pip install -e .` from a full checkout"
    )
