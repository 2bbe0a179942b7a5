"""Stage 2: train students from cached teacher rows (no teacher network is ever built here)."""

import sys
from types import ModuleType
from typing import Any


class _Stage(ModuleType):
    """``featcache.distill`` is this package and the public function ``fc.distill(...)`` at once: importing a
    submodule sets the attribute ``featcache.distill`` to the package, so the package itself is callable."""

    def __call__(self, config: Any = None, /, **options: Any) -> Any:
        from featcache.api.train import distill

        return distill(config, **options)


sys.modules[__name__].__class__ = _Stage
