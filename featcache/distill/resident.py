"""The device-resident loader (`distill --resident`): images, labels and cached rows held on the GPU.

For datasets that fit in device memory (CIFAR-10 train: 50,000 × 3 × 32 × 32 uint8 = 150 MB; ResNet50 rows:
50,000 × 2048 fp16 = 200 MB) an epoch need not be bound by CPU decode at all: the split is decoded once into a uint8
tensor on the device, and every batch is an index into it, its teacher rows one ``index_select`` on the device,
its augmentation (if any) done on the device. Same epoch order as ``JoinedLoader`` with ``--shuffle full`` for a
seed, so the two yield identical batches (tested).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from featcache.cache.format import FEATURES, LOGITS, PART_DATA, PART_NOISE
from featcache.cache.reader import FeatureCache
from featcache.datasets.base import ImageDataset
from featcache.distill.labels import Sampling, epoch_batches
from featcache.distill.loader import Batch, check_noise_rows, epoch_plan, shutdown_workers, split_rows
from featcache.errors import ConfigError
from featcache.transforms import TransformSpec, check_augment, crop_pad, noise_batch
from featcache.util import distributed


def device_augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``flip`` / ``pad-crop-flip`` on a uint8 batch on its device: the CIFAR recipe (zero padding by S/8, 4 px at
    32 px; random crop; horizontal flip), with per-sample randomness drawn from ``generator`` (on the batch's
    device)."""
    if kind == "none":
        return images
    b, _, h, w = images.shape
    dev = images.device
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None], images.flip(3), images)
    if kind == "flip":
        return out
    pad = crop_pad(h)
    padded = torch.nn.functional.pad(out, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])  # [B, H]
    cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])  # [B, W]
    idx_b = torch.arange(b, device=dev)[:, None, None]
    # Gather the crop for every sample at once: [B, C, H, W] via advanced indexing on (batch, row, col).
    crop = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return crop.permute(0, 3, 1, 2).contiguous()


