"""The test suite's own conventions: CUDA-only tests are marked ``gpu`` and skipped, with the reason, without CUDA;
shared code comes from helpers.py and shared fixtures from conftest.py, never from another test module."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import REPO


class Item:
    """The part of a pytest item the setup hook reads: its markers."""

    def __init__(self, *marks: str):
        self.marks = [getattr(pytest.mark, m).mark for m in marks]

    def iter_markers(self, name: str):
        return iter([m for m in self.marks if m.name == name])


def test_a_gpu_test_is_skipped_with_its_reason_only_where_cuda_is_missing(monkeypatch):
    import conftest

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="needs a CUDA device"):
        conftest.pytest_runtest_setup(Item("gpu", "slow"))
    assert conftest.pytest_runtest_setup(Item("slow")) is None  # unmarked tests run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert conftest.pytest_runtest_setup(Item("gpu")) is None


def test_every_marker_used_is_registered_with_its_meaning(pytestconfig):
    declared = pytestconfig.getini("markers")
    names = {m.split(":")[0] for m in declared}
    assert {"slow", "gpu"} <= names
    used = set()
    for path in (REPO / "tests").glob("test_*.py"):
        used |= set(re.findall(r"pytest\.mark\.([a-z_]+)", path.read_text()))
    builtin = {"parametrize", "skipif", "skip", "xfail", "usefixtures", "filterwarnings"}
    assert used - builtin <= names, used - builtin - names


def test_no_test_module_imports_from_conftest_or_skips_on_cuda_by_hand():
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*from conftest import", text, re.M), path.name
        assert not re.search(r"skipif\(\s*not torch\.cuda\.is_available", text), f"{path.name}: mark it gpu"


def test_shared_checks_and_fixtures_are_defined_once():
    """One one_line_error (helpers.py), and no fixture called ``store``: a store fixture says which store it is
    (home: the personal store; resnet18_store, codec_store, two_caches: what they hold)."""
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text()
        assert not re.search(r"^def one_line_error\(", text, re.M), f"{path.name}: use helpers.one_line_error"
        assert not re.search(r"^def store\(", text, re.M), f"{path.name}: name the store by what it holds"
    assert len(re.findall(r"^def one_line_error\(", (REPO / "tests" / "helpers.py").read_text(), re.M)) == 1
