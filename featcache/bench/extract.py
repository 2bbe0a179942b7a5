"""`featcache bench extract`, and what every bench shares: throughput measured against its limit, all figures of a
table from one run.

extract: images/s of a full `featcache extract` (decode + resize in workers, copy, teacher, background writes)
next to the bare forward pass of the same teacher at the same batch size and precision on device-resident input
(the limit extraction can approach). The ratio is the headline.

The other benches, one module each in featcache/bench/: distill.py (a student's training step alone, with cached and
with online teachers), join.py (the loader's row tables against naive peers; the random cache the benches write),
trust.py (the trust checks against the extract), store.py, scale.py and scale_life.py (`bench scale`; synth.py
writes its cache) and codec.py.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from featcache.errors import ConfigError
from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.models.teachers import create_teacher
from featcache.transforms import Geometry
from featcache.util.progress import Reporter
from featcache.util.runtime import autocast, device_name

# -- shared by the benches -------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer must not stop before the work it times)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def versions() -> dict[str, str]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def load_1min() -> float | None:
    """The 1-minute load average, next to each figure (another process on the machine shows here)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def plan_header(benchmark: str, plan, dataset) -> dict[str, Any]:
    """The first fields of an extract-based bench's result: what was timed, when, where, on what."""
    return {
        "benchmark": benchmark,
        "date": utc_now(),
        "device": device_name(plan.device),
        "versions": versions(),
        "teacher": plan.identity["teacher"]["name"],
        "dataset": f"{dataset.name}/{dataset.split}",
        "images": len(dataset),
        "image_size": plan.transform.image_size,
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- extract ---------------------------------------------------------------------------------------------------------


def forward_rate(
    config: ExtractConfig, *, iters: int = 20, warmup: int = 5, min_seconds: float = 3.0
) -> dict[str, Any]:
    """Images/s of the teacher alone on a pre-made, normalised, device-resident batch, with the thread count the
    extract uses; at least ``iters`` batches and ``min_seconds`` of timing, so the limit is not a few-ms blip."""
    from featcache.util.runtime import default_workers, use_cpu_threads

    plan = plan_extract(config)
    device = plan.device
    use_cpu_threads(device, config.workers if config.workers is not None else default_workers(device))
    teacher = create_teacher(
        config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed,
        image_size=plan.transform.image_size
    )
    model = teacher.model.to(device).eval()
    size = plan.transform.image_size
    x = torch.randn(config.batch_size, 3, size, size, device=device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with torch.inference_mode():
        for _ in range(warmup):
            with autocast(device, plan.precision):
                model(x)
        sync(device)
        start, done = time.perf_counter(), 0
        while done < iters or time.perf_counter() - start < min_seconds:
            with autocast(device, plan.precision):
                model(x)
            done += 1
            if done >= iters:
                sync(device)
        sync(device)
        seconds = time.perf_counter() - start
    return {"images": done * config.batch_size, "seconds": seconds, "images_per_s": done * config.batch_size / seconds}


def decode_rate(config: ExtractConfig, *, max_images: int | None = None) -> dict[str, Any]:
    """Images/s of the input pipeline alone: extract's own batches (read, decode, resize, content digest) in its
    DataLoader workers, nothing else (the rate extraction can reach when the teacher is free)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from featcache.extract import Batches, DigestedSamples
    from featcache.util.runtime import default_workers

    plan = plan_extract(config)
    n = len(plan.dataset) if max_images is None else min(len(plan.dataset), max_images)
    workers = config.workers if config.workers is not None else default_workers(plan.device)
    source = Batches(DigestedSamples(plan.dataset, Geometry(plan.transform)), np.arange(n), config.batch_size)
    loader = DataLoader(source, batch_size=None, num_workers=workers, prefetch_factor=4 if workers > 0 else None)
    images, start = 0, time.perf_counter()
    for batch, *_ in loader:
        images += len(batch)
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds if seconds else 0.0}


def bench_extract(config: ExtractConfig, *, iters: int = 20, warmup: int = 5, rounds: int = 3,
                  min_seconds: float = 3.0, reporter: Reporter | None = None) -> dict[str, Any]:
    """The teacher's forward limit, the input pipeline's decode rate and a forced extract of ``config`` into a
    scratch store, in ``rounds`` interleaved rounds (ratios are medians of the per-round ratios). Next to extract /
    forward, extract / (forward ∘ decode): where decoding and the forward share the same cores (a CPU, no workers),
    an image costs at least its decode time plus its forward time, so 1 / (1/forward + 1/decode) is the serial limit."""
    plan = plan_extract(config)
    reporter = reporter or Reporter()
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    loads, forwards, extracts, ratios, decodes, serial = [load_1min()], [], [], [], [], []
    result = None
    for r in range(rounds):
        reporter.message(f"round {r + 1}/{rounds}: the teacher's bare forward, then the input pipeline alone")
        limit = forward_rate(config, iters=iters, warmup=warmup, min_seconds=min_seconds)
        decode = decode_rate(config)  # read, decode, resize, digest
        with tempfile.TemporaryDirectory(prefix="featcache-bench-") as scratch:
            result = extract(replace(config, cache_dir=Path(scratch), force=True), reporter=reporter)
        forwards.append(limit["images_per_s"])
        decodes.append(decode["images_per_s"])
        extracts.append(result.images_per_s)
        ratios.append(result.images_per_s / limit["images_per_s"] if limit["images_per_s"] else 0.0)
        serial.append(result.images_per_s * (1 / limit["images_per_s"] + 1 / decode["images_per_s"]))
        loads.append(load_1min())
    extract_rate = median(extracts)
    return {
        **plan_header("extract", plan, plan.dataset),
        "batch_size": config.batch_size,
        "workers": result.manifest.timing.workers,
        "threads": torch.get_num_threads(),
        "precision": plan.precision,
        "rounds": rounds,
        "load_1min": loads,
        "forward_images_per_s": median(forwards),
        "extract_images_per_s": extract_rate,
        "rounds_forward_images_per_s": forwards,
        "rounds_extract_images_per_s": extracts,
        "extract_seconds": result.seconds,
        "ratio": median(ratios),
        "rounds_ratio": ratios,
        "decode_images_per_s": median(decodes),
        "rounds_decode_images_per_s": decodes,
        "ratio_to_decode": extract_rate / median(decodes) if median(decodes) else None,
        "serial_images_per_s": median([1 / (1 / f + 1 / d) for f, d in zip(forwards, decodes, strict=True)]),
        "ratio_to_serial": median(serial),
        "rounds_ratio_to_serial": serial,
        "cache_bytes": result.bytes,
    }
