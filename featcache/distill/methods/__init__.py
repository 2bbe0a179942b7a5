"""Distillation methods, one module each (equations cited in each class docstring), behind a small registry.

A new method is one new module here with a ``Method`` subclass that sets ``name``: the package imports every module
in it, and the registry (``METHODS``, ``--method``, recipes) follows.
"""

from __future__ import annotations

import importlib
import pkgutil

from featcache.distill.methods.base import Method, MethodParams, TeacherRows
from featcache.errors import ConfigError

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def _named_subclasses(cls: type[Method]) -> list[type[Method]]:
    out = []
    for sub in cls.__subclasses__():
        if sub.__module__.startswith(__name__ + ".") and sub.name:
            out.append(sub)
        out += _named_subclasses(sub)
    return out


# The order --method lists them in: as the papers introduce them (baselines first), then the rest by name.
_ORDER = ("ce", "kd", "fitnets", "ts", "ts-translator", "multi", "aka")
METHODS: dict[str, type[Method]] = {
    m.name: m for m in sorted({m.name: m for m in _named_subclasses(Method)}.values(),
                              key=lambda m: (_ORDER.index(m.name) if m.name in _ORDER else len(_ORDER), m.name))
}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown --method {name!r}: choose one of {', '.join(METHODS)}", flag="--method") from None


__all__ = ["METHODS", "Method", "MethodParams", "TeacherRows", "get_method"]
