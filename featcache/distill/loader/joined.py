"""JoinedLoader: images from workers, each teacher's rows gathered per batch, staged to the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from featcache.cache.format import FEATURES, LOGITS, PART_DATA, PART_NOISE
from featcache.cache.reader import FeatureCache
from featcache.datasets.base import ImageDataset
from featcache.distill.labels import Sampling, epoch_batches
from featcache.distill.loader.order import SHUFFLES, EpochPlan, epoch_plan
from featcache.distill.loader.staging import PinnedStaging, split_rows
from featcache.distill.loader.tables import MODES, InMemoryTable, OutOfCoreTable
from featcache.distill.placement import EAGER_RAM_BYTES, Budget, TablePlan, plan_tables  # noqa: F401 - re-exported
from featcache.errors import CacheMismatchError, ConfigError, check_at_least, check_choice
from featcache.transforms import TransformSpec, noise_image
from featcache.util import distributed
from featcache.util.runtime import default_workers
from featcache.views import ViewSpec, apply_view, view_params, view_part


def check_noise_rows(caches: Sequence[FeatureCache], noise_per_batch: int) -> None:
    """Refuse --noise-per-batch unless every teacher cached noise rows of the same images (seed, size)."""
    if not noise_per_batch:
        return
    if noise_per_batch < 0:
        raise ConfigError(f"--noise-per-batch must be >= 0, got {noise_per_batch}")
    if not caches:
        raise ConfigError("--noise-per-batch needs a teacher: noise images are labelled by the teacher's argmax")
    first = None
    for cache in caches:
        noise = cache.manifest.noise
        if noise is None:
            raise ConfigError(
                f"--noise-per-batch needs noise rows, but cache {cache.key} has none; re-extract it with "
                "--noise N (e.g. --noise 10000)"
            )
        spec = (noise.seed, noise.image_size)
        if first is not None and spec != first:
            raise CacheMismatchError(
                f"caches disagree on the noise images (seed, size) {first} vs {spec} in {cache.key}; extract "
                "every teacher with the same --noise-seed and --image-size"
            )
        first = spec


def check_views(caches: Sequence[FeatureCache]) -> ViewSpec | None:
    """The views every teacher cached (all must agree), or None when none did."""
    specs = [c.manifest.views for c in caches]
    if not any(specs):
        return None
    if any(sp != specs[0] for sp in specs):
        raise CacheMismatchError(
            "the teachers' caches hold different views (" + "; ".join(f"{c.key}: {c.manifest.views}" for c in caches)
            + "); extract every teacher with the same --views/--view-policy/--view-seed, or pass --no-views"
        )
    return specs[0]


def shutdown_workers(loader: DataLoader | Any) -> None:  # or a loader like it
    """Stop a DataLoader's persistent workers now. Left to the garbage collector, the iterator can be inherited by
    the workers of a loader forked later and its finaliser then fails inside them."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None



@dataclass
class Batch:
    """One training batch on the device. Real samples come first, then ``num_noise`` random images."""

    images: torch.Tensor  # uint8 [B, 3, S, S]
    labels: torch.Tensor  # int64 [B]; noise rows carry the first teacher's argmax
    index: torch.Tensor  # int64 [B]; dataset index (noise rows: their noise index)
    num_noise: int
    features: list[torch.Tensor] = field(default_factory=list)  # per teacher [B, D_i], cache dtype
    logits: list[torch.Tensor] = field(default_factory=list)  # per teacher [B, C_i]
    blocks: list[list[torch.Tensor]] = field(default_factory=list)  # per teacher, per cached block [B, C·P·P]

    def __len__(self) -> int:
        return len(self.labels)


class _Items(Dataset):
    """Samples, their cached views and noise images in one code space: code v·n + i is view v of sample i
    (v = 0: the dataset's own view), codes from K·n on are noise images. Items return the code as their index."""

    def __init__(self, dataset: ImageDataset, noise_seed: int | None, noise_size: int | None,
                 views: ViewSpec | None = None, transform: TransformSpec | None = None) -> None:
        self.dataset = dataset
        self.n = len(dataset)
        self.noise_seed = noise_seed
        self.noise_size = noise_size
        self.views = views
        self.k = views.count if views else 1
        self.transform = transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, code: int):
        if code < self.n:
            image, label, _ = self.dataset[code]
            return image, label, code
        if code < self.k * self.n:  # replay the augmentation the teacher saw for this view
            v, i = divmod(code, self.n)
            raw = self.dataset.read_image(i)
            params = view_params(self.views, v, i, raw.shape[-2], raw.shape[-1], self.transform.image_size)
            return apply_view(raw, params, self.views, self.transform), int(self.dataset.targets[i]), code
        return noise_image(self.noise_seed, code - self.k * self.n, self.noise_size), -1, code


