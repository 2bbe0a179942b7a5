"""Pinned host slots that stage each batch's rows for an asynchronous copy to the device."""

from __future__ import annotations

from typing import Sequence

import torch

from featcache.cache.codec import dequantise
from featcache.cache.format import FEATURE_SCALE, LOGITS_INDEX, dense_logits
from featcache.cache.reader import FeatureCache


class PinnedStaging:
    """Pinned host slots through which each batch's gathered rows go to the device.

    A host→device copy from pageable memory first waits for the device stream to drain (a GPU stall every step); from
    pinned memory it is truly asynchronous. A slot is reused only after the event recorded behind its copies has
    completed, so a batch in flight is never overwritten.
    """

    def __init__(self, device: torch.device, slots: int = 4) -> None:
        self.device = device
        self.slots = slots
        self._bufs: dict[tuple[int, int], torch.Tensor] = {}
        self._events: list = [None] * slots
        self._next = 0

    def to_device(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.device.type != "cuda":
            return [t.to(self.device) for t in tensors]
        k = self._next % self.slots
        self._next += 1
        if self._events[k] is not None:
            self._events[k].synchronize()
        out = []
        for j, t in enumerate(tensors):
            buf = self._bufs.get((k, j))
            if buf is None or buf.dtype != t.dtype or buf.numel() < t.numel():
                buf = torch.empty(max(t.numel(), 1), dtype=t.dtype).pin_memory()
                self._bufs[(k, j)] = buf
            staged = buf[: t.numel()].view(t.shape)
            staged.copy_(t)
            out.append(staged.to(self.device, non_blocking=True))
        event = torch.cuda.Event()
        event.record()
        self._events[k] = event
        return out


def split_rows(rows: list[torch.Tensor], caches: Sequence[FeatureCache], counts: list[int]):
    """Per teacher: (features, logits, [blocks...], *cache.join_fields) tensors -> features, dense logits, blocks.

    Called on the device's copies: int8 rows are dequantised here, after the host→device copy moved half the bytes
    of float16 rows, and top-k logits are made dense here too."""
    features, logits, blocks, at = [], [], [], 0
    for cache, n in zip(caches, counts, strict=True):
        part = rows[at : at + n]
        at += n
        joined = cache.join_fields
        extra = dict(zip(joined, part[n - len(joined) :], strict=True))
        scale = extra.get(FEATURE_SCALE)
        features.append(part[0] if scale is None else dequantise(part[0], scale))
        top = extra.get(LOGITS_INDEX)
        logits.append(part[1] if top is None else dense_logits(part[1], top, cache.num_classes))
        blocks.append(list(part[2 : n - len(joined)]))
    return features, logits, blocks
