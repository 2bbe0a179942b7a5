"""`featcache ... --help` and docs/cli.md: every option explained, nothing lost to rich markup, the page current."""

from typer.testing import CliRunner

from featcache.cli import app
from featcache.cli.docs import PAGE, REGENERATE, commands, main, plain, render

WIDE = 250  # no help text is cut by the terminal, so each appears whole in the rendered --help
BOX = set("│╭╮╰╯─┃━")


def squeeze(text: str) -> str:
    """Text without whitespace or table borders: a help text wrapped over several lines of its cell still matches."""
    return "".join(c for c in text if not c.isspace() and c not in BOX)


def named(path):
    return " ".join(["featcache", *path])


def test_every_option_and_argument_of_every_command_has_help_text():
    missing = [f"{named(path)} {p.opts[0] if p.opts else p.name}" for path, command in commands()
               for p in getattr(command, "params", []) if not plain(p.help) and p.name != "help"]
    assert not missing, f"options without help text: {missing}"


def test_every_command_has_a_description():
    assert not [named(path) for path, command in commands() if not plain(command.help)]


def test_help_of_every_command_shows_every_help_text_whole_brackets_included():
    runner, checked, bracketed = CliRunner(), 0, 0
    for path, command in commands():
        r = runner.invoke(app, [*path, "--help"], terminal_width=WIDE, env={"COLUMNS": str(WIDE)})
        assert r.exit_code == 0, (named(path), r.output)
        shown = squeeze(r.output)
        texts = [plain(p.help) for p in getattr(command, "params", []) if p.name != "help"]
        for text in [plain(command.help).split("\n\n")[0], *texts]:
            assert squeeze(text) in shown, f"`{named(path)} --help` does not show {text!r}:\n{r.output}"
            checked += 1
            bracketed += "[" in text
    assert checked > 200 and bracketed >= 2  # the check saw the texts that rich markup used to swallow


def test_a_bracket_in_a_help_text_is_escaped_for_rich_markup():
    from dataclasses import dataclass

    from featcache.config.flags import cli_parameters, opt

    @dataclass
    class Config:
        teacher: str = opt("x", "a timm model (pip install 'featcache[timm]').")

    (param,) = cli_parameters(Config)
    assert param.default.help == "a timm model (pip install 'featcache\\[timm]')."
    assert plain(param.default.help) == "a timm model (pip install 'featcache[timm]')."


def test_docs_cli_md_is_generated_from_the_current_options():
    assert PAGE.read_text(encoding="utf-8") == render(), f"docs/cli.md is stale: run `{REGENERATE}` to regenerate it"


def test_cli_page_lists_every_command_and_option():
    page = render()
    for path, command in commands():
        if path:
            assert f"## `{named(path)}`" in page
        for p in getattr(command, "params", []):
            if p.param_type_name == "option" and p.name != "help":
                assert f"`{p.opts[0]}`" in page, (named(path), p.opts)
    assert "| `--lambda-kd` | float | `1.0` |" in page
    assert "featcache[timm]" in page and "featcache\\[timm]" not in page


def test_cli_docs_check_fails_on_a_stale_page_and_names_the_command(tmp_path, capsys):
    page = tmp_path / "cli.md"
    assert main([str(page)]) == 0 and main(["--check", str(page)]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("--lambda-kd", "--lambda-old"), encoding="utf-8")
    assert main(["--check", str(page)]) == 1
    assert REGENERATE in capsys.readouterr().err


def test_cli_page_links_each_subcommand_to_its_heading():
    page = render()
    assert "## `featcache cache ls`" in page and "[`featcache cache ls`](#featcache-cache-ls)" in page
    assert "[`featcache runs ls`](#featcache-runs-ls)" in page
