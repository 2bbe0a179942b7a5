"""Check a value read from a file (JSON, TOML) against a dataclass field's type hint.

Files in a store, a run directory or a recipe may have been written by someone else: a value is accepted only if it
is what the field declares (an int is never a bool, a string is never a list of seeds), so that nothing downstream
meets a type it was not written for. Standard library only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any


class TypeMismatch(ValueError):
    """``value`` is not of the declared type; the message is ``expected <what>, got <value>``."""


def describe(hint: Any) -> str:
    """Words for a type hint: ``an integer``, ``a list of strings``, ``an integer or nothing``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None)) + (
            " (or unset)" if type(None) in args else "")
    if origin in (list, tuple):
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if origin is dict:
        return "a table" if not args else f"a table of {_plural(describe(args[1]))}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
             type(None): "nothing"}
    if hint in names:
        return names[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a table ({hint.__name__})"
    return getattr(hint, "__name__", str(hint))


def _plural(words: str) -> str:
    for article in ("an ", "a "):
        if words.startswith(article):
            words = words[len(article):]
            break
    return words if words.endswith("s") or " or " in words else words + "s"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(value: Any, hint: Any) -> None:
    """Raise TypeMismatch unless ``value`` is of type ``hint`` (recursively for lists, dicts and dataclasses given
    as dicts). Floats must be finite; an integer is accepted where a float is declared."""
    conform(value, hint)


def conform(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` declares it (an integer given for a float becomes a float; containers are copied), or
    TypeMismatch. Nothing else is coerced: a bool is never a number, a string never a list."""
    if hint is str or hint is Any:  # most of a manifest's leaves: a fast path (`cache ls` reads a thousand manifests)
        if hint is str and not isinstance(value, str):
            raise TypeMismatch(f"expected {describe(hint)}, got {_show(value)}")
        return type(value)(value) if isinstance(value, (list, dict)) else value
    if not _fits(value, hint):
        raise TypeMismatch(f"expected {describe(hint)}, got {_show(value)}")
    origin, args = _parts(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if _fits(value, a)]
        for arm in arms[:-1]:
            try:
                return conform(value, arm)
            except TypeMismatch:
                continue
        return conform(value, arms[-1])
    if hint is float:
        return float(value)
    if origin in (list, tuple) and args:
        out = []
        for i, item in enumerate(value):
            try:
                out.append(conform(item, args[0]))
            except TypeMismatch as exc:
                raise TypeMismatch(f"item {i + 1}: {exc}") from None
        if origin is tuple:
            if args[-1] is not Ellipsis and len(out) != len(args):
                raise TypeMismatch(f"expected {len(args)} items, got {len(out)}")
            return tuple(out)
        return out
    if origin is dict and args:
        items = {}
        for k, v in value.items():
            try:
                items[conform(k, args[0])] = conform(v, args[1])
            except TypeMismatch as exc:
                raise TypeMismatch(f"{k}: {exc}") from None
        return items
    # built, its fields conformed (a dataclass may check its values itself)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        check_fields(value, hint)
        hints = _fields_of(hint)[0]
        return hint(**{k: conform(v, hints[k]) for k, v in value.items()})
    if isinstance(value, (list, dict)):
        return type(value)(value)
    return value


def check_fields(d: dict[str, Any], cls: type) -> None:
    """Every key of ``d`` a field of dataclass ``cls`` and of its declared type; every field without a default
    present."""
    hints, fields = _fields_of(cls)
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise TypeMismatch(f"unknown field {unknown[0]!r}")
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeMismatch(f"{name}: missing")
            continue
        try:
            check(d[name], hints[name])
        except TypeMismatch as exc:
            raise TypeMismatch(f"{name}: {exc}") from None


@functools.lru_cache(maxsize=None)
def _fields_of(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    # Resolving the hints evaluates string annotations: cached, since `cache ls` checks a thousand manifests.
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _parts(hint: Any) -> tuple[Any, tuple]:
    try:
        return _cached_parts(hint)
    except TypeError:  # an unhashable hint
        return typing.get_origin(hint), typing.get_args(hint)


@functools.lru_cache(maxsize=1024)
def _cached_parts(hint: Any) -> tuple[Any, tuple]:
    return typing.get_origin(hint), typing.get_args(hint)


def _fits(value: Any, hint: Any) -> bool:
    origin, args = _parts(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, Path))
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True
