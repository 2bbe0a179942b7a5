"""Stage 1: run a teacher once over a dataset split and write its features and logits into a cache.

    >>> from featcache.extract import ExtractConfig, extract
    >>> result = extract(ExtractConfig(teacher="resnet50", weights="random", dataset="synthetic"))
    >>> result.key

The pass is one sweep in dataset order: uint8 batches from DataLoader workers (decode + resize + crop), a
non-blocking copy to the device, normalisation and the teacher under ``inference_mode`` + autocast in
channels_last, then a non-blocking copy of the outputs into pinned host buffers that a background thread writes
to HDF5 once a CUDA event says they have landed. The GPU never waits on disk.

Re-running a finished extract is a no-op (same inputs, same key); an interrupted one resumes, redoing only shards
that are not recorded in the manifest.
"""

from __future__ import annotations

import datetime as _dt
import platform
import queue
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from featcache import __version__, distributed
from featcache.cache.format import (
    AUG,
    CONTENT,
    CONTENT_DIGEST,
    block_field,
    FEATURE_DTYPES,
    FORMAT_VERSION,
    LOGITS_INDEX,
    MANIFEST,
    RANK_SHARDS_PREFIX,
    PART_DATA,
    PART_NOISE,
    TMP_SUFFIX,
    Manifest,
    ShardInfo,
    TeacherInfo,
    atomic_write_text,
    make_key,
    parse_shard_name,
)
from featcache.cache.store import CacheLock, CacheStore
from featcache.cache.writer import BackgroundWriter, PartWriter
from featcache.datasets import ImageDataset, get_dataset
from featcache.config import ExtractConfig  # re-exported: the schema lives in featcache.config
from featcache.errors import (
    CacheError,
    CacheLockedError,
    ConfigError,
    DatasetError,
    StorageError,
    check_at_least,
    check_choice,
)
from featcache.locks import unwritable
from featcache.hashing import file_sha256
from featcache.models.teachers import Teacher, WeightsInfo, create_teacher, resolve_weights, teacher_entry
from featcache.progress import Reporter
from featcache.runtime import autocast, default_workers, device_name, resolve_device, resolve_precision, use_cpu_threads
from featcache.transforms import NoiseDataset, NoiseSpec, TransformSpec, default_transform
from featcache.views import ViewDataset, ViewSpec, view_part


@dataclass
class ExtractPlan:
    """What an extract will do, computed without building the teacher."""

    config: ExtractConfig
    dataset: ImageDataset
    transform: TransformSpec
    weights: WeightsInfo
    num_classes: int | None
    device: torch.device
    precision: str
    noise: NoiseSpec | None
    identity: dict[str, Any]
    key: str
    views: ViewSpec | None
    directory: Path


@dataclass
class ExtractResult:
    key: str
    directory: Path
    manifest: Manifest
    reused: bool
    seconds: float = 0.0
    images: int = 0  # images run through the teacher in this call (0 when reused)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows(self) -> int:
        return self.manifest.rows.get(PART_DATA, 0)

    @property
    def noise_rows(self) -> int:
        return self.manifest.rows.get(PART_NOISE, 0)

    @property
    def bytes(self) -> int:
        return self.manifest.total_bytes()


