"""The device loop: batches in dataset order → teacher under autocast → pinned host buffers → the shard writers."""

from __future__ import annotations

import queue
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from featcache.cache.codec import RowEncoder, read_projection_file
from featcache.cache.format import (
    AUG,
    CONTENT,
    FEATURE_SCALE,
    LOGITS_INDEX,
    PART_DATA,
    PART_NOISE,
    Manifest,
    ShardInfo,
    block_field,
)
from featcache.cache.writer import BackgroundWriter, PartWriter
from featcache.config import ExtractConfig  # re-exported: the schema lives in featcache.config
from featcache.datasets import ImageDataset
from featcache.errors import (
    CacheError,
    ConfigError,
    DatasetError,
)
from featcache.extract.manifest import check_space, pending_rows
from featcache.extract.plan import ExtractPlan
from featcache.models.teachers import Teacher
from featcache.specs import BlockSpec
from featcache.transforms import Geometry, NoiseDataset, Normalizer
from featcache.util.hashing import file_sha256
from featcache.util.progress import Reporter
from featcache.util.runtime import autocast, default_workers, use_cpu_threads
from featcache.views import ViewDataset, view_part


class DigestedSamples(Dataset):
    """The split's samples, each with the content digest of the bytes it was decoded from (read once)."""

    def __init__(self, dataset: ImageDataset, geometry) -> None:
        self.dataset = dataset
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, digest = self.dataset.read_with_digest(index)
        return self.geometry(image), int(self.dataset.targets[index]), index, digest


class Batches(Dataset):
    """Batch ``k`` of ``rows`` of ``source``, assembled in one call (in a worker when there are workers): the images
    copied into one uint8 [B, 3, S, S] tensor as they are decoded, with labels, indices and any per-sample extras
    (content digests, augmentation parameters). The DataLoader's per-sample fetch and collate cost about 45 µs per
    image, as much as the JPEG decode itself at 32 px; on the CPU that time is taken from the teacher."""

    def __init__(self, source: Dataset, rows: np.ndarray, batch_size: int) -> None:
        self.source, self.rows, self.batch_size = source, np.asarray(rows, dtype=np.int64), batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, k: int):
        idx = self.rows[k * self.batch_size : (k + 1) * self.batch_size]
        first = self.source[int(idx[0])]
        images = torch.empty((len(idx), *first[0].shape), dtype=first[0].dtype)
        labels = np.empty(len(idx), dtype=np.int64)
        extras: list[list[Any]] = [[] for _ in first[3:]]
        for j, i in enumerate(idx):
            item = first if j == 0 else self.source[int(i)]
            if item[0].shape != images.shape[1:]:
                raise DatasetError(f"sample {int(i)} is {list(item[0].shape)} after the transform, not "
                                   f"{list(images.shape[1:])}; a transform must give every image one size")
            images[j] = item[0]
            labels[j] = item[1]
            for e, v in zip(extras, item[3:], strict=True):
                e.append(v)
        out = [torch.stack(e) if isinstance(e[0], torch.Tensor) else torch.as_tensor(np.asarray(e, dtype=np.int64))
               for e in extras]
        return (images, torch.from_numpy(labels), torch.from_numpy(idx.copy()), *out)


class HostBuffers:
    """A small pool of pinned host buffers: the GPU copies outputs into one while the writer drains another."""

    def __init__(self, n: int, rows: int, dim: int, classes: int, dtype: torch.dtype, logits_dtype: torch.dtype):
        self._free: queue.Queue = queue.Queue()
        for _ in range(n):
            self._free.put(
                (
                    torch.empty((rows, dim), dtype=dtype, pin_memory=True),
                    torch.empty((rows, classes), dtype=logits_dtype, pin_memory=True),
                )
            )

    def get(self):
        return self._free.get()

    def put(self, buf) -> None:
        self._free.put(buf)


