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

import re
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from featcache import distributed
from featcache.cache.format import FEATURES, LOGITS, PART_DATA, PART_NOISE, dense_logits
from featcache.cache.reader import FeatureCache
from featcache.datasets.base import ImageDataset
from featcache.errors import CacheMismatchError, ConfigError, check_at_least, check_choice
from featcache.runtime import default_workers
from featcache.transforms import TransformSpec, noise_image
from featcache.views import ViewSpec, apply_view, view_params, view_part

SHUFFLES = ("auto", "full", "block", "none")
MODES = ("auto", "ram", "disk")


# -- sizes and budgets ---------------------------------------------------------------------------------------------


def parse_bytes(text: str | int | None, flag: str = "--cache-ram") -> int | None:
    """'8G', '512M', '1.5GB', 1234 -> bytes; None/'auto' -> None."""
    if text is None or text == "auto":
        return None
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 8G, 512M or auto", flag=flag)
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def available_ram() -> int:
    """Bytes of memory available now (Linux MemAvailable), else a conservative 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def default_ram_budget() -> int:
    return available_ram() // 2


# -- epoch order ---------------------------------------------------------------------------------------------------


# Teacher tables up to this size are loaded into RAM by --cache-mode auto (about a second from the page cache);
# larger ones stream out of core unless --shuffle full or cached views ask for RAM.
EAGER_RAM_BYTES = 1 << 30


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


class InMemoryTable:
    """A teacher's features and logits for one part, in RAM; gather = one index_select per field.

    The table itself is not pinned (pinning gigabytes is slow and scarce); each batch's gathered rows go through a
    small ring of pinned slots instead (PinnedStaging), which is what makes the host→device copy asynchronous.
    """

    mode = "ram"

    def __init__(self, cache: FeatureCache, part: str, fields: Sequence[str] = (FEATURES, LOGITS)) -> None:
        arrays = cache.read_all(part, fields=tuple(fields))
        self.fields = tuple(fields)
        self.arrays = [arrays[f] for f in self.fields]

    def start_epoch(self, plan: EpochPlan) -> None:
        pass

    def gather(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The rows ``idx`` of every field, in field order (features, logits, then any blocks), in fresh arrays.

        ``np.take`` on one thread: torch's ``index_select`` spreads a gather this small over the intra-op threads,
        and on a loaded 2-core box it fell from 2M to 21-81k rows/s in some runs (issue 13); np.take held 1.5-2M."""
        index = np.ascontiguousarray(idx, dtype=np.int64)
        return tuple(torch.from_numpy(np.take(a, index, axis=0)) for a in self.arrays)

    def close(self) -> None:
        pass