def plan_extract(config: ExtractConfig) -> ExtractPlan:
    """Resolve dataset, transform, weights and the cache key; cheap (no model is built)."""
    check_choice("--dtype", config.dtype, FEATURE_DTYPES)
    check_choice("--logits-dtype", config.logits_dtype, FEATURE_DTYPES)
    check_at_least("--batch-size", config.batch_size, 1)
    check_at_least("--shard-rows", config.shard_rows, 1)
    if config.noise < 0:
        raise ConfigError(f"--noise must be >= 0, got {config.noise}")
    entry = teacher_entry(config.teacher)
    dataset = get_dataset(config.dataset, config.data_root, config.split, **config.dataset_options)
    if len(dataset) == 0:
        raise ConfigError(f"dataset {config.dataset!r} split {config.split!r} has no samples")
    for flag, value in (("--image-size", config.image_size), ("--resize", config.resize)):
        if value is not None:
            check_at_least(flag, value, 1)
    check_at_least("--views", config.views, 1)
    if config.workers is not None:
        check_at_least("--workers", config.workers, 0)
    image_size = config.image_size if config.image_size is not None else entry.default_image_size
    if image_size < entry.min_image_size:
        raise ConfigError(
            f"--image-size {image_size} is below the {entry.min_image_size} px that {entry.name} accepts"
        )
    transform = default_transform(
        image_size,
        crop_fraction=entry.crop_fraction,
        resize_mode=config.resize_mode or entry.resize_mode,
        resize=config.resize,
        native_size=None if (config.resize or config.resize_mode) else dataset.native_size,
    )
    weights = resolve_weights(entry.name, config.weights, config.seed)
    num_classes = config.num_classes
    if num_classes is None and weights.source == "random":
        num_classes = dataset.num_classes  # a random teacher gets a head for this dataset
    device = distributed.local_device(resolve_device(config.device))
    precision = resolve_precision(config.precision, device)
    noise = NoiseSpec(config.noise, config.noise_seed, image_size) if config.noise else None
    identity = {
        "format_version": FORMAT_VERSION,
        "teacher": {
            "name": entry.name,
            "weights": weights.identity(),
            "num_classes": num_classes,
            "feature_layer": "penultimate",
            "image_size": image_size,
        },
        "dataset": dataset.identity(),
        "transform": transform.to_dict(),
        "dtype": config.dtype,
        "logits_dtype": config.logits_dtype,
        "precision": precision,
        "noise": noise.to_dict() if noise else None,
    }
    if config.topk_logits is not None:
        check_at_least("--topk-logits", config.topk_logits, 1)
        identity["topk_logits"] = config.topk_logits
    views = None
    if config.views != 1:
        policy = config.view_policy or ("pad-crop-flip" if dataset.native_size else "rrc-flip")
        views = ViewSpec(config.views, policy, config.view_seed)
        identity["views"] = views.to_dict()  # only then: the keys of caches without views stay what they were
    if config.blocks:  # only then: the keys of caches without blocks stay what they were
        check_at_least("--pool", config.pool, 1)
        if len(set(config.blocks)) != len(config.blocks):
            raise ConfigError(f"--blocks {','.join(config.blocks)}: a block is named twice")
        identity["blocks"] = {"names": list(config.blocks), "pool": config.pool}
    key = make_key(identity, entry.name, dataset.name, dataset.split)
    directory = CacheStore(config.cache_dir).path(key)
    return ExtractPlan(
        config=config,
        dataset=dataset,
        transform=transform,
        weights=weights,
        num_classes=num_classes,
        device=device,
        precision=precision,
        noise=noise,
        identity=identity,
        key=key,
        directory=directory,
        views=views,
    )


def extract(config: ExtractConfig, reporter: Reporter | None = None) -> ExtractResult:
    """Run stage 1 for ``config`` (see module docstring); returns the cache's key and manifest."""
    reporter = reporter or Reporter()
    plan = plan_extract(config)
    directory = plan.directory
    existing = _load_manifest(directory)
    if existing is not None and existing.complete and not config.force and _reusable(plan, existing, reporter):
        return ExtractResult(plan.key, directory, existing, reused=True)

    ctx = distributed.context()
    if ctx.active:
        return _extract_distributed(plan, config, reporter, ctx)
    lock = _lock(plan, reporter)
    try:
        # Re-read under the lock: the other writer may have finished the same cache meanwhile.
        existing = _load_manifest(directory)
        if existing is not None and existing.complete and not config.force and _reusable(plan, existing, None):
            return ExtractResult(plan.key, directory, existing, reused=True)
        manifest = _prepare_directory(plan, None if config.force else existing, reporter)
        teacher = create_teacher(
            plan.config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
            image_size=plan.transform.image_size,
        )
        _fill_teacher_info(manifest, teacher, plan.dataset)
        manifest.save(directory)
        images, seconds = _run(plan, teacher, manifest, reporter)
        _finish(plan, manifest, images, seconds)
        return ExtractResult(plan.key, directory, manifest, reused=False, seconds=seconds, images=images)
    finally:
        lock.release()


def _lock(plan: ExtractPlan, reporter: Reporter) -> CacheLock:
    """The cache's write lock: wait for another writer (and say so), or with --no-wait refuse at once."""
    try:
        return CacheLock(plan.directory).acquire(
            wait=plan.config.wait,
            on_wait=lambda pid: reporter.message(
                f"cache {plan.key} is being written by another process (pid {pid}); waiting for it to finish..."
            ),
        )
    except CacheLockedError as exc:
        raise exc.with_hint("wait for it to finish, or re-run without --no-wait to queue behind it") from None


