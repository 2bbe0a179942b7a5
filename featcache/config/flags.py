"""Every option of every stage is declared once: as a field of its config dataclass, with a :class:`Flag` in its
metadata.

    @dataclass
    class DistillConfig:
        epochs: int = opt(30, "Epochs of student training.")
        teachers: list[str] = opt(factory=list, help="...", name="--teacher", short="-t", form="repeat")

From that one declaration follow:

- the typer option of the CLI command (:func:`cli_parameters`, used by ``featcache.cli``) and the conversion of what
  the user typed back into the field's value (:func:`config_from_cli`);
- which fields a recipe table may set (:func:`recipe_fields`; ``recipe=False`` for those the recipe layer sets itself);
- the command line that reproduces a config (:func:`command_line`, recorded in manifests and shown in hints);
- the fields that change what a stage produces, as opposed to how or where it runs (``runtime=True``).

A new option is one new field; tests/test_cli.py checks that every field is reachable from the CLI and from recipes.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import shlex
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable, List, Optional

from featcache.config import typecheck
from featcache.errors import ConfigError

FORMS = ("value", "repeat", "comma", "keyvalue")
UNSET = type("Unset", (), {"__repr__": lambda self: "UNSET"})()  # "no CLI default of its own" (MISSING cannot be one)


@dataclass(frozen=True)
class Flag:
    """How a config field appears outside Python."""

    help: str = ""
    name: str | None = None  # the long flag; default: --field-name
    short: str | None = None
    negatable: bool = False  # bool flags: --x/--no-x instead of a bare --x
    off: str | None = None  # bool flags: the switch that turns it off when not --no-x (--cold/--warm-only)
    # value: one value; repeat: a list, one value per flag (--teacher a --teacher b); comma: a list written a,b,c;
    # keyvalue: a dict written -o key=value (repeatable)
    form: str = "value"
    cli: bool = True  # offered by the CLI command of this config
    recipe: bool = True  # accepted in a recipe's table for this stage (False: the recipe layer sets it itself)
    runtime: bool = False  # only how/where the stage runs (workers, store, waiting), never what it produces
    cli_type: Any = None  # the type the CLI parses when it differs from the field's (e.g. a Path for names-or-file)
    cli_default: Any = UNSET  # the CLI's default when it differs from the dataclass's (shown in --help)
    section: str | None = None  # the --help panel it is listed in (its options section, featcache.config)
    positional: bool = False  # a command-line argument rather than an option (``featcache eval RUN_DIR``)

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"Flag.form must be one of {FORMS}, not {self.form!r}")


def opt(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | Any = MISSING, **flag: Any):
    """A dataclass field carrying its :class:`Flag` (``help`` and any Flag attribute as keywords)."""
    meta = {"flag": Flag(help=help, **flag)}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> Flag:
    return f.metadata.get("flag") or Flag(cli=False, recipe=False)


def flag_name(f: dataclasses.Field) -> str:
    return flag_of(f).name or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def recipe_fields(cls: type) -> set[str]:
    """The fields a recipe table for this stage may set."""
    return {f.name for f in fields(cls) if flag_of(f).recipe}


def runtime_fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if flag_of(f).runtime}


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if flag_of(f).cli]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _cli_annotation(f: dataclasses.Field, tp: Any) -> Any:
    flag = flag_of(f)
    if flag.form == "repeat":  # numbers are parsed as numbers; names and paths stay text
        item = (typing.get_args(_unwrap_optional(tp)[0]) or (str,))[0]
        return Optional[List[item if item in (int, float) else str]]  # type: ignore[misc]  # built at run time
    if flag.form == "keyvalue":
        return Optional[List[str]]
    if flag.form == "comma":
        return Optional[str]
    base, optional = _unwrap_optional(flag.cli_type or tp)
    if typing.get_origin(base) is typing.Union:  # e.g. Path | list[str]: the CLI takes the first
        base = typing.get_args(base)[0]
    return Optional[base] if optional or default_of(f) is None else base


def cli_parameters(cls: type, *, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """The typer options of ``cls``'s CLI fields, in field order (a field without a default is required)."""
    import typer
    from rich.markup import escape

    hints = typing.get_type_hints(cls)
    params = []
    for f in cli_fields(cls):
        if f.name in exclude:
            continue
        flag = flag_of(f)
        # --help renders rich markup: "[timm]" in a help text would be taken for a style and vanish.
        help_text = escape(flag.help) if flag.help else None
        annotation = _cli_annotation(f, hints[f.name])
        if flag.cli_default is not UNSET:
            default = flag.cli_default
        elif flag.form in ("repeat", "keyvalue", "comma"):
            default = None
        else:
            default = default_of(f)
        if flag.positional:
            required = default is MISSING or flag.form == "repeat"  # RUN... takes at least one
            param = typer.Argument(... if required else default, help=help_text)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=param,
                                            annotation=annotation))
            continue
        decl = [flag_name(f)]
        if flag.negatable or flag.off:
            decl = [f"{decl[0]}/{flag.off or '--no-' + decl[0][2:]}"]
        if flag.short:
            decl.append(flag.short)
        option = typer.Option(... if default is MISSING else default, *decl, help=help_text,
                              rich_help_panel=flag.section)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they look like it (numbers, true/false), else strings."""
    import json

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected key=value")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def config_from_cli(cls: type, values: dict[str, Any], **extra: Any):
    """Build ``cls`` from a CLI command's parsed values (its :func:`cli_parameters` plus any ``extra`` fields)."""
    kwargs: dict[str, Any] = {}
    by_name = {f.name: f for f in fields(cls)}
    for name, value in values.items():
        f = by_name.get(name)
        if f is None:
            continue
        form = flag_of(f).form
        if form == "repeat":
            item = (typing.get_args(_hints(cls)[name]) or (str,))[0]
            value = [Path(v) if item is Path else v for v in value or []]  # --classes a.txt --classes b.txt
        elif form == "comma":
            value = [v.strip() for v in value.split(",") if v.strip()] if value else []
        elif form == "keyvalue":
            value = parse_key_values(value, flag_name(f))
        kwargs[name] = value
    kwargs.update(extra)
    return cls(**kwargs)


