"""The order of an epoch: a function of (seed, epoch, shuffle mode, block layout) only, never of the storage mode,
so RAM and out-of-core tables yield identical batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHUFFLES = ("auto", "full", "block", "none")


@dataclass
class EpochPlan:
    order: np.ndarray  # dataset indices in visiting order
    blocks: np.ndarray  # block ids in the order their rows are first needed (block mode), else empty
    window: int  # blocks per shuffle window


def epoch_plan(n: int, *, seed: int, epoch: int, shuffle: str, block_rows: int, window_blocks: int) -> EpochPlan:
    """The visiting order of an epoch.

    ``full``: a uniform permutation. ``block``: blocks of ``block_rows`` consecutive rows in random order, rows
    shuffled within windows of ``window_blocks`` blocks. ``none``: dataset order.
    """
    rng = np.random.default_rng([seed, epoch])
    if shuffle == "none":
        return EpochPlan(np.arange(n, dtype=np.int64), np.arange(-(-n // block_rows)), window_blocks)
    if shuffle == "full":
        return EpochPlan(rng.permutation(n).astype(np.int64), np.empty(0, dtype=np.int64), window_blocks)
    n_blocks = -(-n // block_rows)
    blocks = rng.permutation(n_blocks).astype(np.int64)
    parts = []
    for w in range(0, n_blocks, window_blocks):
        rows = np.concatenate(
            [np.arange(b * block_rows, min((b + 1) * block_rows, n), dtype=np.int64)
             for b in blocks[w : w + window_blocks]]
        )
        parts.append(rng.permutation(rows))
    return EpochPlan(np.concatenate(parts) if parts else np.empty(0, dtype=np.int64), blocks, window_blocks)


# -- row tables ----------------------------------------------------------------------------------------------------
