"""docs/cli.md, generated from the commands themselves: every command and subcommand of the `featcache` app, its
arguments and options with their types, defaults and help texts, grouped in the panels of its ``--help``.

The options of most commands are declared once, as config fields (featcache.config, featcache.config.flags); the
app turns them into typer options, and this module reads them back from the app, so the page can never disagree
with ``--help``. Regenerate the page with ``python -m featcache.cli.docs``; ``--check`` exits with status 1 when it
is stale (tests/test_cli_docs.py runs that check).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

REGENERATE = "python -m featcache.cli.docs"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

HEADER = f"""# Command-line reference

Every command of `featcache`, with each option's type, default and help, as `featcache COMMAND --help` shows them.
This page is generated from the option declarations (`featcache/config/`): do not edit it by hand, run
`{REGENERATE}` after changing an option. The stages are explained in [guide.md](guide.md); recipes in
[pipelines.md](pipelines.md); the cache store in [store.md](store.md).
"""


def commands(app: Any = None) -> Iterator[tuple[list[str], Any]]:
    """Every (path, command) of the app, depth first in the order ``--help`` lists them; the root's path is []."""
    import typer

    if app is None:
        from featcache.cli import app
    yield from _walk(typer.main.get_command(app), [])


def _walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if not sub.hidden:
            yield from _walk(sub, path + [name])


def plain(text: str | None) -> str:
    """A help text as the user reads it: rich's escapes (``\\[timm]``, so that markup keeps it) undone."""
    return (text or "").replace("\\[", "[").strip()


def _cell(text: str) -> str:
    # one line; "|" would end the cell and "<split>" would be read as an HTML tag
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _default(param: Any) -> str:
    if param.required:
        return "required"
    value = param.default
    if value is None or value == [] or value == ():
        return ""
    if isinstance(value, bool) and param.secondary_opts:  # --x/--no-x: the switch that is on
        return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
    if isinstance(value, bool):
        return "on" if value else ""
    return f"`{value}`"


def _names(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}`" + ("…" if param.nargs == -1 else "")
    names = [param.opts[0]] + list(param.secondary_opts) + list(param.opts[1:])
    return ", ".join(f"`{n}`" for n in names)


def _type(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False):
        return ""
    return _cell(param.display_type(ctx).strip("<>"))


def _panels(command: Any) -> dict[str, list[Any]]:
    """The command's parameters by --help panel, arguments first, --help itself left out."""
    panels: dict[str, list[Any]] = {}
    for param in command.params:
        if param.hidden or param.name == "help":
            continue
        default = "Arguments" if param.param_type_name == "argument" else "Options"
        panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(param)
    order = sorted(panels, key=lambda p: (p != "Arguments", p != "Options"))
    return {p: panels[p] for p in order}


def _command_section(path: list[str], command: Any) -> list[str]:
    title = " ".join(["featcache", *path])
    lines = [f"## `{title}`", "", plain(command.help) or "(no description)", ""]
    subs = getattr(command, "commands", None)
    if subs:
        lines += ["| command | what it does |", "| --- | --- |"]
        for name, sub in subs.items():
            first = plain(sub.short_help or sub.help).split(". ")[0]  # its first sentence
            if not sub.hidden:
                lines.append(f"| [`{title} {name}`](#{_anchor(f'{title} {name}')}) | {_cell(first)} |")
        return lines + [""]
    ctx = command.context_class(command, info_name=title)
    for panel, params in _panels(command).items():
        lines += [f"**{panel}**", "", "| option | type | default | help |", "| --- | --- | --- | --- |"]
        lines += [f"| {_names(p)} | {_type(p, ctx)} | {_default(p)} | {_cell(plain(p.help))} |" for p in params]
        lines.append("")
    return lines


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def render(app: Any = None) -> str:
    """The whole page."""
    lines = [HEADER]
    for path, command in commands(app):
        if path:
            lines += _command_section(path, command)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/cli.md (or PATH); with --check, only say whether it is current (status 1 when it is not)."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    page = Path(paths[0]) if paths else PAGE
    text = render()
    if check:
        current = page.is_file() and page.read_text(encoding="utf-8") == text
        if not current:
            print(f"{page} is stale: run `{REGENERATE}` to regenerate it", file=sys.stderr)
        return 0 if current else 1
    page.write_text(text, encoding="utf-8")
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
