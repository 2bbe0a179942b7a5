"""The house rules that keep the code readable, as tests: no import cycles between featcache's modules (counting
imports inside functions too), and no module reaching into another's private names."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featcache"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    def owner(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featcache"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("featcache")]
            for t in targets:
                o = owner(t)
                if o and o != name:
                    graph[name].add(o)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.mark.slow
def test_no_import_cycles_between_featcache_modules():
    assert _cycles(_imports(_modules())) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("featcache"):
                offenders += [f"{name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


# -- size: a function reads in one screen, a module in one sitting --------------------------------------------------
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
LONG_MARK = "# long:"  # a function may be longer when its first lines say why: "# long: <the reason>"


def _long_functions() -> list[str]:
    found = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1:node.lineno + 8])
                if n > MAX_FUNCTION_LINES and LONG_MARK not in head:
                    found.append(f"{name}.{node.name}: {n} lines")
    return found


def test_no_function_is_longer_than_a_screen_unless_it_says_why():
    assert _long_functions() == []


def test_no_module_is_longer_than_a_sitting():
    long = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
    assert {k: n for k, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_the_size_checks_see_a_long_function(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "featcache").mkdir()
    (tmp_path / "featcache" / "m.py").write_text(f"def f():\n{body}\n\n\ndef g():\n    {LONG_MARK} a reason\n{body}\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "featcache")
    assert _long_functions() == [f"featcache.m.f: {MAX_FUNCTION_LINES + 1} lines"]


# -- every command's options come from the configs' declarations ------------------------------------------------------
SHARED_FLAGS = ("--dataset", "--data-root", "--dataset-opt", "--device", "--workers", "--batch-size", "--cache-dir",
                "--store", "--epochs", "--lr", "--seed")


def test_no_command_declares_a_shared_option_by_hand():
    """The options several commands take are fields (featcache/config), turned into typer options by
    featcache.config.flags.cli_parameters; a hand-written typer.Option("--dataset", ...) would be a second declaration
    whose default or help drifts from the first."""
    offenders = []
    for path in (PACKAGE / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("typer.Option", "typer.Argument"):
                names = {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
                offenders += [f"{path.name}: {n}" for n in names & set(SHARED_FLAGS)]
    assert offenders == []


# -- typed specs: a manifest's fields are dataclasses, not dicts to re-parse -----------------------------------------
# Maps whose keys are data (what was hashed, a dataset's own identity, rows per part, library versions) stay maps.
DICT_FIELDS_ALLOWED = {"identity", "dataset", "rows", "versions"}


def _dict_typed_fields(cls) -> list[str]:
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if any(o is dict or typing.get_origin(o) is dict for o in options) and f.name not in DICT_FIELDS_ALLOWED:
            found.append(f"{cls.__name__}.{f.name}: {hint}")
        for arg in typing.get_args(hint) or (hint,):
            if dataclasses.is_dataclass(arg) and arg is not cls:
                found += _dict_typed_fields(arg)
    return found


def test_no_manifest_field_is_a_dict_to_reparse():
    from featcache.cache.format import Manifest

    assert _dict_typed_fields(Manifest) == []


def test_the_dict_field_check_sees_a_dict(tmp_path):
    import dataclasses
    from typing import Any

    @dataclasses.dataclass
    class Inner:
        spec: dict[str, Any]

    @dataclasses.dataclass
    class Outer:
        rows: dict[str, int]
        inner: Inner | None = None

    assert _dict_typed_fields(Outer) == ["Inner.spec: dict[str, typing.Any]"]


def test_the_top_level_listing_shows_the_stages():
    """At most 14 modules directly under featcache/: the rest lives in the package of its stage (bench/, runs/,
    config/, util/, ...), so the folder listing alone tells a newcomer where each concern is."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 14, modules
    for stage in ("api", "bench", "cache", "cli", "config", "datasets", "distill", "extract", "models", "pipeline",
                  "runs", "util"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
