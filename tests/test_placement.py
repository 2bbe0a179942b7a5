"""One budget decides where a run's rows and images live (featcache.distill.placement), --cache-ram on every path."""

import json

import pytest

from featcache.distill.placement import (
    EAGER_RAM_BYTES,
    Budget,
    plan_tables,
    resident_cap,
    resident_fits,
)
from featcache.distill.trainer import CONFIG, DistillConfig, distill
from featcache.errors import ConfigError
from featcache.util.progress import Reporter
from helpers import SYN

GIB = 2**30


def test_budget_is_cache_ram_when_given_else_half_the_available_ram(monkeypatch):
    import featcache.distill.placement as P

    monkeypatch.setattr(P, "available_ram", lambda: 10 * GIB)
    assert Budget.of("auto") == Budget(5 * GIB, False) and Budget.of(None) == Budget(5 * GIB, False)
    assert Budget.of("3G") == Budget(3 * GIB, True)
    with pytest.raises(ConfigError, match="--cache-ram"):
        Budget.of("lots")


def test_the_resident_default_honours_cache_ram(monkeypatch):
    import featcache.distill.placement as P

    monkeypatch.setattr(P, "available_ram", lambda: 64 * GIB)
    # auto: a quarter of the available RAM, at most 2 GiB
    assert resident_fits(2 * GIB, Budget.of("auto")) and not resident_fits(2 * GIB + 1, Budget.of("auto"))
    # given: the budget alone, above or below the auto rule
    assert resident_fits(6 * GIB, Budget.of("6G")) and not resident_fits(1025, Budget.of("1K"))


def test_the_resident_cap_on_the_cpu_is_cache_ram_when_given():
    import torch

    assert resident_cap(torch.device("cpu"), Budget(123, True)) == 123
    assert resident_cap(torch.device("cpu"), Budget(123, False)) is None


def test_tables_go_to_ram_while_the_budget_lasts_then_stream():
    kw = dict(mode="auto", shuffle="block", views=False, view_count=0)
    plan = plan_tables([400, 400, 400], [10, 10, 10], budget=Budget(900, True), **kw)
    assert plan.modes == ["ram", "ram", "disk"] and plan.shuffle == "block"
    auto = plan_tables([400, 400], [10, 10], budget=Budget(900, True), mode="auto", shuffle="auto", views=False,
                       view_count=0)
    assert auto.modes == ["ram", "ram"] and auto.shuffle == "full"
    # above EAGER_RAM_BYTES, auto streams even when the budget would hold it
    big = plan_tables([EAGER_RAM_BYTES + 1], [1 << 20], budget=Budget(8 * GIB, True), mode="auto", shuffle="auto",
                      views=False, view_count=0)
    assert big.modes == ["disk"] and big.shuffle == "block" and 1 <= big.window_blocks <= 16
    with pytest.raises(ConfigError, match="--shuffle full needs a larger --cache-ram"):
        plan_tables([400], [10], budget=Budget(100, True), mode="auto", shuffle="full", views=False, view_count=0)
    with pytest.raises(ConfigError, match="cached views need the teacher tables in RAM"):
        plan_tables([400], [10], budget=Budget(100, True), mode="auto", shuffle="auto", views=True, view_count=3)
    with pytest.raises(ConfigError, match="--labeled-share"):
        plan_tables([400], [10], budget=Budget(100, True), mode="auto", shuffle="block", views=False, view_count=0,
                    labeled_share=True)


class Messages(Reporter):
    def __init__(self):
        super().__init__()
        self.lines = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.parametrize("cache_ram, tables", [("auto", ["resident"]), ("1K", ["disk"]), ("64M", ["resident"])])
def test_a_cpu_run_places_its_split_from_cache_ram_prints_it_once_and_records_it(resnet18_store, tmp_path, cache_ram,
                                                                                  tables):
    resident = tables == ["resident"]
    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), teachers=["resnet18"],
                        method="ts", epochs=1, batch_size=16, workers=0, cache_dir=resnet18_store,
                        run_dir=tmp_path / "run", cache_ram=cache_ram)
    reporter = Messages()
    distill(cfg, reporter)
    said = [line for line in reporter.lines if "rows and images" in line]
    assert len(said) == 1
    assert ("resident in memory" in said[0]) == resident and "by default" in said[0]
    assert ("--cache-ram" in said[0]) == (cache_ram != "auto")
    info = json.loads((tmp_path / "run" / CONFIG).read_text())
    rec = info["placement"]
    assert rec["resident"] == resident and rec["budget_given"] == (cache_ram != "auto") and not rec["chosen"]
    assert rec["tables"] == tables and info["loader"].startswith("resident") == resident
    assert rec["need_bytes"] > 0
