"""The user docs (README.md, docs/, pipelines/README.md): short where they must be, free of development notes, and
every link resolves inside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "pipelines" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
NOTEBOOK = re.compile(r"issue [0-9]+|\bsessions?\b", re.IGNORECASE)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [a or b for a, b in LINK.findall(text)]


def test_readme_is_short_and_starts_with_users_not_contributors():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    sections = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert sections[0] == "Install" and sections[-1].startswith("Contributing"), sections


def test_readme_setup_and_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [ln.strip() for ln in ci if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert commands == ['python -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"', "pytest"]
    readme = [ln.split("#")[0].strip() for ln in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()]
    assert all(c in readme for c in commands)


def test_readme_links_every_page_a_user_reads_next():
    targets = set(links(ROOT / "README.md"))
    for page in ("docs/guide.md", "docs/cli.md", "docs/python-api.md", "docs/store.md", "docs/datasets.md",
                 "docs/methods.md", "docs/pipelines.md"):
        assert page in targets, page


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_docs_carry_no_issue_numbers_or_session_notes(page):
    hits = [f"{rel(page)}:{n}: {ln.strip()}" for n, ln in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if NOTEBOOK.search(ln)]
    assert not hits, "development notes in the user docs:\n" + "\n".join(hits)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_docs_links_resolve_inside_the_repository(page):
    bad = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: — outside links are fine, paths outside are not
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {rel(dest)}")
    assert not bad, f"{rel(page)}: " + "; ".join(bad)
    assert "../shared" not in page.read_text(encoding="utf-8")


def test_the_link_check_sees_a_link_outside_the_repository_and_a_broken_anchor(tmp_path):
    assert links_of("[a](../shared/x.md) and [b](docs/store.md#nothing) ![c](img/p.png)") == [
        "../shared/x.md", "docs/store.md#nothing", "img/p.png"]
    assert anchor("MobileNetV3 at exactly 10.00 %: batch-norm statistics") == \
        "mobilenetv3-at-exactly-1000--batch-norm-statistics"
    assert anchor("`--labels`: labels for a subset") == "--labels-labels-for-a-subset"
    assert NOTEBOOK.search("as issue 13 asked") and NOTEBOOK.search("in this session")


def links_of(text: str) -> list[str]:
    return [a or b for a, b in LINK.findall(text)]
