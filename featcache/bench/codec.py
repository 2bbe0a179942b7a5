"""What dequantisation costs in the join: `python -m featcache.bench.codec` (docs/benchmarks.md, "Compressed rows").

The same random rows are written twice by the real writer (`bench_join.write_random_cache`): as float16 features and
as `extract --dtype int8` stores them. Each setting serves the same shuffled batches through the distill loader's
own pieces — a table's gather (RAM: ``InMemoryTable``; out of core: ``OutOfCoreTable`` over a block-shuffled epoch),
the staging to the device and ``split_rows``, which dequantises int8 rows — and the settings are interleaved in
rounds (3 by default), with the 1-minute load recorded before and after each round. On a CPU device the staging is
a no-op, so the int8 figure is the gather of half the bytes plus the multiply; on a GPU the multiply runs on the device
after a copy of half the bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featcache.bench.join import write_random_cache
from featcache.cache.format import FEATURE_SCALE, FEATURES, LOGITS
from featcache.cache.reader import FeatureCache
from featcache.distill.loader import InMemoryTable, OutOfCoreTable, PinnedStaging, epoch_plan, split_rows


def _epoch(table, cache: FeatureCache, batches: list[np.ndarray], staging: PinnedStaging, split: bool) -> float:
    """Seconds to serve ``batches`` from ``table`` as the joined loader does: gather, stage, ``split_rows`` (which
    dequantises int8 rows; ``split=False`` leaves it out, to isolate what the multiply costs)."""
    start = time.perf_counter()
    for b in batches:
        rows = staging.to_device(list(table.gather(b)))
        if split:
            split_rows(rows, [cache], [len(rows)])
    if staging.device.type == "cuda":
        torch.cuda.synchronize(staging.device)
    return time.perf_counter() - start


def bench_dequant(rows: int = 100_000, dim: int = 2048, classes: int = 10, batch_size: int = 128, rounds: int = 3,
                  device: str = "cpu", block_rows: int = 1024, window_blocks: int = 4, seed: int = 0,
                  directory: Path | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)  # the loader's gathers run on one thread (tables.py); so does this comparison
    dev = torch.device(device)
    with tempfile.TemporaryDirectory(prefix="featcache-bench-codec-", dir=directory) as scratch:
        caches = {}
        for dtype in ("float16", "int8"):
            key = write_random_cache(Path(scratch) / f"bench-{dtype}", rows, dim, classes, seed=seed, dtype=dtype).key
            caches[dtype] = FeatureCache(Path(scratch) / key)
        fields = {"float16": (FEATURES, LOGITS), "int8": (FEATURES, LOGITS, FEATURE_SCALE)}
        full = epoch_plan(rows, seed=seed, epoch=0, shuffle="full", block_rows=block_rows, window_blocks=window_blocks)
        block = epoch_plan(rows, seed=seed, epoch=0, shuffle="block", block_rows=block_rows,
                           window_blocks=window_blocks)

        def cut(order: np.ndarray) -> list[np.ndarray]:
            return [order[i : i + batch_size] for i in range(0, rows - batch_size + 1, batch_size)]

        ram = {k: InMemoryTable(c, "data", fields[k]) for k, c in caches.items()}
        settings: list[tuple[Any, ...]] = []
        for k in ("float16", "int8"):
            settings.append((f"ram {k}", ram[k], caches[k], cut(full.order), None, True))
        settings.append(("ram int8, no dequant", ram["int8"], caches["int8"], cut(full.order), None, False))
        for k in ("float16", "int8"):
            ooc = OutOfCoreTable(caches[k], "data", block_rows, window_blocks, fields[k])
            settings.append((f"disk {k}", ooc, caches[k], cut(block.order), block, True))
        staging = PinnedStaging(dev)
        times: dict[str, list[float]] = {name: [] for name, *_ in settings}
        loads = []
        for _ in range(rounds):
            before = os.getloadavg()[0]
            for name, table, cache, batches, plan, split in settings:
                if plan is not None:
                    table.start_epoch(plan)
                times[name].append(_epoch(table, cache, batches, staging, split))
                if plan is not None:
                    table.close()
            loads.append((round(before, 2), round(os.getloadavg()[0], 2)))
        served = len(cut(full.order)) * batch_size
        out = {name: {"rows_per_s": served / statistics.median(t), "rounds_rows_per_s": [served / x for x in t]}
               for name, t in times.items()}
        for mode in ("ram", "disk"):
            out[f"{mode} int8 / float16"] = {"median_round_ratio": statistics.median(
                a / b for a, b in zip(times[f"{mode} float16"], times[f"{mode} int8"], strict=True))}
        copied = {k: c.row_bytes(fields[k][:1] + fields[k][2:]) for k, c in caches.items()}
        return {"rows": rows, "dim": dim, "batch_size": batch_size, "device": str(dev), "load": loads,
                "feature_bytes_per_row": copied, "results": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(bench_dequant(rows=args.rows, dim=args.dim, batch_size=args.batch_size, rounds=args.rounds,
                                   device=args.device), indent=1))


if __name__ == "__main__":
    main()