class ResidentLoader:
    """Iterates ``Batch`` objects from device-resident tensors; call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        dataset: ImageDataset,
        caches: Sequence[FeatureCache],
        *,
        batch_size: int = 128,
        seed: int = 0,
        workers: int = 0,
        device: torch.device | str = "cpu",
        noise_per_batch: int = 0,
        drop_last: bool = False,
        transform: TransformSpec | None = None,
        augment: str = "none",
        max_bytes: int | None = None,
        check: bool = True,
        blocks: bool = False,
        sampling: Sampling | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.sampling = sampling
        check_augment(augment)
        self.dataset, self.caches = dataset, list(caches)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.noise_per_batch, self.augment = noise_per_batch, augment
        self.epoch = 0
        self.modes = ["resident"] * len(self.caches)
        self.shuffle = "full"
        if check:
            for c in self.caches:
                c.check_dataset(dataset, transform)
        check_noise_rows(self.caches, noise_per_batch)
        size = transform.image_size if transform is not None else None
        n = len(dataset)
        self.fields = [(FEATURES, LOGITS, *(c.block_fields if blocks else []), *c.join_fields) for c in self.caches]
        need = n * 3 * (size or 0) ** 2 + sum(n * c.row_bytes(f) for c, f in zip(self.caches, self.fields, strict=True))
        if max_bytes is not None and need > max_bytes:
            raise ConfigError(
                f"--resident needs {need / 2**30:.2f} GiB on {self.device} for images and teacher rows but "
                f"{max_bytes / 2**30:.2f} GiB are allowed; drop --resident to stream from the host"
            )
        self.images = self._decode_all(dataset, workers).to(self.device)
        self.labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64, device=self.device)
        self.tables = []  # per teacher: [features, logits, *blocks] on the device
        for c, f in zip(self.caches, self.fields, strict=True):
            rows = c.read_all(PART_DATA, fields=f)
            self.tables.append([torch.from_numpy(rows[name]).to(self.device) for name in f])
        self.noise: dict[str, Any] | None = None
        if noise_per_batch:
            m = self.caches[0].manifest.noise
            count = min(c.num_rows(PART_NOISE) for c in self.caches)
            noise_rows = [c.read_all(PART_NOISE, fields=f) for c, f in zip(self.caches, self.fields, strict=True)]
            self.noise = {
                "images": noise_batch(m.seed, np.arange(count), m.image_size).to(self.device),
                "tables": [[torch.from_numpy(r[name][:count]).to(self.device) for name in f]
                           for r, f in zip(noise_rows, self.fields, strict=True)],
                "count": count,
            }
        self._gen = torch.Generator(device=self.device)

    @staticmethod
    def _decode_all(dataset: ImageDataset, workers: int) -> torch.Tensor:
        loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=workers)
        parts = [images for images, _, _ in loader]
        shutdown_workers(loader)
        if not parts:
            raise ConfigError("--resident: the dataset is empty")
        return torch.cat(parts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._index_batches())

    def images_per_epoch(self) -> int:
        return sum(len(b) for b in self._index_batches())

    def _index_batches(self) -> list[np.ndarray]:
        """This epoch's batches of dataset indices: the host loader's order with --shuffle full (the same batches)."""
        ctx = distributed.context()
        plan = epoch_plan(len(self.dataset), seed=self.seed, epoch=self.epoch, shuffle="full", block_rows=1,
                          window_blocks=1)
        mine = distributed.shard_order(plan.order, ctx)  # under torchrun: this rank's share
        rng = np.random.default_rng([self.seed, self.epoch, 4] + ([ctx.rank] if ctx.active else []))
        return epoch_batches(mine, self.batch_size, self.drop_last, self.sampling, rng)

    def __iter__(self) -> Iterator[Batch]:
        ctx = distributed.context()
        index_batches = self._index_batches()
        self._gen.manual_seed(int(np.random.default_rng([self.seed, self.epoch, 2]).integers(2**62)))
        stops = range(len(index_batches))
        noise_order = None
        if self.noise is not None:
            # The host loader's draw, so both loaders pick the same noise rows for a seed.
            rng = np.random.default_rng([self.seed, self.epoch, 1] + ([ctx.rank] if ctx.active else []))
            count, need = self.noise["count"], self.noise_per_batch * len(stops)
            perm = np.concatenate([rng.permutation(count) for _ in range(-(-need // count))])[:need]
            noise_order = torch.from_numpy(perm).to(self.device)
        # One host-to-device copy of the whole epoch's order; every batch is a slice of it.
        flat = torch.from_numpy(np.concatenate(index_batches) if index_batches else np.empty(0, np.int64))
        flat = flat.to(self.device)
        ends = np.cumsum([len(b) for b in index_batches])
        for k, end in enumerate(ends):
            idx = flat[end - len(index_batches[k]):end]
            images = device_augment(self.images.index_select(0, idx), self.augment, self._gen)
            labels = self.labels.index_select(0, idx)
            tables = [[t.index_select(0, idx) for t in table] for table in self.tables]
            index, num_noise = idx, 0
            if noise_order is not None:
                nidx = noise_order[k * self.noise_per_batch : (k + 1) * self.noise_per_batch]
                num_noise = len(nidx)
                images = torch.cat([images, self.noise["images"].index_select(0, nidx)])
                tables = [[torch.cat([a, b.index_select(0, nidx)]) for a, b in zip(table, noise_table, strict=True)]
                          for table, noise_table in zip(tables, self.noise["tables"], strict=True)]
                index = torch.cat([idx, nidx])
            features, logits, blocks = split_rows([x for t in tables for x in t], self.caches, [len(t) for t in tables])
            if num_noise:  # TS-Learning: a random image is labelled by the (first) teacher's prediction
                labels = torch.cat([labels, logits[0][-num_noise:].float().argmax(1)])
            yield Batch(images, labels, index, num_noise, features, logits, blocks)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"resident on {self.device}: {len(self.dataset):,} images" + (
            f" + {len(self.caches)} teacher table(s)" if self.caches else "")


class ResidentSplit:
    """A split decoded once into a uint8 tensor on ``device`` and served in order, as ``(images, labels, index)``
    batches like a DataLoader's: evaluation of a resident run decodes its test images once, not once per epoch."""

    def __init__(self, dataset: ImageDataset, batch_size: int, workers: int, device: torch.device) -> None:
        self.batch_size = batch_size
        self.images = ResidentLoader._decode_all(dataset, workers).to(device)
        self.labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64, device=device)
        self.index = torch.arange(len(self.labels), device=device)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for a in range(0, len(self.labels), self.batch_size):
            b = a + self.batch_size
            yield self.images[a:b], self.labels[a:b], self.index[a:b]
