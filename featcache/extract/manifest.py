"""The cache directory of one extract: its lock, manifest, resume (which shards are done), free space, finish."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from featcache import __version__
from featcache.cache.format import (
    CONTENT_DIGEST,
    INT8_CODEC,
    LOGITS_INDEX,
    MANIFEST,
    PART_DATA,
    PART_NOISE,
    PROJECTION_FILE,
    TMP_SUFFIX,
    Manifest,
    ProjectionInfo,
    ShardInfo,
    TeacherInfo,
    parse_shard_name,
    shard_path,
)
from featcache.cache.install import INCOMING
from featcache.cache.store import CacheLock
from featcache.cache.writer import PartWriter
from featcache.datasets import ImageDataset
from featcache.errors import (
    CacheError,
    CacheLockedError,
    CacheVersionError,
    StorageError,
)
from featcache.extract.plan import ExtractPlan
from featcache.models.teachers import Teacher
from featcache.util.hashing import file_sha256
from featcache.util.progress import Reporter
from featcache.util.runtime import default_workers, device_name
from featcache.views import view_part


def key_lock(plan: ExtractPlan) -> CacheLock:
    """The key's write lock, ``<store>/.incoming/<key>.lock``. It only saves doing the work twice: correctness comes
    from the private work directories and the final rename (featcache.extract.workdir), so a lock another host left
    behind is taken over."""
    lock = CacheLock(plan.directory)
    lock.path = plan.store / INCOMING / f"{plan.key}.lock"
    lock.take_over_stale = True
    return lock


def lock_cache(plan: ExtractPlan, reporter: Reporter) -> CacheLock:
    """Take the key's write lock: wait for another writer (and say so), or with --no-wait refuse at once."""
    lock = key_lock(plan)
    try:
        return lock.acquire(
            wait=plan.config.wait,
            on_wait=lambda pid: reporter.message(
                f"cache {plan.key} is being written by another process (pid {pid}); waiting for it to finish..."
            ),
        )
    except CacheLockedError as exc:
        raise exc.with_hint("wait for it to finish, or re-run without --no-wait to queue behind it") from None


def finish(plan: ExtractPlan, manifest: Manifest, images: int, seconds: float, ranks: int = 1) -> None:
    """Check every shard is recorded, then mark the manifest complete with its timing and teacher accuracy."""
    missing = [f"{p}-{n}" for p, n in manifest.expected_shards() if n not in {s.number for s in manifest.shards_of(p)}]
    if missing:
        raise CacheError(f"extract finished but shards {', '.join(missing[:5])} were not written; re-run to resume")
    config = plan.config
    manifest.complete = True
    manifest.finished = now()
    if ranks > 1:  # the ranks recorded their shards in sidecars; their time and rows are summed here
        manifest.timing.seconds = round(manifest.timing.seconds + seconds, 3)
        manifest.timing.images += images
    t = manifest.timing
    t.images_per_s = round(t.images / t.seconds, 1) if t.seconds > 0 else None
    t.device = device_name(plan.device)
    t.batch_size = config.batch_size
    t.workers = config.workers if config.workers is not None else default_workers(plan.device)
    t.ranks = ranks
    manifest.save(plan.work)  # the accuracy below reads the shards through this manifest
    manifest.teacher_accuracy = teacher_accuracy(manifest, plan.work, plan.dataset)
    manifest.save(plan.work)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_manifest(directory: Path) -> Manifest | None:
    """The directory's manifest; None when there is none or it is unreadable (the extract writes it anew). A cache
    of a newer format is never overwritten, not even with --force: someone with a newer featcache may be using it."""
    if not (directory / MANIFEST).is_file():
        return None
    try:
        return Manifest.load(directory)
    except CacheVersionError as exc:
        raise CacheVersionError(f"{exc}; to extract it again with this version, remove it first with `featcache cache "
                                f"rm {directory.name}`") from None
    except CacheError:
        return None


def prepare_directory(plan: ExtractPlan, existing: Manifest | None, reporter: Reporter) -> Manifest:
    """Start a fresh manifest in the work directory, or resume ``existing`` (the manifest it holds): keep recorded
    shards whose files are intact, drop the rest."""
    directory = plan.work
    if existing is not None and existing.identity == plan.identity:
        if existing.projection is not None and not shard_intact(directory, existing.projection):
            # Every shard holds rows of the recorded projection: a new fit may differ, so all of them are redone.
            reporter.message(f"the projection file of cache {plan.key} is damaged: it is fitted again and every "
                             "shard redone")
            existing.projection, existing.shards = None, []
        kept = [s for s in existing.shards if shard_intact(directory, s)]
        if len(kept) != len(existing.shards):
            reporter.message(f"{len(existing.shards) - len(kept)} recorded shard(s) are damaged and will be redone")
        existing.shards = kept
        existing.complete = len(kept) == len(existing.expected_shards())  # readers wait for the redone shards
        manifest = existing
        if kept:
            total = len(manifest.expected_shards())
            reporter.message(f"resuming cache {plan.key}: {len(kept)}/{total} shards already written")
    else:
        manifest = new_manifest(plan)
    keep = {s.file for s in manifest.files()}
    for p in directory.iterdir():
        name = p.name.removesuffix(TMP_SUFFIX)
        ours = parse_shard_name(name) is not None or name == PROJECTION_FILE
        if ours and (p.name.endswith(TMP_SUFFIX) or p.name not in keep):
            p.unlink()
    return manifest