class _BatchSampler(Sampler):
    def __init__(self, loader: "JoinedLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.loader._batches())


class JoinedLoader:
    """Iterates ``Batch`` objects for one epoch at a time; call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        dataset: ImageDataset,
        caches: Sequence[FeatureCache],
        *,
        batch_size: int = 128,
        shuffle: str = "auto",
        seed: int = 0,
        workers: int | None = None,
        device: torch.device | str = "cpu",
        mode: str = "auto",
        ram_budget: "int | Budget | None" = None,
        block_rows: int = 1024,
        window_blocks: int | None = None,
        noise_per_batch: int = 0,
        drop_last: bool = False,
        transform: TransformSpec | None = None,
        check: bool = True,
        blocks: bool = False,
        views: bool = False,
        sampling: Sampling | None = None,
    ) -> None:
        check_choice("--shuffle", shuffle, SHUFFLES)
        check_choice("--cache-mode", mode, MODES)
        check_at_least("--batch-size", batch_size, 1)
        self.dataset = dataset
        self.caches = list(caches)
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.block_rows = block_rows
        self.noise_per_batch = noise_per_batch
        self.sampling = sampling
        self.epoch = 0
        if check:
            for cache in self.caches:
                cache.check_dataset(dataset, transform)
        check_noise_rows(self.caches, noise_per_batch)
        self.views = check_views(self.caches) if views else None
        self.k = self.views.count if self.views else 1
        if self.views is not None and transform is None:
            raise ConfigError("cached views need the cache's transform to be replayed")

        # Fields joined per teacher: features, logits and, for methods that use them, the cached blocks.
        # (top-k caches add the logits' class indices, last, to rebuild dense logits on the device)
        self.fields = [(FEATURES, LOGITS, *(c.block_fields if blocks else []), *c.join_fields) for c in self.caches]
        self.placement = self._place(mode, shuffle, views, ram_budget, window_blocks)
        self.modes, self.shuffle, self.window_blocks = (self.placement.modes, self.placement.shuffle,
                                                        self.placement.window_blocks)
        self._make_tables()
        self.workers = default_workers(self.device) if workers is None else workers
        self._loader = self._data_loader(transform)
        self._plan: EpochPlan | None = None
        self._staging = PinnedStaging(self.device)

    def _place(self, mode: str, shuffle: str, views: bool, ram_budget, window_blocks: int | None) -> TablePlan:
        """Each teacher's table in RAM or out of core, from one budget (featcache.distill.placement)."""
        budget = ram_budget if isinstance(ram_budget, Budget) else (
            Budget.of(None) if ram_budget is None else Budget(int(ram_budget), True))
        need = [self.k * c.num_rows(PART_DATA) * c.row_bytes(f) for c, f in zip(self.caches, self.fields, strict=True)]
        return plan_tables(need, [self.block_rows * c.row_bytes() for c in self.caches], mode=mode, shuffle=shuffle,
                           views=views, view_count=self.k if self.views is not None else 0, budget=budget,
                           labeled_share=self.sampling is not None and self.sampling.share is not None,
                           window_blocks=window_blocks)

    def _make_tables(self) -> None:
        self.tables = [
            (InMemoryTable(c, PART_DATA, f) if m == "ram"
             else OutOfCoreTable(c, PART_DATA, self.block_rows, self.window_blocks, f))
            for c, m, f in zip(self.caches, self.modes, self.fields, strict=True)
        ]
        self.noise_tables = (
            [InMemoryTable(c, PART_NOISE, f) for c, f in zip(self.caches, self.fields, strict=True)]
            if self.noise_per_batch else []
        )
        # Views 1..K-1 of every teacher (view 0 is the table above).
        self.view_tables = [[InMemoryTable(c, view_part(v), f) for v in range(1, self.k)]
                            for c, f in zip(self.caches, self.fields, strict=True)]

    def _data_loader(self, transform: TransformSpec | None) -> DataLoader:
        """The DataLoader that decodes this epoch's images (and replays views, makes noise) in the workers."""
        noise = self.caches[0].manifest.noise if (self.caches and self.noise_per_batch) else None
        self._items = _Items(self.dataset, noise.seed if noise else None, noise.image_size if noise else None,
                             self.views, transform)
        return DataLoader(
            self._items,
            batch_sampler=_BatchSampler(self),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )

    # -- ordering -----------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.sampling is not None:  # labelled-only or a fixed labelled share: count this epoch's batches
            return len(self._index_batches()[1])
        ctx = distributed.context()
        n = -(-len(self.dataset) // ctx.world)  # this rank's share (the whole epoch outside torchrun)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def images_per_epoch(self) -> int:
        """Dataset samples one epoch visits on this rank (noise images not counted)."""
        if self.sampling is not None:
            return sum(len(b) for b in self._index_batches()[1])
        return -(-len(self.dataset) // distributed.context().world)

    def _index_batches(self) -> tuple[EpochPlan, list[np.ndarray]]:
        """This epoch's plan and its batches of dataset indices (this rank's share under torchrun)."""
        plan = epoch_plan(
            len(self.dataset), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
            block_rows=self.block_rows, window_blocks=self.window_blocks,
        )
        ctx = distributed.context()
        order = distributed.shard_order(plan.order, ctx)  # under torchrun: this rank's share of the epoch
        rng = np.random.default_rng([self.seed, self.epoch, 4] + ([ctx.rank] if ctx.active else []))
        return plan, epoch_batches(order, self.batch_size, self.drop_last, self.sampling, rng)

    def _batches(self) -> list[list[int]]:
        plan, index_batches = self._index_batches()
        self._plan = plan
        ctx = distributed.context()
        if self.views is not None:
            # One cached view per sample per epoch, uniformly (view 0 included), the same on every rank.
            choice = np.random.default_rng([self.seed, self.epoch, 3]).integers(0, self.k, size=len(self.dataset))
            index_batches = [b + choice[b] * len(self.dataset) for b in index_batches]
        batches = [b.tolist() for b in index_batches]
        if self.noise_per_batch:
            count = min(c.num_rows(PART_NOISE) for c in self.caches)
            rng = np.random.default_rng([self.seed, self.epoch, 1] + ([ctx.rank] if ctx.active else []))
            need = self.noise_per_batch * len(batches)
            perm = np.concatenate([rng.permutation(count) for _ in range(-(-need // count))])[:need]
            offset = self.k * len(self.dataset)  # noise codes come after every sample's views
            for k, b in enumerate(batches):
                b.extend((offset + perm[k * self.noise_per_batch : (k + 1) * self.noise_per_batch]).tolist())
        return batches

    # -- iteration ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        it = iter(self._loader)  # draws the epoch plan through the batch sampler
        for t in self.tables:
            t.start_epoch(self._plan)
        try:
            for images, labels, index in it:
                yield self._join(images, labels, index)
        finally:
            for t in self.tables:
                if isinstance(t, OutOfCoreTable):
                    t.close()

    def iter_rows(self) -> Iterator[Batch]:
        """This epoch's batches with 1-pixel placeholder images: every teacher's rows joined exactly as ``__iter__``
        joins them (the epoch's plan and batches, the tables, staging), without the image pipeline: the join alone,
        as `featcache bench scale` times it."""
        if self.views is not None or self.noise_per_batch:
            codes = [np.asarray(b, dtype=np.int64) for b in self._batches()]  # views and noise: their codes
        else:
            self._plan, codes = self._index_batches()
        size = max((len(b) for b in codes), default=0)
        images, labels = torch.zeros((size, 3, 1, 1), dtype=torch.uint8), torch.zeros(size, dtype=torch.int64)
        for t in self.tables:
            t.start_epoch(self._plan)
        try:
            for b in codes:
                yield self._join(images[: len(b)], labels[: len(b)], torch.from_numpy(b))
        finally:
            for t in self.tables:
                if isinstance(t, OutOfCoreTable):
                    t.close()

    def _join(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Batch:
        codes = index.numpy()
        # noise items come last in every batch and carry label -1 (only a loader with noise rows has any)
        num_noise = int((labels < 0).sum()) if self.noise_per_batch else 0
        n_data = len(self.dataset)
        if self.views is None and not num_noise:  # codes are dataset indices: no per-batch arithmetic (bench scale)
            real, view_of, noise = codes, None, codes[:0]
        else:
            view_of, real = np.divmod(codes[: len(codes) - num_noise], n_data)  # which cached view, which sample
            noise = codes[len(codes) - num_noise :] - self.k * n_data
            index = torch.from_numpy(np.concatenate([real, noise]))
        dev = self.device
        nb = dev.type == "cuda"  # images, labels and index arrive pinned from the DataLoader
        rows: list[torch.Tensor] = []
        counts: list[int] = []
        for k, table in enumerate(self.tables):
            got = table.gather(real) if self.views is None else self._gather_views(k, real, view_of)
            if num_noise:
                got = tuple(torch.cat([a, b]) for a, b in zip(got, self.noise_tables[k].gather(noise), strict=True))
            rows += got
            counts.append(len(got))
        rows = self._staging.to_device(rows)
        features, logits, blocks = split_rows(rows, self.caches, counts)
        if dev.type != "cpu":  # on the CPU they are where they belong (each .to costs a dispatch per batch)
            images, labels, index = (t.to(dev, non_blocking=nb) for t in (images, labels, index))
        if num_noise:
            # TS-Learning: a random image is labelled by the teacher's prediction.
            labels[len(labels) - num_noise :] = logits[0][len(labels) - num_noise :].float().argmax(1)
        return Batch(images, labels, index, num_noise, features, logits, blocks)

    def _gather_views(self, k: int, rows: np.ndarray, view_of: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Teacher k's rows of each sample's chosen view: one gather per view present, scattered into place."""
        out = self.tables[k].gather(rows)  # view 0 for all, then overwrite the others
        for v in range(1, self.k):
            sel = np.flatnonzero(view_of == v)
            if len(sel):
                got = self.view_tables[k][v - 1].gather(rows[sel])
                where = torch.from_numpy(sel)
                for o, g in zip(out, got, strict=True):
                    o.index_copy_(0, where, g)
        return out

    def close(self) -> None:
        for t in self.tables:
            t.close()
        shutdown_workers(self._loader)

    def describe(self) -> str:
        parts = [f"{c.key}: {m}" for c, m in zip(self.caches, self.modes, strict=True)]
        return f"shuffle {self.shuffle}, " + (", ".join(parts) if parts else "no teachers")
