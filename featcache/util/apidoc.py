"""docs/api.md, the reference of the public API (``featcache.__all__`` and ``featcache.losses``), rendered from the
docstrings and signatures: ``python -m featcache.util.apidoc`` rewrites it, ``--check`` says whether it is current
(tests/test_api.py fails when it is not)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
HEADER = """# API reference

Generated from the docstrings by `python -m featcache.util.apidoc` (a test fails when this page is stale); the guide
with examples is [python-api.md](python-api.md). The public API is `featcache` (`import featcache as fc`: the names
below) and `featcache.losses`; every other module is internal.
"""
# fc.extract and fc.distill are the stage packages, callable; their reference is the function a call runs.
CALLED = {"extract": "featcache.extract:extract_with", "distill": "featcache.api.train:distill"}


def _target(name: str) -> Any:
    if name in CALLED:
        module, attr = CALLED[name].split(":")
        return getattr(importlib.import_module(module), attr)
    import featcache

    return getattr(featcache, name)


def _signature(obj: Any) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=_Raw(p.annotation)) if isinstance(p.annotation, str) else p
              for p in sig.parameters.values() if p.name != "self"]
    returns = sig.return_annotation
    if inspect.isclass(obj) or returns in ("None", None):
        returns = inspect.Signature.empty
    elif isinstance(returns, str):
        returns = _Raw(returns)
    return str(sig.replace(parameters=params, return_annotation=returns))


class _Raw(str):
    """An annotation kept as text (``from __future__ import annotations``), shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "(no docstring)")


def _members(cls: type) -> list[str]:
    """The public methods and properties a class defines itself (inherited ones are documented where defined)."""
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            out.append(f"* `.{name}`: {' '.join(_doc(member).split())}")
        elif inspect.isfunction(member) and member.__doc__:
            out.append(f"* `.{name}{_signature(member)}`: {' '.join(_doc(member).split())}")
    return out


def _entry(qualified: str, obj: Any) -> list[str]:
    if dataclasses.is_dataclass(obj):
        names = ", ".join(f"`{f.name}`" for f in dataclasses.fields(obj))
        return [f"### `{qualified}`", "", _doc(obj), "", f"Fields (the command's flags, with underscores; "
                f"[cli.md](cli.md) has their help): {names}", ""]
    if inspect.isclass(obj):
        return [f"### `class {qualified}{_signature(obj)}`", "", _doc(obj), "", *_members(obj), ""]
    if inspect.ismodule(obj):
        return [f"### `{qualified}`", "", _doc(obj).split("\n\n")[0], ""]
    return [f"### `{qualified}{_signature(obj)}`", "", _doc(obj), ""]


def render() -> str:
    """The whole page, as it should read now."""
    import featcache
    import featcache.losses as losses

    lines = [HEADER, "## `featcache`", ""]
    for name in featcache.__all__:
        if name.startswith("__") or name == "losses":
            continue
        lines += _entry(f"fc.{name}", _target(name))
    lines += ["## `featcache.losses`", "", _doc(losses).split("\n\n")[0], ""]
    for name in losses.__all__:
        lines += _entry(f"fc.losses.{name}", getattr(losses, name))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
        if current != text:
            print(f"{DOC.name} is stale: run python -m featcache.util.apidoc", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