def shard_intact(directory: Path, shard: ShardInfo | ProjectionInfo) -> bool:
    """The shard's (or projection's) file exists with the recorded size and sha256 (a flipped byte, a truncation, a
    lost file: no)."""
    try:
        path = shard_path(directory, shard)
        return path.stat().st_size == shard.bytes and file_sha256(path) == shard.sha256
    except (OSError, CacheError):  # a link is never intact: the extract rewrites the shard in place of it
        return False


def intact(directory: Path) -> bool:
    """A complete cache whose every shard has its recorded size and sha256."""
    m = load_manifest(directory)
    return m is not None and m.complete and all(shard_intact(directory, s) for s in m.files())


def reusable(plan: ExtractPlan, manifest: Manifest, directory: Path, reporter: Reporter | None) -> bool:
    """Whether a complete cache can be returned as it is: every shard intact (else False: the caller redoes the
    damaged ones), and a sample of the images still hashing to the recorded digests (else an error: content that
    changed behind an unchanged size and mtime needs --force)."""
    damaged = [s.file for s in manifest.files() if not shard_intact(directory, s)]
    if damaged:
        if reporter is not None:
            reporter.message(f"cache {plan.key}: {len(damaged)} shard(s) damaged ({', '.join(damaged[:3])}); "
                             "redoing them")
        return False
    from featcache.cache.reader import FeatureCache

    with FeatureCache(directory) as cache:
        cache.check_content(plan.dataset, "sample")
    return True


def new_manifest(plan: ExtractPlan) -> Manifest:
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
            weights=dataclasses.replace(plan.weights, classes=None),  # what the manifest records (.record())
            feature_layer="",
            num_features=0,
            num_classes=0,
            classes=None,
            classes_source="unknown",
        ),
        dataset=plan.dataset.identity(),
        classes=list(plan.dataset.classes),
        transform=plan.transform,
        dtype=cfg.dtype,
        logits_dtype=cfg.logits_dtype,
        precision=plan.precision,
        shard_rows=cfg.shard_rows,
        rows=rows,
        noise=plan.noise,
        views=plan.views,
        topk_logits=cfg.topk_logits,
        content=CONTENT_DIGEST,
        feature_codec=INT8_CODEC if cfg.dtype == "int8" else None,
        created=now(),
        versions={
            "featcache": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "h5py": h5py.__version__,
            "python": platform.python_version(),
        },
        command=plan.command or _command(cfg),
    )


def _command(cfg) -> str:
    """The extract's command line with its data root made absolute: distill takes the data from it (``--teacher NAME``
    without ``--dataset``), from whatever folder it runs in."""
    if cfg.data_root is None:
        return cfg.command()
    return dataclasses.replace(cfg, data_root=Path(os.path.abspath(Path(cfg.data_root).expanduser()))).command()


def fill_teacher_info(manifest: Manifest, teacher: Teacher, dataset: ImageDataset) -> None:
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


def pending_rows(manifest: Manifest, part: str, shard_filter=None) -> np.ndarray:
    done = {s.number for s in manifest.shards_of(part)}
    ranges = [manifest.shard_range(part, n) for n in range(manifest.num_shards(part))
              if n not in done and (shard_filter is None or shard_filter(n))]
    if not ranges:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


SHARD_OVERHEAD = 16 * 1024  # HDF5 superblock, object headers and attributes of one shard (measured: ~6 KB)


def check_space(directory: Path, pending: dict[str, np.ndarray], writers: dict[str, PartWriter],
                 shard_rows: int) -> int:
    """Refuse to start when the pending shards cannot fit on the disk (their size is known before any write), so a
    full disk is a one-line message up front instead of a half-written shard. Returns the bytes needed."""
    need = sum(len(rows) * writers[part].row_bytes() + (-(-len(rows) // shard_rows) + 1) * SHARD_OVERHEAD
               for part, rows in pending.items())
    free = shutil.disk_usage(directory).free
    if need > free:
        raise StorageError(
            f"extract needs about {need / 2**20:,.1f} MiB in {directory} but only {free / 2**20:,.1f} MiB are free; "
            "free space or pass --cache-dir on a larger disk"
        )
    return need


def teacher_accuracy(manifest: Manifest, directory: Path, dataset: ImageDataset) -> float | None:
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
