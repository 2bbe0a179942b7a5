"""`featcache bench`: throughput measured against its limit, all figures of a table from one run.

extract: images/s of a full `featcache extract` (decode + resize in workers, copy, teacher, background writes)
next to the bare forward pass of the same teacher at the same batch size and precision on device-resident input
(the limit extraction can approach). The ratio is the headline.
"""

from __future__ import annotations

import datetime as _dt
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.models.teachers import create_teacher
from featcache.progress import Reporter
from featcache.runtime import autocast, device_name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rate(
    config: ExtractConfig, *, iters: int = 20, warmup: int = 5
) -> dict[str, Any]:
    """Images/s of the teacher alone on a pre-made, normalised, device-resident batch."""
    plan = plan_extract(config)
    device = plan.device
    teacher = create_teacher(
        config.teacher, plan.weights, num_classes=plan.num_classes, seed=config.seed, image_size=plan.transform.image_size
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
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            with autocast(device, plan.precision):
                model(x)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"images": iters * config.batch_size, "seconds": seconds, "images_per_s": iters * config.batch_size / seconds}


def bench_extract(config: ExtractConfig, *, iters: int = 20, warmup: int = 5, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the forward limit and a forced extract of ``config`` into a scratch store; report both and the ratio."""
    plan = plan_extract(config)
    limit = forward_rate(config, iters=iters, warmup=warmup)
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as scratch:
        result = extract(replace(config, cache_dir=Path(scratch), force=True), reporter=reporter)
    import torchvision

    return {
        "benchmark": "extract",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(plan.device),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()},
        "teacher": plan.identity["teacher"]["name"],
        "dataset": f"{plan.dataset.name}/{plan.dataset.split}",
        "images": len(plan.dataset),
        "image_size": plan.transform.image_size,
        "batch_size": config.batch_size,
        "workers": result.manifest.timing.get("workers"),
        "precision": plan.precision,
        "forward_images_per_s": limit["images_per_s"],
        "extract_images_per_s": result.images_per_s,
        "extract_seconds": result.seconds,
        "ratio": result.images_per_s / limit["images_per_s"] if limit["images_per_s"] else None,
        "cache_bytes": result.bytes,
    }
