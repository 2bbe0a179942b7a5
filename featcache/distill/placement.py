"""Where a run's images and teacher rows live — resident on the device, tables in RAM, or streamed from the shards —
decided here, from one budget (``--cache-ram``), for every path: the resident default, the resident loader's cap
(CPU and GPU) and the joined loader's per-teacher tables. The run prints the decision once and records it in
config.json (``placement``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featcache.errors import ConfigError
from featcache.util.runtime import available_ram, parse_bytes

# Teacher tables up to this size are loaded into RAM by --cache-mode auto (about a second from the page cache);
# larger ones stream out of core unless --shuffle full or cached views ask for RAM. Streaming serves 200k+ rows/s,
# 100x what any student here consumes (docs/benchmarks.md), so a large table gains nothing from RAM but its load
# time and footprint (1.2M rows: 14-20 s and 5.9 GB).
EAGER_RAM_BYTES = 1 << 30
# With --cache-ram auto, a split is held resident by default when its uint8 images and teacher rows take at most
# this share of the RAM available now, and at most RESIDENT_MAX_BYTES (CIFAR-10 train at 32 px with a 2048-d teacher
# is 360 MB). An explicit --cache-ram replaces both.
RESIDENT_RAM_SHARE = 0.25
RESIDENT_MAX_BYTES = 2 * 2**30


def gib(n: int | float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class Budget:
    """The bytes a run may hold for rows and images: ``--cache-ram`` when given, else half the RAM available now."""

    bytes: int
    given: bool

    @classmethod
    def of(cls, cache_ram: str | int | None) -> "Budget":
        given = parse_bytes(cache_ram)
        return cls(given, True) if given is not None else cls(available_ram() // 2, False)

    def describe(self) -> str:
        return f"--cache-ram {gib(self.bytes)}" if self.given else f"{gib(self.bytes)} (half the RAM available)"


def resident_fits(need: int, budget: Budget) -> bool:
    """May a split of ``need`` bytes (images and rows) be held resident when --resident is not given?"""
    if budget.given:
        return need <= budget.bytes
    return need <= min(RESIDENT_MAX_BYTES, RESIDENT_RAM_SHARE * available_ram())


def resident_cap(device: torch.device, budget: Budget) -> int | None:
    """The most bytes a resident split may take on ``device``: on a GPU half its free memory (the other half is the
    student's activations) or --cache-ram when given, never more than is free; on the CPU --cache-ram when given."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(budget.bytes, free) if budget.given else free // 2
    return budget.bytes if budget.given else None


@dataclass(frozen=True)
class TablePlan:
    """The joined loader's storage per teacher ("ram" or "disk"), its shuffle, and the out-of-core window size."""

    modes: list[str]
    shuffle: str
    window_blocks: int
    need: list[int]
    budget: int


def plan_tables(need: list[int], disk_block_bytes: list[int], *, mode: str, shuffle: str, views: bool,
                view_count: int, budget: Budget, labeled_share: bool = False,
                window_blocks: int | None = None) -> TablePlan:
    """Per teacher table (``need`` bytes each, in order): RAM while the budget lasts, then out of core; the shuffle
    that follows from it (auto: block when anything streams), and windows sized from what the budget has left.
    ``disk_block_bytes[i]`` is one block of rows of table i; ``views``: the run asked for cached views,
    ``view_count``: K when the caches hold them (else 0). Refuses what cannot work with the tables on disk."""
    allowed = budget.bytes
    if mode == "auto" and shuffle == "auto" and not views and sum(need) > EAGER_RAM_BYTES:
        allowed = min(allowed, EAGER_RAM_BYTES)
    modes, used = [], 0
    for n in need:
        fits = mode == "ram" or (mode == "auto" and used + n <= allowed)
        modes.append("ram" if fits else "disk")
        used += n if fits else 0
    if view_count and "disk" in modes:
        raise ConfigError(f"cached views need the teacher tables in RAM ({sum(need) / 2**30:.1f} GiB for {view_count} "
                          "views); raise --cache-ram, or pass --no-views to train on the evaluation view only")
    if shuffle == "auto":
        shuffle = "block" if "disk" in modes else "full"
    if labeled_share and "disk" in modes:
        raise ConfigError("--labeled-share draws labelled rows out of order: it needs the teacher tables in RAM "
                          "(--cache-mode ram, and a larger --cache-ram if they do not fit)")
    if shuffle == "full" and "disk" in modes:
        raise ConfigError(
            f"the teacher tables need {sum(need) / 2**30:.1f} GiB but --cache-ram allows {allowed / 2**30:.1f} GiB; "
            "out-of-core tables need --shuffle block (or auto); --shuffle full needs a larger --cache-ram")
    if window_blocks is None:
        # Out-of-core tables hold 4 windows of blocks each; size the windows from what the budget has left.
        disk = [b for b, m in zip(disk_block_bytes, modes, strict=True) if m == "disk"]
        left = max(allowed - used, 256 * 2**20)
        per_block = max((4 * b for b in disk), default=1)
        window_blocks = int(np.clip(left // (max(1, len(disk)) * per_block), 1, 16))
    return TablePlan(modes, shuffle, window_blocks, need, allowed)


@dataclass(frozen=True)
class Placement:
    """What a run decided, as printed once and recorded in config.json."""

    resident: bool
    chosen: bool  # True: --resident/--no-resident given; False: the default decided
    budget: Budget
    need_bytes: int  # what the decision weighed: images + rows (resident) or the teacher tables (streaming)
    tables: list[str]  # per teacher: resident, ram or disk

    def describe(self) -> str:
        where = "resident in memory" if self.resident else "streamed by the joined loader"
        why = "as asked" if self.chosen else "by default"
        tables = f"; teacher tables: {', '.join(self.tables)}" if self.tables else ""
        return (f"rows and images {where} ({why}; {gib(self.need_bytes)} against the budget "
                f"{self.budget.describe()}){tables}")

    def record(self) -> dict:
        return {"resident": self.resident, "chosen": self.chosen, "budget_bytes": self.budget.bytes,
                "budget_given": self.budget.given, "need_bytes": self.need_bytes, "tables": list(self.tables)}


__all__ = ["EAGER_RAM_BYTES", "RESIDENT_MAX_BYTES", "RESIDENT_RAM_SHARE", "Budget", "Placement", "TablePlan",
           "plan_tables", "resident_cap", "resident_fits"]