def _finish(plan: ExtractPlan, manifest: Manifest, images: int, seconds: float, ranks: int = 1) -> None:
    """Check every shard is recorded, then mark the manifest complete with its timing and teacher accuracy."""
    missing = [f"{p}-{n}" for p, n in manifest.expected_shards() if n not in {s.number for s in manifest.shards_of(p)}]
    if missing:
        raise CacheError(f"extract finished but shards {', '.join(missing[:5])} were not written; re-run to resume")
    config = plan.config
    manifest.complete = True
    manifest.finished = _now()
    if ranks > 1:  # the ranks recorded their shards in sidecars; their time and rows are summed here
        manifest.timing["seconds"] = round(manifest.timing.get("seconds", 0.0) + seconds, 3)
        manifest.timing["images"] = manifest.timing.get("images", 0) + images
    total, done = manifest.timing.get("seconds", 0.0), manifest.timing.get("images", 0)
    manifest.timing.update(
        {
            "images_per_s": round(done / total, 1) if total > 0 else None,
            "device": device_name(plan.device),
            "batch_size": config.batch_size,
            "workers": config.workers if config.workers is not None else default_workers(plan.device),
            "ranks": ranks,
        }
    )
    manifest.save(plan.directory)  # the accuracy below reads the shards through this manifest
    manifest.teacher_accuracy = _teacher_accuracy(manifest, plan.directory, plan.dataset)
    manifest.save(plan.directory)


def _rank_file(directory: Path, rank: int) -> Path:
    return directory / f"{RANK_SHARDS_PREFIX}{rank}.json"


def _merge_rank_shards(directory: Path, manifest: Manifest) -> None:
    """Fold the shards recorded by torchrun ranks (their sidecars) into the manifest, then drop the sidecars."""
    import json

    known = {(s.part, s.number) for s in manifest.shards}
    for side in sorted(directory.glob(f"{RANK_SHARDS_PREFIX}*.json")):
        try:
            infos = [ShardInfo(**d) for d in json.loads(side.read_text())]
        except (ValueError, TypeError):
            infos = []
        for info in infos:
            if (info.part, info.number) not in known and _shard_intact(directory, info):
                manifest.shards.append(info)
                known.add((info.part, info.number))
        side.unlink()


def _extract_distributed(plan: ExtractPlan, config: ExtractConfig, reporter: Reporter, ctx) -> ExtractResult:
    """One rank of a torchrun extract: rank 0 prepares and finishes the manifest, every rank writes its shards."""
    import json

    directory = plan.directory
    lock = None
    try:
        if ctx.is_main:
            lock = _lock(plan, reporter)
            existing = _load_manifest(directory)
            if existing is not None and not config.force:
                _merge_rank_shards(directory, existing)  # shards a crashed distributed run finished
            manifest = _prepare_directory(plan, None if config.force else existing, reporter)
        teacher = create_teacher(
            plan.config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
            image_size=plan.transform.image_size,
        )
        if ctx.is_main:
            _fill_teacher_info(manifest, teacher, plan.dataset)
            manifest.save(directory)
        distributed.barrier()
        if not ctx.is_main:
            manifest = Manifest.load(directory)
        side = _rank_file(directory, ctx.rank)
        mine: list[ShardInfo] = []

        def record(info: ShardInfo) -> None:
            mine.append(info)
            atomic_write_text(side, json.dumps([asdict(i) for i in mine]))

        images, seconds = _run(plan, teacher, manifest, reporter, shard_filter=lambda n: n % ctx.world == ctx.rank,
                               on_shard=record, save_manifest=ctx.is_main)
        counts = [None] * ctx.world  # also keeps the ranks in step: every rank has finished its shards
        torch.distributed.all_gather_object(counts, (images, seconds))
        if ctx.is_main:
            manifest = Manifest.load(directory)
            _merge_rank_shards(directory, manifest)
            _finish(plan, manifest, sum(c[0] for c in counts), max(c[1] for c in counts), ranks=ctx.world)
        distributed.barrier()
        manifest = Manifest.load(directory)
        return ExtractResult(plan.key, directory, manifest, reused=False, seconds=seconds, images=images)
    finally:
        if lock is not None:
            lock.release()


