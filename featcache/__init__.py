"""featcache: run a teacher once, cache its features, distil many students from the cache.

Data flows one way: dataset -> teacher -> shards -> joined loader -> student -> metrics. The public API is the names
in ``__all__`` (``import featcache as fc``) and ``featcache.losses``; every other module is internal
(docs/python-api.md, docs/api.md). Importing featcache loads neither torch nor any submodule until a name is used,
and changes no environment variable.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it, imported on first use (PEP 562): `import featcache` stays torch-free and fast.
_LAZY = {
    **dict.fromkeys(["Cache", "CachedRows", "RowIndexError", "RowJoin", "Rows", "TeacherRow", "extract_from",
                     "list_methods", "list_students", "list_teachers", "open_cache", "register_method",
                     "register_student"], "featcache.api"),
    **dict.fromkeys(["ExtractConfig", "DistillConfig"], "featcache.config"),
    "Method": "featcache.distill.methods",
    "FeatcacheError": "featcache.errors",
}
# The two stages are packages that are also callable (``fc.extract(...)``, ``fc.distill(...)``): importing any of their
# modules binds the package to that attribute, so the package itself is what the name must be.
_SUBMODULES = {"distill", "extract", "losses"}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