def block_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule ``name`` of a teacher, named as in its ``block_root()`` (e.g. layer3 of a torchvision ResNet)."""
    root = model.block_root() if hasattr(model, "block_root") else model  # type: ignore[operator]  # duck-typed: checked by hasattr
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = ", ".join(n for n, _ in root.named_children())
        raise ConfigError(f"--blocks {name}: the teacher has no such module; its top-level modules are: "
                          f"{names}") from None


def attach_block_hooks(model: torch.nn.Module, names: list[str]):
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            if not (isinstance(output, torch.Tensor) and output.dim() == 4):
                raise ConfigError(f"--blocks {name}: its output is not a [B, C, H, W] feature map")
            captured[name] = output
        hooks.append(block_module(model, name).register_forward_hook(hook))
    return hooks, captured


def describe_blocks(model, captured, cfg: ExtractConfig, plan: ExtractPlan, device) -> list[BlockSpec]:
    """Channels of each block, from one forward pass on a blank image (the manifest needs them before any write)."""
    size = plan.transform.image_size
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size, device=device))
    return [BlockSpec(n, int(captured[n].shape[1]), cfg.pool, int(captured[n].shape[1]) * cfg.pool * cfg.pool)
            for n in cfg.blocks]


def row_encoder(plan: ExtractPlan, manifest: Manifest) -> RowEncoder:
    """What the sweep stores for each batch of features: projected through the recorded file (extract --project,
    featcache.extract.project), then cast or quantised."""
    projection: tuple[np.ndarray, np.ndarray] | str | None = None
    p = manifest.projection
    if p is not None:
        path = plan.work / p.file
        if not path.is_file() or path.stat().st_size != p.bytes or file_sha256(path) != p.sha256:
            raise CacheError(f"cache {plan.key}: projection file {p.file} changed while the extract ran; re-run it")
        projection = read_projection_file(path, p.dim, p.source_dim)
        if isinstance(projection, str):
            raise CacheError(f"cache {plan.key}: projection file {p.file} is unreadable ({projection}); re-run the "
                             "extract with --force")
    return RowEncoder(manifest, projection, plan.device)  # type: ignore[arg-type]  # a str was refused above


MANIFEST_EVERY = 1.0  # seconds between manifest saves during a sweep (and once at its end)


def _parts(sources: list) -> str:
    """``24 data + 240 in 10 views`` for the progress message."""
    data = sum(len(rows) for part, _, rows in sources if part == PART_DATA)
    noise = sum(len(rows) for part, _, rows in sources if part == PART_NOISE)
    views = [len(rows) for part, _, rows in sources if part not in (PART_DATA, PART_NOISE)]
    words = [f"{data:,} data"] if data else []
    words += [f"{noise:,} noise"] if noise else []
    words += [f"{sum(views):,} in {len(views)} view(s)"] if views else []
    return " + ".join(words)


def run_sweep(plan: ExtractPlan, teacher: Teacher, manifest: Manifest, reporter: Reporter, *, shard_filter=None,
         on_shard=None, save_manifest: bool = True) -> tuple[int, float]:
    """Extract every pending row of every part (of the shards ``shard_filter`` accepts: a torchrun rank's share).
    Returns (images, seconds)."""
    cfg = plan.config
    device = plan.device
    teacher_pass = TeacherPass(plan, teacher, manifest)
    if cfg.blocks and not manifest.blocks:
        manifest.blocks = describe_blocks(teacher_pass.model, teacher_pass.captured, cfg, plan, device)
        if save_manifest:
            manifest.save(plan.work)
    recorder = ShardRecorder(plan, manifest, on_shard=on_shard, save_manifest=save_manifest)
    writers, writer, pool = open_writers(plan, teacher, manifest, teacher_pass, recorder.on_done)
    sources = pending_sources(plan, manifest, shard_filter)
    total = announce(plan, teacher, manifest, reporter, sources, writers)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    use_cpu_threads(device, workers)
    images = 0
    reporter.start(total, f"extract {teacher.name}", unit="img")
    recorder.start()
    try:
        with torch.inference_mode():
            images = sweep_batches(plan, teacher_pass, sources, writer, pool, reporter, workers)
        writer.close()
        recorder.record(force=True)
    except BaseException:
        abandon(writer, writers, recorder)
        raise
    finally:
        reporter.stop()
        teacher_pass.remove_hooks()
    seconds = time.perf_counter() - recorder.started
    return images, seconds


class TeacherPass:
    """The teacher on the device, ready for the sweep (eval mode, channels_last, hooks on ``--blocks``), and what
    one batch through it stores: the encoded features, the (top-k) logits and the per-row extra fields."""

    def __init__(self, plan: ExtractPlan, teacher: Teacher, manifest: Manifest) -> None:
        self.plan, self.cfg, self.device = plan, plan.config, plan.device
        model = teacher.model.to(self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        self.model = model
        self.normalize = Normalizer(plan.transform, self.device)
        self.feat_dtype = getattr(torch, self.cfg.dtype)
        self.encoder = row_encoder(plan, manifest)
        self.logit_dtype = getattr(torch, self.cfg.logits_dtype)
        self.hooks, self.captured = attach_block_hooks(model, self.cfg.blocks)

    def outputs(self, part: str, batch: torch.Tensor, extra: list) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(features, logits, blocks) of one batch of ``part``; ``extra``: data: content digests; views:
        augmentation."""
        cfg = self.cfg
        x = self.normalize(batch, channels_last=cfg.channels_last)
        with autocast(self.device, self.plan.precision):
            features, logits = self.model(x)
        blocks = {(CONTENT if part == PART_DATA else AUG): extra[0].numpy()} if extra else {}
        if cfg.topk_logits:
            if cfg.topk_logits > logits.shape[1]:
                raise ConfigError(f"--topk-logits {cfg.topk_logits} exceeds the teacher's "
                                  f"{logits.shape[1]} classes")
            logits, top = logits.float().topk(cfg.topk_logits, dim=1)
            blocks[LOGITS_INDEX] = top.to(torch.int32).cpu().numpy()
        features, scale = self.encoder.encode(features)  # the stored rows: projected, cast or quantised
        if scale is not None:  # int8: the per-row scales, small, copied synchronously like the blocks
            blocks[FEATURE_SCALE] = scale.cpu().numpy()
        logits = logits.to(self.logit_dtype)
        if cfg.blocks:  # pooled on the device, copied synchronously (they are small)
            blocks.update({
                block_field(name): F.adaptive_avg_pool2d(self.captured[name].float(), cfg.pool)
                .flatten(1).to(self.feat_dtype).cpu().numpy()
                for name in cfg.blocks
            })
        return features, logits, blocks

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()


class ShardRecorder:
    """The writers' callback for each finished shard, and the manifest saves a killed extract resumes from (not made
    when ``save_manifest`` is false; with ``on_shard``, a torchrun rank's, the shards go there instead)."""

    def __init__(self, plan: ExtractPlan, manifest: Manifest, *, on_shard=None, save_manifest: bool = True) -> None:
        self.plan, self.manifest, self.on_shard, self.save_manifest = plan, manifest, on_shard, save_manifest
        # The manifest's timing covers every attempt: each recorded shard brings the wall time up to it and its rows,
        # so a killed extract's finished shards keep their share and the resumed one adds to it.
        self.base_seconds, self.base_rows, self.done_rows = manifest.timing.seconds, manifest.timing.images, 0
        self.saved = time.monotonic()
        self.started = 0.0  # set by start(), when the sweep's clock starts

    def start(self) -> None:
        self.started = time.perf_counter()

    def record(self, force: bool = False) -> None:
        """Write the manifest (what a killed extract resumes from) at most once per MANIFEST_EVERY seconds: its
        size grows with the shards, so a save per shard would cost O(shards²). A shard finished since the last save
        is redone by a resume."""
        if self.save_manifest and (force or time.monotonic() - self.saved >= MANIFEST_EVERY):
            self.manifest.save(self.plan.work)
            self.saved = time.monotonic()

    def on_done(self, info: ShardInfo) -> None:
        if self.on_shard is not None:
            self.on_shard(info)
            return
        self.done_rows += info.rows
        self.manifest.timing.seconds = round(self.base_seconds + time.perf_counter() - self.started, 3)
        self.manifest.timing.images = self.base_rows + self.done_rows
        self.manifest.shards.append(info)
        self.record()


def open_writers(plan: ExtractPlan, teacher: Teacher, manifest: Manifest, teacher_pass: TeacherPass, on_done):
    """(writers of every part, the background writer over them, the pinned host buffers on CUDA else None)."""
    cfg, device = plan.config, plan.device
    writers: dict[str, PartWriter] = {}
    for part in manifest.rows:
        writers[part] = PartWriter(plan.work, manifest, part, on_done)
    writer = BackgroundWriter(writers, max_pending=4, threaded=device.type != "cpu")
    pool = None
    if device.type == "cuda":
        pool = HostBuffers(4, cfg.batch_size, manifest.feature_dim, cfg.topk_logits or teacher.num_classes,
                           teacher_pass.feat_dtype, teacher_pass.logit_dtype)
    return writers, writer, pool


def pending_sources(plan: ExtractPlan, manifest: Manifest, shard_filter) -> list[tuple[str, Any, np.ndarray]]:
    """(part, dataset, pending rows) of each part with rows left to write: data, noise, then the views."""
    sources: list[tuple[str, Any, np.ndarray]] = []
    data_rows = pending_rows(manifest, PART_DATA, shard_filter)
    if len(data_rows):
        sources.append((PART_DATA, DigestedSamples(plan.dataset, Geometry(plan.transform)), data_rows))
    if plan.noise is not None:
        noise_rows = pending_rows(manifest, PART_NOISE, shard_filter)
        if len(noise_rows):
            sources.append((PART_NOISE, NoiseDataset(plan.noise), noise_rows))
    for v in range(1, plan.views.count if plan.views else 1):
        view_rows = pending_rows(manifest, view_part(v), shard_filter)
        if len(view_rows):
            sources.append((view_part(v), ViewDataset(plan.dataset, plan.views, v, plan.transform), view_rows))
    return sources


def announce(plan: ExtractPlan, teacher: Teacher, manifest: Manifest, reporter: Reporter, sources: list,
             writers: dict[str, PartWriter]) -> int:
    """Check the disk has room for the pending shards and say what will be written; returns the rows to write."""
    total = sum(len(r) for _, _, r in sources)
    need = check_space(plan.work, {part: rows for part, _, rows in sources}, writers, manifest.shard_rows)
    if total:
        shards = sum(-(-len(rows) // manifest.shard_rows) for _, _, rows in sources)
        reporter.message(f"extract {teacher.name}: {total:,} rows to write ({_parts(sources)}) in {shards:,} shard(s), "
                         f"about {need / 2**20:,.1f} MiB, into {plan.store}")
        reporter.message(f"view {plan.transform.describe()}")  # what the teacher will see, before it sees it
    return total


def sweep_batches(plan: ExtractPlan, teacher_pass: TeacherPass, sources: list, writer: BackgroundWriter,
                  pool: HostBuffers | None, reporter: Reporter, workers: int) -> int:
    """Every batch of every source through the teacher and into the writer; returns the images done."""
    cfg, device = plan.config, plan.device
    images = 0
    for part, source, rows in sources:
        loader = DataLoader(
            Batches(source, rows, cfg.batch_size),
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            persistent_workers=False,
        )
        for batch, _labels, index, *extra in loader:  # data: content digests; views: augmentation
            features, logits, blocks = teacher_pass.outputs(part, batch, extra)
            idx = index.numpy()
            submit(writer, pool, part, idx, features, logits, blocks)
            images += len(idx)
            reporter.advance(len(idx))
    return images


def submit(writer: BackgroundWriter, pool: HostBuffers | None, part: str, idx: np.ndarray, features: torch.Tensor,
           logits: torch.Tensor, blocks: dict) -> None:
    """Hand one batch's rows to the writer: on CUDA through a pinned buffer, written once its copy has landed."""
    if pool is not None:
        fbuf, lbuf = pool.get()
        n = len(idx)
        fbuf[:n].copy_(features, non_blocking=True)
        lbuf[:n].copy_(logits, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        writer.submit(
            part, idx, fbuf[:n].numpy(), lbuf[:n].numpy(), idx,
            ready=event.synchronize, release=lambda b=(fbuf, lbuf): pool.put(b), blocks=blocks,
        )
    else:
        writer.submit(part, idx, features.numpy(), logits.numpy(), idx, blocks=blocks)


def abandon(writer: BackgroundWriter, writers: dict[str, PartWriter], recorder: ShardRecorder) -> None:
    """After an error (or an interrupt): stop the writers, drop their unfinished shards and save the manifest, so a
    resume keeps the shards that did finish. Errors here are swallowed: the original one is the one to report."""
    try:
        writer.close()
    except BaseException:  # noqa: BLE001 - the original error is the one to report
        pass
    for w in writers.values():
        w.abort()
    try:
        recorder.record(force=True)  # keep the shards that did finish for the resume
    except BaseException:  # noqa: BLE001 - the original error is the one to report
        pass
