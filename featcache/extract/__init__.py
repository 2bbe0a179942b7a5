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

from dataclasses import asdict

import torch

from featcache import distributed
from featcache.cache.format import Manifest, ShardInfo, atomic_write_text
from featcache.config import ExtractConfig
from featcache.extract.manifest import (
    fill_teacher_info,
    finish,
    load_manifest,
    lock_cache,
    prepare_directory,
    reusable,
)
from featcache.extract.plan import ExtractPlan, ExtractResult, plan_extract
from featcache.extract.ranks import merge_rank_shards, rank_file
from featcache.extract.sweep import Batches, DigestedSamples, block_module, run_sweep
from featcache.models.teachers import create_teacher
from featcache.progress import Reporter

__all__ = ["Batches", "DigestedSamples", "ExtractConfig", "ExtractPlan", "ExtractResult", "block_module", "extract",
           "plan_extract"]


def extract(config: ExtractConfig, reporter: Reporter | None = None, *, dataset=None, teacher=None,
            transform=None, command: str | None = None) -> ExtractResult:
    """Run stage 1 for ``config`` (see module docstring); returns the cache's key and manifest. ``dataset`` and
    ``teacher`` replace the registry's (featcache.api.extract_from builds them from a user's Dataset and module)."""
    reporter = reporter or Reporter()
    plan = plan_extract(config, dataset=dataset, teacher=teacher, transform=transform, command=command)
    directory = plan.directory
    existing = load_manifest(directory)
    if existing is not None and existing.complete and not config.force and reusable(plan, existing, reporter):
        return ExtractResult(plan.key, directory, existing, reused=True)

    ctx = distributed.context()
    if ctx.active:
        return _extract_distributed(plan, config, reporter, ctx)
    lock = lock_cache(plan, reporter)
    try:
        # Re-read under the lock: the other writer may have finished the same cache meanwhile.
        existing = load_manifest(directory)
        if existing is not None and existing.complete and not config.force and reusable(plan, existing, None):
            return ExtractResult(plan.key, directory, existing, reused=True)
        manifest = prepare_directory(plan, None if config.force else existing, reporter)
        teacher = plan.teacher or create_teacher(
            plan.config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
            image_size=plan.transform.image_size,
        )
        fill_teacher_info(manifest, teacher, plan.dataset)
        manifest.save(directory)
        images, seconds = run_sweep(plan, teacher, manifest, reporter)
        finish(plan, manifest, images, seconds)
        return ExtractResult(plan.key, directory, manifest, reused=False, seconds=seconds, images=images)
    finally:
        lock.release()


def _extract_distributed(plan: ExtractPlan, config: ExtractConfig, reporter: Reporter, ctx) -> ExtractResult:
    """One rank of a torchrun extract: rank 0 prepares and finishes the manifest, every rank writes its shards."""
    import json

    directory = plan.directory
    lock = None
    try:
        if ctx.is_main:
            lock = lock_cache(plan, reporter)
            existing = load_manifest(directory)
            if existing is not None and not config.force:
                merge_rank_shards(directory, existing)  # shards a crashed distributed run finished
            manifest = prepare_directory(plan, None if config.force else existing, reporter)
        teacher = plan.teacher or create_teacher(
            plan.config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
            image_size=plan.transform.image_size,
        )
        if ctx.is_main:
            fill_teacher_info(manifest, teacher, plan.dataset)
            manifest.save(directory)
        distributed.barrier()
        if not ctx.is_main:
            manifest = Manifest.load(directory)
        side = rank_file(directory, ctx.rank)
        mine: list[ShardInfo] = []

        def record(info: ShardInfo) -> None:
            mine.append(info)
            atomic_write_text(side, json.dumps([asdict(i) for i in mine]))

        images, seconds = run_sweep(plan, teacher, manifest, reporter, shard_filter=lambda n: n % ctx.world == ctx.rank,
                               on_shard=record, save_manifest=ctx.is_main)
        counts = [None] * ctx.world  # also keeps the ranks in step: every rank has finished its shards
        torch.distributed.all_gather_object(counts, (images, seconds))
        if ctx.is_main:
            manifest = Manifest.load(directory)
            merge_rank_shards(directory, manifest)
            finish(plan, manifest, sum(c[0] for c in counts), max(c[1] for c in counts), ranks=ctx.world)
        distributed.barrier()
        manifest = Manifest.load(directory)
        return ExtractResult(plan.key, directory, manifest, reused=False, seconds=seconds, images=images)
    finally:
        if lock is not None:
            lock.release()


# -- internals -------------------------------------------------------------------------------------------------