# -- internals -------------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _load_manifest(directory: Path) -> Manifest | None:
    if not (directory / MANIFEST).is_file():
        return None
    try:
        return Manifest.load(directory)
    except CacheError:
        return None


def _prepare_directory(plan: ExtractPlan, existing: Manifest | None, reporter: Reporter) -> Manifest:
    """Start a fresh manifest, or resume ``existing``: keep recorded shards whose files are intact, drop the rest."""
    directory = plan.directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(directory, exc, "cache directory") from None
    if existing is not None and existing.identity == plan.identity:
        kept = [s for s in existing.shards if _shard_intact(directory, s)]
        if len(kept) != len(existing.shards):
            reporter.message(f"{len(existing.shards) - len(kept)} recorded shard(s) are damaged and will be redone")
        existing.shards = kept
        existing.complete = len(kept) == len(existing.expected_shards())  # readers wait for the redone shards
        manifest = existing
        if kept:
            total = len(manifest.expected_shards())
            reporter.message(f"resuming cache {plan.key}: {len(kept)}/{total} shards already written")
    else:
        manifest = _new_manifest(plan)
    keep = {s.file for s in manifest.shards}
    for p in directory.iterdir():
        name = p.name.removesuffix(TMP_SUFFIX)
        if parse_shard_name(name) is not None and (p.name.endswith(TMP_SUFFIX) or p.name not in keep):
            p.unlink()
    return manifest


def _shard_intact(directory: Path, shard: ShardInfo) -> bool:
    """The shard's file exists with the recorded size and sha256 (a flipped byte, a truncation, a lost file: no)."""
    path = directory / shard.file
    try:
        return path.stat().st_size == shard.bytes and file_sha256(path) == shard.sha256
    except OSError:
        return False


def _reusable(plan: ExtractPlan, manifest: Manifest, reporter: Reporter | None) -> bool:
    """Whether a complete cache can be returned as it is: every shard intact (else False: the caller redoes the
    damaged ones), and a sample of the images still hashing to the recorded digests (else an error: content that
    changed behind an unchanged size and mtime needs --force)."""
    damaged = [s.file for s in manifest.shards if not _shard_intact(plan.directory, s)]
    if damaged:
        if reporter is not None:
            reporter.message(f"cache {plan.key}: {len(damaged)} shard(s) damaged ({', '.join(damaged[:3])}); "
                             "redoing them")
        return False
    from featcache.cache.reader import FeatureCache

    with FeatureCache(plan.directory) as cache:
        cache.check_content(plan.dataset, "sample")
    return True


def _new_manifest(plan: ExtractPlan) -> Manifest:
    import h5py
    import torchvision

    cfg = plan.config
    rows = {PART_DATA: len(plan.dataset)}
    if plan.noise is not None:
        rows[PART_NOISE] = plan.noise.count
    if plan.views is not None:
        rows.update({view_part(v): len(plan.dataset) for v in range(1, plan.views.count)})
    return Manifest(
        key=plan.key,
        identity=plan.identity,
        teacher=TeacherInfo(
            name=plan.identity["teacher"]["name"],
            weights={**plan.weights.identity(), "ref": plan.weights.ref},
            feature_layer="",
            num_features=0,
            num_classes=0,
            classes=None,
            classes_source="unknown",
        ),
        dataset=plan.dataset.identity(),
        classes=list(plan.dataset.classes),
        transform=plan.transform.to_dict(),
        dtype=cfg.dtype,
        logits_dtype=cfg.logits_dtype,
        precision=plan.precision,
        shard_rows=cfg.shard_rows,
        rows=rows,
        noise=plan.noise.to_dict() if plan.noise else None,
        views=plan.views.to_dict() if plan.views else None,
        topk_logits=cfg.topk_logits,
        content=CONTENT_DIGEST,
        created=_now(),
        versions={
            "featcache": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "h5py": h5py.__version__,
            "python": platform.python_version(),
        },
        command=cfg.command(),
    )


def _fill_teacher_info(manifest: Manifest, teacher: Teacher, dataset: ImageDataset) -> None:
    t = manifest.teacher
    t.feature_layer = teacher.feature_layer
    t.num_features = int(teacher.num_features)
    t.num_classes = int(teacher.num_classes)
    if teacher.classes is not None:
        t.classes, t.classes_source = list(teacher.classes), "weights"
    elif teacher.num_classes == dataset.num_classes and teacher.weights.source != "torchvision":
        # A fine-tuned (or random) head of the dataset's width is taken to cover the dataset's classes.
        t.classes, t.classes_source = list(dataset.classes), "dataset"
    else:
        t.classes, t.classes_source = None, "unknown"