def config_from(cls: type, config: Any, options: dict[str, Any], what: str) -> Any:
    """The library's form of a command: ``config`` (a ``cls``) as given, or a ``cls`` built from keyword
    ``options`` (its fields), an unknown one being a one-line error that names it."""
    if config is not None:
        if options:
            raise ConfigError(f"{what}: pass a {cls.__name__} or keyword options, not both")
        return config
    unknown = sorted(set(options) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{what}: unknown option {unknown[0]!r}; the options are {cls.__name__}'s fields (the "
                          "command's flags, with underscores)")
    return cls(**options)


def command_line(config: Any, command: str, *, positional_first: tuple[str, ...] = ()) -> str:
    """The shell command that reproduces ``config`` (its CLI fields that differ from their defaults)."""
    args = ["featcache", command]
    ordered = sorted(cli_fields(type(config)), key=lambda f: f.name not in positional_first)
    for f in ordered:
        flag = flag_of(f)
        value = getattr(config, f.name)
        default = default_of(f)
        if flag.runtime or value is None or (default is not MISSING and value == default):
            continue
        name = flag_name(f)
        if flag.positional:
            args.append(str(value))
            continue
        if flag.form == "repeat":
            for v in value:
                args += [name, str(v)]
        elif flag.form == "comma":
            args += [name, ",".join(str(v) for v in value)]
        elif flag.form == "keyvalue":
            for k, v in sorted(value.items()):
                args += [name, f"{k}={v}"]
        elif isinstance(value, bool):
            args.append(name if value else flag.off or f"--no-{name[2:]}")
        else:
            args += [name, str(value)]
    return shlex.join(args)