class OutOfCoreTable:
    """A table read from the shards in contiguous blocks by a prefetch thread, into a ring of block slots.

    It serves a block-mode epoch plan: windows of ``window`` blocks are loaded in plan order, at most two windows
    ahead of the batch being served; windows behind it are recycled. A gather maps rows to slots with one
    vectorised index.
    """

    mode = "disk"

    def __init__(self, cache: FeatureCache, part: str, block_rows: int, window_blocks: int,
                 fields: Sequence[str] = (FEATURES, LOGITS)) -> None:
        self.cache = cache
        self.part = part
        self.block_rows = block_rows
        self.window = window_blocks
        self.n = cache.num_rows(part)
        self.n_blocks = -(-self.n // block_rows)
        self.capacity = 4 * window_blocks  # current, boundary, and two windows of read-ahead
        self.fields = tuple(fields)
        self._buf = cache.empty_rows(self.capacity * block_rows, self.fields)
        self._slot = np.full(self.n_blocks, -1, dtype=np.int64)
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._error: BaseException | None = None

    # The prefetch thread ------------------------------------------------------------------------------------------
    def start_epoch(self, plan: EpochPlan) -> None:
        if len(plan.blocks) == 0:
            raise ConfigError(
                "out-of-core teacher tables need a block order (--shuffle block or none); "
                "--shuffle full needs the tables in RAM (raise --cache-ram)"
            )
        self.close()
        self._slot[:] = -1
        self._windows = [plan.blocks[w : w + self.window] for w in range(0, len(plan.blocks), self.window)]
        self._window_of = np.empty(self.n_blocks, dtype=np.int64)
        for w, blocks in enumerate(self._windows):
            self._window_of[blocks] = w
        self._free = list(range(self.capacity))
        self._loaded_upto = -1  # windows [0, _loaded_upto] are resident (or were and got recycled)
        self._oldest = 0  # first window still resident
        self._stop = False
        self._error = None
        self._thread = threading.Thread(target=self._prefetch, name=f"featcache-rows-{self.part}", daemon=True)
        self._thread.start()

    def _prefetch(self) -> None:
        try:
            for w, blocks in enumerate(self._windows):
                with self._cv:
                    while not self._stop and len(self._free) < len(blocks):
                        self._cv.wait()
                    if self._stop:
                        return
                    slots = [self._free.pop() for _ in blocks]
                for b, s in zip(blocks, slots):
                    start, stop = int(b) * self.block_rows, min((int(b) + 1) * self.block_rows, self.n)
                    self.cache.read_range_into(start, stop, self._buf, s * self.block_rows, part=self.part)
                with self._cv:
                    self._slot[blocks] = slots
                    self._loaded_upto = w
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by gather()
            with self._cv:
                self._error = exc
                self._cv.notify_all()

    def gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return tuple(torch.from_numpy(self._buf[f][:0].copy()) for f in self.fields)
        blocks = idx // self.block_rows
        windows = self._window_of[blocks]
        lo, hi = int(windows.min()), int(windows.max())
        with self._cv:
            # Recycle windows the order has moved past, then wait for the ones this batch needs.
            while self._oldest < lo:
                old = self._windows[self._oldest]
                if self._oldest <= self._loaded_upto:
                    self._free.extend(int(s) for s in self._slot[old])
                    self._slot[old] = -1
                self._oldest += 1
                self._cv.notify_all()
            while self._loaded_upto < hi and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            rows = self._slot[blocks] * self.block_rows + idx % self.block_rows
        return tuple(torch.from_numpy(self._buf[f][rows]) for f in self.fields)

    def close(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None


# -- the loader ----------------------------------------------------------------------------------------------------


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
        if not noise or not noise.get("count"):
            raise ConfigError(
                f"--noise-per-batch needs noise rows, but cache {cache.key} has none; re-extract it with "
                "--noise N (e.g. --noise 10000)"
            )
        spec = (noise["seed"], noise["image_size"])
        if first is not None and spec != first:
            raise CacheMismatchError(
                f"caches disagree on the noise images (seed, size) {first} vs {spec} in {cache.key}; extract "
                "every teacher with the same --noise-seed and --image-size"
            )
        first = spec




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
    """Per teacher: (features, logits, [blocks...], [logits_index]) tensors -> features, dense logits, blocks."""
    features, logits, blocks, at = [], [], [], 0
    for cache, n in zip(caches, counts):
        part = rows[at : at + n]
        at += n
        top = cache.manifest.topk_logits
        features.append(part[0])
        logits.append(dense_logits(part[1], part[-1], cache.num_classes) if top else part[1])
        blocks.append(list(part[2 : n - (1 if top else 0)]))
    return features, logits, blocks


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
    return ViewSpec.from_dict(specs[0])


def shutdown_workers(loader: DataLoader) -> None:
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
        ram_budget: int | None = None,
        block_rows: int = 1024,
        window_blocks: int | None = None,
        noise_per_batch: int = 0,
        drop_last: bool = False,
        transform: TransformSpec | None = None,
        check: bool = True,
        blocks: bool = False,
        views: bool = False,
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
        self.epoch = 0
        if check:
            for cache in self.caches:
                cache.check_dataset(dataset, transform)
        check_noise_rows(self.caches, noise_per_batch)
        self.views = check_views(self.caches) if views else None
        self.k = self.views.count if self.views else 1
        if self.views is not None and transform is None:
            raise ConfigError("cached views need the cache's transform to be replayed")

        # Storage mode per teacher: RAM while the budget lasts, then out of core.
        budget = default_ram_budget() if ram_budget is None else ram_budget
        # Fields joined per teacher: features, logits and, for methods that use them, the cached blocks.
        # (top-k caches add the logits' class indices, last, to rebuild dense logits on the device)
        self.fields = [(FEATURES, LOGITS, *(c.block_fields if blocks else []), *c.join_fields) for c in self.caches]
        need = [self.k * c.num_rows(PART_DATA) * c.row_bytes(f) for c, f in zip(self.caches, self.fields)]
        if mode == "auto" and shuffle == "auto" and not views and sum(need) > EAGER_RAM_BYTES:
            # Streaming serves 200k+ rows/s, 100x what any student here consumes (docs/benchmarks.md), so a large
            # table gains nothing from RAM but its load time and footprint (1.2M rows: 14-20 s and 5.9 GB).
            budget = min(budget, EAGER_RAM_BYTES)
        modes, used = [], 0
        for n in need:
            fits = mode == "ram" or (mode == "auto" and used + n <= budget)
            modes.append("ram" if fits else "disk")
            used += n if fits else 0
        self.modes = modes
        if self.views is not None and "disk" in modes:
            raise ConfigError(
                f"cached views need the teacher tables in RAM ({sum(need) / 2**30:.1f} GiB for {self.k} views); raise "
                "--cache-ram, or pass --no-views to train on the evaluation view only"
            )
        if shuffle == "auto":
            shuffle = "block" if "disk" in modes else "full"
        if shuffle == "full" and "disk" in modes:
            raise ConfigError(
                f"the teacher tables need {sum(need) / 2**30:.1f} GiB but --cache-ram allows {budget / 2**30:.1f} GiB; "
                "out-of-core tables need --shuffle block (or auto); --shuffle full needs a larger --cache-ram"
            )
        self.shuffle = shuffle
        if window_blocks is None:
            # Out-of-core tables hold 4 windows of blocks each; size the windows from what the budget has left.
            disk = [c for c, m in zip(self.caches, modes) if m == "disk"]
            left = max(budget - used, 256 * 2**20)
            per_block = max((4 * block_rows * c.row_bytes() for c in disk), default=1)
            window_blocks = int(np.clip(left // (max(1, len(disk)) * per_block), 1, 16))
        self.window_blocks = window_blocks
        pin = self.device.type == "cuda"
        self.tables = [
            (InMemoryTable(c, PART_DATA, f) if m == "ram"
             else OutOfCoreTable(c, PART_DATA, block_rows, self.window_blocks, f))
            for c, m, f in zip(self.caches, modes, self.fields)
        ]
        self.noise_tables = (
            [InMemoryTable(c, PART_NOISE, f) for c, f in zip(self.caches, self.fields)] if self.noise_per_batch else []
        )
        # Views 1..K-1 of every teacher (view 0 is the table above).
        self.view_tables = [[InMemoryTable(c, view_part(v), f) for v in range(1, self.k)]
                            for c, f in zip(self.caches, self.fields)]
        noise = self.caches[0].manifest.noise if (self.caches and self.noise_per_batch) else None
        self._items = _Items(dataset, noise["seed"] if noise else None, noise["image_size"] if noise else None,
                             self.views, transform)
        self.workers = default_workers(self.device) if workers is None else workers
        self._loader = DataLoader(
            self._items,
            batch_sampler=_BatchSampler(self),
            num_workers=self.workers,
            pin_memory=pin,
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )
        self._plan: EpochPlan | None = None
        self._staging = PinnedStaging(self.device)

    # -- ordering -----------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        ctx = distributed.context()
        n = -(-len(self.dataset) // ctx.world)  # this rank's share (the whole epoch outside torchrun)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[list[int]]:
        plan = epoch_plan(
            len(self.dataset), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
            block_rows=self.block_rows, window_blocks=self.window_blocks,
        )
        self._plan = plan
        ctx = distributed.context()
        order = distributed.shard_order(plan.order, ctx)  # under torchrun: this rank's share of the epoch
        n, bs = len(order), self.batch_size
        stops = range(bs, n + (0 if self.drop_last else bs), bs)
        if self.views is not None:
            # One cached view per sample per epoch, uniformly (view 0 included), the same on every rank.
            choice = np.random.default_rng([self.seed, self.epoch, 3]).integers(0, self.k, size=len(self.dataset))
            order = order + choice[order] * len(self.dataset)
        batches = [order[s - bs : min(s, n)].tolist() for s in stops]
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

    def _join(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Batch:
        codes = index.numpy()
        num_noise = int((labels < 0).sum())  # noise items come last in every batch and carry label -1
        n_data = len(self.dataset)
        view_of, real = np.divmod(codes[: len(codes) - num_noise], n_data)  # which cached view, which sample
        noise = codes[len(codes) - num_noise :] - self.k * n_data
        index = torch.from_numpy(np.concatenate([real, noise]))
        dev = self.device
        nb = dev.type == "cuda"  # images, labels and index arrive pinned from the DataLoader
        rows, counts = [], []
        for k, table in enumerate(self.tables):
            got = table.gather(real) if self.views is None else self._gather_views(k, real, view_of)
            if num_noise:
                got = tuple(torch.cat([a, b]) for a, b in zip(got, self.noise_tables[k].gather(noise)))
            rows += got
            counts.append(len(got))
        rows = self._staging.to_device(rows)
        features, logits, blocks = split_rows(rows, self.caches, counts)
        labels = labels.to(dev, non_blocking=nb)
        if num_noise:
            # TS-Learning: a random image is labelled by the teacher's prediction.
            labels[len(labels) - num_noise :] = logits[0][len(labels) - num_noise :].float().argmax(1)
        return Batch(images.to(dev, non_blocking=nb), labels, index.to(dev, non_blocking=nb), num_noise, features,
                     logits,
                     blocks)

    def _gather_views(self, k: int, rows: np.ndarray, view_of: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Teacher k's rows of each sample's chosen view: one gather per view present, scattered into place."""
        out = self.tables[k].gather(rows)  # view 0 for all, then overwrite the others
        for v in range(1, self.k):
            sel = np.flatnonzero(view_of == v)
            if len(sel):
                got = self.view_tables[k][v - 1].gather(rows[sel])
                where = torch.from_numpy(sel)
                for o, g in zip(out, got):
                    o.index_copy_(0, where, g)
        return out

    def close(self) -> None:
        for t in self.tables:
            t.close()
        shutdown_workers(self._loader)

    def describe(self) -> str:
        parts = [f"{c.key}: {m}" for c, m in zip(self.caches, self.modes)]
        return f"shuffle {self.shuffle}, " + (", ".join(parts) if parts else "no teachers")


__all__ = [
    "Batch",
    "EpochPlan",
    "InMemoryTable",
    "JoinedLoader",
    "OutOfCoreTable",
    "PinnedStaging",
    "epoch_plan",
    "parse_bytes",
]