def _pending_rows(manifest: Manifest, part: str, shard_filter=None) -> np.ndarray:
    done = {s.number for s in manifest.shards_of(part)}
    ranges = [manifest.shard_range(part, n) for n in range(manifest.num_shards(part))
              if n not in done and (shard_filter is None or shard_filter(n))]
    if not ranges:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


SHARD_OVERHEAD = 16 * 1024  # HDF5 superblock, object headers and attributes of one shard (measured: ~6 KB)


def _check_space(directory: Path, pending: dict[str, np.ndarray], writers: dict[str, PartWriter],
                 shard_rows: int) -> None:
    """Refuse to start when the pending shards cannot fit on the disk (their size is known before any write), so a
    full disk is a one-line message up front instead of a half-written shard."""
    need = sum(len(rows) * writers[part].row_bytes() + (-(-len(rows) // shard_rows) + 1) * SHARD_OVERHEAD
               for part, rows in pending.items())
    free = shutil.disk_usage(directory).free
    if need > free:
        raise StorageError(
            f"extract needs about {need / 2**20:,.1f} MiB in {directory} but only {free / 2**20:,.1f} MiB are free; "
            "free space or pass --cache-dir on a larger disk"
        )


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
            for e, v in zip(extras, item[3:]):
                e.append(v)
        out = [torch.stack(e) if isinstance(e[0], torch.Tensor) else torch.as_tensor(np.asarray(e, dtype=np.int64))
               for e in extras]
        return (images, torch.from_numpy(labels), torch.from_numpy(idx.copy()), *out)


class _HostBuffers:
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


def _teacher_accuracy(manifest: Manifest, directory: Path, dataset: ImageDataset) -> float | None:
    """Top-1 accuracy of the cached logits on the split (Eq. 6 of the multi-teacher paper), when the teacher's
    classes are the dataset's; computed from the finished cache so that resumed runs count every row."""
    if manifest.teacher.classes_source != "dataset":
        return None
    from featcache.cache.format import LOGITS
    from featcache.cache.reader import FeatureCache

    with FeatureCache(directory, allow_incomplete=True) as cache:  # all shards are written by now
        if manifest.topk_logits:  # the first kept class is the argmax
            top = cache.read_all(PART_DATA, fields=(LOGITS_INDEX,))[LOGITS_INDEX][:, 0]
            return float((top == dataset.targets).mean())
        logits = cache.read_all(PART_DATA, fields=(LOGITS,))[LOGITS]
    return float((logits.argmax(1) == dataset.targets).mean())


def block_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule ``name`` of a teacher, named as in its ``block_root()`` (e.g. layer3 of a torchvision ResNet)."""
    root = model.block_root() if hasattr(model, "block_root") else model
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = ", ".join(n for n, _ in root.named_children())
        raise ConfigError(f"--blocks {name}: the teacher has no such module; its top-level modules are: "
                          f"{names}") from None


def _attach_block_hooks(model: torch.nn.Module, names: list[str]):
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            if not (isinstance(output, torch.Tensor) and output.dim() == 4):
                raise ConfigError(f"--blocks {name}: its output is not a [B, C, H, W] feature map")
            captured[name] = output
        hooks.append(block_module(model, name).register_forward_hook(hook))
    return hooks, captured


def _describe_blocks(model, captured, cfg: ExtractConfig, plan: ExtractPlan, device) -> list[dict[str, Any]]:
    """Channels of each block, from one forward pass on a blank image (the manifest needs them before any write)."""
    size = plan.transform.image_size
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size, device=device))
    return [
        {"name": n, "channels": int(captured[n].shape[1]), "pool": cfg.pool,
         "dim": int(captured[n].shape[1]) * cfg.pool * cfg.pool}
        for n in cfg.blocks
    ]


def _run(plan: ExtractPlan, teacher: Teacher, manifest: Manifest, reporter: Reporter, *, shard_filter=None,
         on_shard=None, save_manifest: bool = True) -> tuple[int, float]:
    """Extract every pending row of every part (of the shards ``shard_filter`` accepts: a torchrun rank's share).
    Returns (images, seconds)."""
    cfg = plan.config
    device = plan.device
    model = teacher.model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    normalize = plan.transform.normalizer(device)
    feat_dtype = getattr(torch, cfg.dtype)
    logit_dtype = getattr(torch, cfg.logits_dtype)

    hooks, captured = _attach_block_hooks(model, cfg.blocks)
    if cfg.blocks and not manifest.blocks:
        manifest.blocks = _describe_blocks(model, captured, cfg, plan, device)
        if save_manifest:
            manifest.save(plan.directory)
    writers: dict[str, PartWriter] = {}

    # The manifest's timing covers every attempt: each recorded shard brings the wall time up to it and its rows,
    # so a killed extract's finished shards keep their share and the resumed one adds to it.
    base_seconds, base_rows, done_rows = manifest.timing.get("seconds", 0.0), manifest.timing.get("images", 0), 0

    def on_done(info: ShardInfo) -> None:
        nonlocal done_rows
        if on_shard is not None:
            on_shard(info)
            return
        done_rows += info.rows
        manifest.timing.update(seconds=round(base_seconds + time.perf_counter() - started, 3),
                               images=base_rows + done_rows)
        manifest.shards.append(info)
        manifest.save(plan.directory)

    for part in manifest.rows:
        writers[part] = PartWriter(plan.directory, manifest, part, on_done)
    writer = BackgroundWriter(writers, max_pending=4, threaded=device.type != "cpu")
    pool = None
    if device.type == "cuda":
        pool = _HostBuffers(4, cfg.batch_size, teacher.num_features, cfg.topk_logits or teacher.num_classes, feat_dtype,
                            logit_dtype)

    sources: list[tuple[str, Any, np.ndarray]] = []
    data_rows = _pending_rows(manifest, PART_DATA, shard_filter)
    if len(data_rows):
        sources.append((PART_DATA, DigestedSamples(plan.dataset, plan.transform.geometry()), data_rows))
    if plan.noise is not None:
        noise_rows = _pending_rows(manifest, PART_NOISE, shard_filter)
        if len(noise_rows):
            sources.append((PART_NOISE, NoiseDataset(plan.noise), noise_rows))
    for v in range(1, plan.views.count if plan.views else 1):
        view_rows = _pending_rows(manifest, view_part(v), shard_filter)
        if len(view_rows):
            sources.append((view_part(v), ViewDataset(plan.dataset, plan.views, v, plan.transform), view_rows))

    total = sum(len(r) for _, _, r in sources)
    _check_space(plan.directory, {part: rows for part, _, rows in sources}, writers, manifest.shard_rows)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    use_cpu_threads(device, workers)
    images = 0
    reporter.start(total, f"extract {teacher.name}", unit="img")
    started = time.perf_counter()
    try:
        with torch.inference_mode():
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
                    x = normalize(batch, channels_last=cfg.channels_last)
                    with autocast(device, plan.precision):
                        features, logits = model(x)
                    blocks = {(CONTENT if part == PART_DATA else AUG): extra[0].numpy()} if extra else {}
                    if cfg.topk_logits:
                        if cfg.topk_logits > logits.shape[1]:
                            raise ConfigError(f"--topk-logits {cfg.topk_logits} exceeds the teacher's "
                                              f"{logits.shape[1]} classes")
                        logits, top = logits.float().topk(cfg.topk_logits, dim=1)
                        blocks[LOGITS_INDEX] = top.to(torch.int32).cpu().numpy()
                    features = features.to(feat_dtype)
                    logits = logits.to(logit_dtype)
                    idx = index.numpy()
                    if cfg.blocks:  # pooled on the device, copied synchronously (they are small)
                        blocks.update({
                            block_field(name): F.adaptive_avg_pool2d(captured[name].float(), cfg.pool)
                            .flatten(1).to(feat_dtype).cpu().numpy()
                            for name in cfg.blocks
                        })
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
                    images += len(idx)
                    reporter.advance(len(idx))
        writer.close()
    except BaseException:
        try:
            writer.close()
        except BaseException:  # noqa: BLE001 - the original error is the one to report
            pass
        for w in writers.values():
            w.abort()
        raise
    finally:
        reporter.stop()
        for h in hooks:
            h.remove()
    seconds = time.perf_counter() - started
    return images, seconds


__all__ = ["ExtractConfig", "ExtractPlan", "ExtractResult", "extract", "plan_extract"]