def parse_command_line(cls: type, command: str, text: str) -> Any:
    """The ``cls`` config that a command line of the form :func:`command_line` writes stands for, or None when
    ``text`` is anything else (another program, another command, an unknown flag, a value of the wrong type). A
    command line read from a file someone else wrote is shown only as ``command_line`` of what it parses to."""
    try:
        args = shlex.split(text)
    except ValueError:
        return None
    if args[:2] != ["featcache", command]:
        return None
    flags: dict[str, tuple[dataclasses.Field, bool]] = {}
    positional = [f for f in cli_fields(cls) if flag_of(f).positional]
    for f in cli_fields(cls):
        flag, name = flag_of(f), flag_name(f)
        flags.update({n: (f, True) for n in (name, flag.short) if n})
        if _unwrap_optional(_hints(cls)[f.name])[0] is bool:
            flags[flag.off or "--no-" + name[2:]] = (f, False)
    values: dict[str, Any] = {}
    rest = iter(args[2:])
    for token in rest:
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        if not token.startswith("-"):
            if not positional:
                return None
            values[positional.pop(0).name] = token
            continue
        if name not in flags:
            return None
        f, on = flags[name]
        if _unwrap_optional(_hints(cls)[f.name])[0] is bool and not eq:
            values[f.name] = on
            continue
        value = inline if eq else next(rest, None)
        if value is None:
            return None
        if flag_of(f).form in ("repeat", "keyvalue"):
            values.setdefault(f.name, []).append(value)
        else:
            values[f.name] = value
    try:
        return config_from_cli(cls, {name: _typed(cls, name, v) for name, v in values.items()})
    except (ConfigError, ValueError, TypeError):
        return None


def _typed(cls: type, name: str, value: Any) -> Any:
    """A command-line word (or words) as the field's CLI type parses it: numbers as numbers, the rest as text."""
    f = next(f for f in fields(cls) if f.name == name)
    annotation = _unwrap_optional(_cli_annotation(f, _hints(cls)[name]))[0]
    item = (typing.get_args(annotation) or (None,))[0] if isinstance(value, list) else annotation
    if item in (int, float):
        return [item(v) for v in value] if isinstance(value, list) else item(value)
    return value


def describe_type(tp: Any, form: str = "value") -> str:
    """``an integer``, ``a list of strings``, ... : what a value of type hint ``tp`` must be, in words."""
    return typecheck.describe(tp) + (" (or one string a,b,c)" if form == "comma" else "")


def check_type(tp: Any, value: Any, where: str, form: str = "value") -> Any:
    """``value`` as type hint ``tp`` declares it (config.typecheck: an int is a float, a bool never a number, a
    string never a list; a comma-form list may be written ``a,b`` as on the CLI); else a one-line ConfigError
    naming ``where``. Paths are left as written: the caller resolves them (a recipe against its own folder)."""
    if form == "comma" and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]  # the CLI's a,b,c
    try:
        return typecheck.conform(value, tp)
    except typecheck.TypeMismatch as exc:
        raise ConfigError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(cls: type, name: str, value: Any, where: str) -> Any:
    """A value for field ``name`` of config ``cls`` (from a recipe) checked against the field's declared type, as the
    CLI's parser checks its flag; returns it (an int given for a float field becomes a float)."""
    f = next(f for f in fields(cls) if f.name == name)
    return check_type(_hints(cls)[name], value, where, flag_of(f).form)


def field_of_flag(cls: type, flag: str) -> str | None:
    """The field of ``cls`` whose CLI flag is ``flag`` (``--cache-ram`` -> ``cache_ram``), if any."""
    return next((f.name for f in fields(cls) if flag_of(f).cli and flag_name(f) == flag), None)


def copy_fields(source: Any, target_cls: type, *, rename: dict[str, str] | None = None, **overrides: Any):
    """``target_cls`` built from the fields of ``source`` that it shares by name (``rename`` maps source → target)."""
    rename = rename or {}
    names = {f.name for f in fields(target_cls)}
    kwargs = {}
    for f in fields(source):
        target = rename.get(f.name, f.name)
        if target in names:
            value = getattr(source, f.name)
            if isinstance(value, (dict, list)):
                value = type(value)(value)  # a copy: the two configs must not share a mutable field
            kwargs[target] = value
    kwargs.update(overrides)
    return target_cls(**kwargs)


def as_command(fn: Callable[..., Any], parameters: list[inspect.Parameter], doc: str | None = None):
    """Give ``fn(**values)`` the signature typer reads, so generated options work like hand-written ones."""
    fn.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # what inspect and typer read
    fn.__annotations__ = {p.name: p.annotation for p in parameters}
    if doc:
        fn.__doc__ = doc
    return fn


__all__ = ["Flag", "opt", "cli_parameters", "config_from_cli", "command_line", "copy_fields", "recipe_fields",
           "runtime_fields", "parse_key_values", "parse_command_line",
           "as_command", "check_type", "check_value", "describe_type", "Path"]
