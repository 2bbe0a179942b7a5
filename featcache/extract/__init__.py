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

import sys
from dataclasses import asdict
from types import ModuleType
from typing import Any

import torch

from featcache.cache.format import Manifest, ShardInfo, atomic_write_text
from featcache.cache.store import CacheStore
from featcache.cache.usage import record_use
from featcache.config import ExtractConfig
from featcache.config.flags import config_from
from featcache.extract.manifest import (
    fill_teacher_info,
    finish,
    intact,
    load_manifest,
    lock_cache,
    prepare_directory,
    reusable,
)
from featcache.extract.plan import ExtractPlan, ExtractResult, plan_extract
from featcache.extract.project import ensure_projection
from featcache.extract.ranks import merge_rank_shards, rank_file
from featcache.extract.sweep import Batches, DigestedSamples, block_module, run_sweep
from featcache.extract.workdir import WorkDir, check_store
from featcache.models.teachers import create_teacher
from featcache.util import distributed
from featcache.util.progress import Reporter

__all__ = ["Batches", "DigestedSamples", "ExtractConfig", "ExtractPlan", "ExtractResult", "block_module", "extract",
           "plan_extract"]


def extract_with(config: ExtractConfig | None = None, /, *, reporter: Reporter | None = None,
                 **options: Any) -> ExtractResult:
    """Stage 1 by registry names, as ``featcache extract`` runs it: ``extract(teacher="resnet18",
    dataset="cifar10", data_root=...)`` (keywords are ExtractConfig's fields: the command's flags with
    underscores) or ``extract(ExtractConfig(...))``. Finds the cache when it exists; returns the ExtractResult
    (``.key``, ``.directory``, ``.reused``)."""
    return extract(config_from(ExtractConfig, config, options, "extract"), reporter)


class _Stage(ModuleType):
    """``featcache.extract`` is this package and the public function ``fc.extract(...)`` at once: importing a
    submodule sets the attribute ``featcache.extract`` to the package, so the package itself is callable."""

    def __call__(self, config: ExtractConfig | None = None, /, **options: Any) -> ExtractResult:
        return extract_with(config, **options)


sys.modules[__name__].__class__ = _Stage


def extract(config: ExtractConfig, reporter: Reporter | None = None, *, dataset=None, teacher=None,
            transform=None, command: str | None = None) -> ExtractResult:
    """Run stage 1 for ``config`` (see module docstring); returns the cache's key and manifest. ``dataset`` and
    ``teacher`` replace the registry's (featcache.api.extract_from builds them from a user's Dataset and module)."""
    reporter = reporter or Reporter()
    plan = plan_extract(config, dataset=dataset, teacher=teacher, transform=transform, command=command)
    store = CacheStore(config.cache_dir, config.stores)
    load_manifest(plan.directory)  # a newer format's cache is never overwritten, not even with --force: an error
    record_use(store, [plan.key])  # the last use, for `cache ls` and `cache gc` (personal store, best effort)
    found = None if config.force else _reuse(plan, store, reporter)
    if found is not None:
        return found
    check_store(plan.store, plan.key, config.force)
    ctx = distributed.context()
    if ctx.active:
        return _extract_distributed(plan, config, reporter, ctx)
    lock = lock_cache(plan, reporter)
    work = WorkDir(plan.store, plan.key)
    try:
        # Re-checked under the lock: another writer may have finished the same cache meanwhile.
        found = None if config.force else _reuse(plan, store, None)
        if found is not None:
            return found
        plan.work = work.open(reporter, in_place=_unusable_in_place(plan, config))
        existing = None if config.force else load_manifest(plan.work)
        manifest = prepare_directory(plan, existing, reporter)
        teacher = plan.teacher or create_teacher(
            plan.config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
            image_size=plan.transform.image_size,
        )
        fill_teacher_info(manifest, teacher, plan.dataset)
        ensure_projection(plan, teacher, manifest, reporter)  # --project: fitted before any shard is written
        manifest.save(plan.work)
        images, seconds = run_sweep(plan, teacher, manifest, reporter)
        finish(plan, manifest, images, seconds)
        directory = work.publish(config.force, reporter)
        return ExtractResult(plan.key, directory, Manifest.load(directory), reused=False, seconds=seconds,
                             images=images)
    finally:
        work.close()
        lock.release()


