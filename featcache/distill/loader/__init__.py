"""The joined loader: images, labels and every teacher's cached rows, batch by batch.

Images are decoded and resized in DataLoader workers (uint8, the cache's own view); each sample carries its dataset
index. In the main process, each teacher's rows for the batch are fetched with **one vectorised gather** and
copied to the device next to the images. No teacher network exists anywhere in this path.

Two storage modes per teacher table:
  * ``ram``: the whole table (features + logits) is read once into memory; a batch is one ``index_select``
    into a pinned staging slot. Used when all tables fit the ``--cache-ram`` budget.
  * ``disk`` (out of core): the table stays in the HDF5 shards. Each epoch's order is built from contiguous blocks
    of rows (block-level shuffle) and a shuffle window of several blocks, so every read is a large contiguous
    hyperslab done ahead of time by a prefetch thread; random single-row reads (~5k rows/s) never happen.

The order of an epoch depends only on (seed, epoch, shuffle mode, block layout), never on the storage mode, so
the two modes yield identical batches for the same seed and shuffle mode.
"""
from __future__ import annotations

from featcache.distill.loader.joined import (
    EAGER_RAM_BYTES,
    Batch,
    JoinedLoader,
    check_noise_rows,
    check_views,
    shutdown_workers,
)
from featcache.distill.loader.order import SHUFFLES, EpochPlan, epoch_plan
from featcache.distill.loader.staging import PinnedStaging, split_rows
from featcache.distill.loader.tables import MODES, InMemoryTable, OutOfCoreTable
from featcache.util.runtime import available_ram, default_ram_budget, parse_bytes

__all__ = ["EAGER_RAM_BYTES", "MODES", "SHUFFLES", "Batch", "EpochPlan", "InMemoryTable", "JoinedLoader",
           "OutOfCoreTable", "PinnedStaging", "available_ram", "check_noise_rows", "check_views", "default_ram_budget",
           "epoch_plan", "parse_bytes", "shutdown_workers", "split_rows"]
