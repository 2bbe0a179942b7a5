"""torchrun support: both stages run under ``torchrun --nproc-per-node N -m featcache ...``.

featcache uses PyTorch's own engine: ``torch.distributed`` with NCCL on GPUs and gloo on CPUs, initialised from
the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without those variables
everything here is a no-op and featcache runs in one process.

* extract: the shards are dealt out round-robin (shard n goes to rank n mod world); every rank writes its own shards
  and records them in a per-rank sidecar; rank 0 merges the sidecars into the manifest once all ranks are done. The
  cache is the one a single process would write: same key, same rows.
* distill: every rank takes every world-th sample of the epoch's order (padded to equal length, as
  DistributedSampler does), the loss runs through DistributedDataParallel, and only rank 0 evaluates, prints and
  writes metrics and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """The process's place in a torchrun job (rank 0 of 1 outside torchrun); initialises the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    ctx = Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend)
    return ctx


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a bare ``cuda`` means this rank's GPU (LOCAL_RANK)."""
    ctx = context()
    if ctx.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier() -> None:
    if context().active:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not context().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_order(order, ctx: Context):
    """This rank's share of an epoch's order: padded to a multiple of the world size, then every world-th item."""
    import numpy as np

    if not ctx.active:
        return order
    n = len(order)
    total = -(-n // ctx.world) * ctx.world
    padded = np.concatenate([order, order[: total - n]]) if total > n else order
    return padded[ctx.rank :: ctx.world]