def _reuse(plan: ExtractPlan, store: CacheStore, reporter: Reporter | None) -> ExtractResult | None:
    """The complete, intact cache of this key in any store of the stack (the first), else None."""
    copies = store.copies(plan.key)
    if not any(e.manifest is not None and e.manifest.complete for e in copies):
        return None
    entry = store.locate(plan.key)  # the copies must agree
    if reusable(plan, entry.manifest, entry.directory, reporter):
        return ExtractResult(plan.key, entry.directory, entry.manifest, reused=True)
    if reporter is not None and entry.store != plan.store:
        reporter.message(f"cache {plan.key} in the shared store {entry.store} is damaged; extracting it into "
                         f"{plan.store}")
    return None


def _unusable_in_place(plan: ExtractPlan, config: ExtractConfig) -> bool:
    """Whether the personal store's own directory of the key is to be taken over by this extract (it was written in
    place by an older featcache and is incomplete, or its shards are damaged); with --force it stays until the new
    cache replaces it."""
    return not config.force and plan.directory.is_dir() and not intact(plan.directory)


def _extract_distributed(plan: ExtractPlan, config: ExtractConfig, reporter: Reporter, ctx) -> ExtractResult:
    """One rank of a torchrun extract: rank 0 prepares the work directory (every rank writes its shards into it) and
    finishes and publishes the cache."""
    import json

    lock, work = None, None
    try:
        if ctx.is_main:
            lock = lock_cache(plan, reporter)
            work = WorkDir(plan.store, plan.key)
            plan.work = work.open(reporter, in_place=_unusable_in_place(plan, config))
            existing = None if config.force else load_manifest(plan.work)
            if existing is not None:
                merge_rank_shards(plan.work, existing)  # shards a crashed distributed run finished
            manifest = prepare_directory(plan, existing, reporter)
        plan.work = distributed.broadcast(plan.work)
        teacher = plan.teacher or create_teacher(
            plan.config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
            image_size=plan.transform.image_size,
        )
        if ctx.is_main:
            fill_teacher_info(manifest, teacher, plan.dataset)
            ensure_projection(plan, teacher, manifest, reporter)  # the other ranks read it after the barrier
            manifest.save(plan.work)
        distributed.barrier()
        if not ctx.is_main:
            manifest = Manifest.load(plan.work)
        side = rank_file(plan.work, ctx.rank)
        mine: list[ShardInfo] = []

        def record(info: ShardInfo) -> None:
            mine.append(info)
            atomic_write_text(side, json.dumps([asdict(i) for i in mine]))

        images, seconds = run_sweep(plan, teacher, manifest, reporter, shard_filter=lambda n: n % ctx.world == ctx.rank,
                                    on_shard=record, save_manifest=ctx.is_main)
        counts: list[Any] = [None] * ctx.world  # also keeps the ranks in step: every rank has finished its shards
        torch.distributed.all_gather_object(counts, (images, seconds))
        if ctx.is_main:
            manifest = Manifest.load(plan.work)
            merge_rank_shards(plan.work, manifest)
            finish(plan, manifest, sum(c[0] for c in counts), max(c[1] for c in counts), ranks=ctx.world)
            work.publish(config.force, reporter)
        distributed.barrier()
        manifest = Manifest.load(plan.directory)
        return ExtractResult(plan.key, plan.directory, manifest, reused=False, seconds=seconds, images=images)
    finally:
        if work is not None:
            work.close()
        if lock is not None:
            lock.release()


# -- internals -------------------------------------------------------------------------------------------------
