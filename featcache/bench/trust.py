"""`featcache bench trust`: what the trust checks cost (docs/cache-format.md), each next to the extract's own time in
the same process."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from featcache.bench.extract import load_1min, plan_header
from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.util.progress import Reporter


def _median_seconds(fn, repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"seconds": sorted(times)[len(times) // 2], "all_seconds": times}


def bench_trust(config: ExtractConfig, *, repeats: int = 3, reporter: Reporter | None = None) -> dict[str, Any]:
    """What the trust checks cost (docs/cache-format.md), each next to the extract's own time in the same process:
    the dataset fingerprint (a stat of every file), the sampled and the full content re-check (a read and a BLAKE2b
    of every sampled file), and the sha256 of every shard on first read, each timed ``repeats`` times (median)."""
    from featcache.cache.reader import CONTENT_SAMPLE, FeatureCache, check_shard, forget_verified_shards

    reporter = reporter or Reporter()
    plan = plan_extract(config)
    ds = plan.dataset
    load = load_1min()
    with tempfile.TemporaryDirectory(prefix="featcache-bench-trust-") as scratch:
        reporter.message(f"extracting {config.teacher} over {len(ds):,} images into a scratch store (timed)")
        result = extract(replace(config, cache_dir=Path(scratch), force=True), reporter=reporter)
        extract_s = result.manifest.timing.seconds
        results: dict[str, Any] = {}
        reporter.message("timing the fingerprint, the content checks and the shard hashes")
        results["fingerprint"] = _median_seconds(ds.compute_fingerprint, repeats)
        with FeatureCache(result.directory) as cache:
            results["content_sample"] = _median_seconds(lambda: cache.check_content(ds, "sample"), repeats)
            results["content_full"] = _median_seconds(lambda: cache.check_content(ds, "full"), repeats)

            def hash_shards() -> None:
                forget_verified_shards()
                for shard in cache.manifest.shards:
                    check_shard(result.directory / shard.file, shard, cache.key, lambda: "")

            results["shard_sha256"] = _median_seconds(hash_shards, repeats)
    for r in results.values():
        r["fraction_of_extract"] = r["seconds"] / extract_s if extract_s else None
    return {
        **plan_header("trust", plan, ds),
        "cache_bytes": result.bytes,
        "extract_seconds": extract_s,
        "content_sample_rows": min(CONTENT_SAMPLE, len(ds)),
        "repeats": repeats,
        "load_1min": load,
        "results": results,
    }
