"""`featcache bench distill`: the training step of one student, fed by the same loader, measured back to back.

The settings: the student alone (``ce``); with the first k cached teachers (the product); with the same k teachers
run online on every batch (teachers in the loop; for comparison only, it exists in no other place). Each next to
its limit, the same student in a bare PyTorch loop; images/s and peak memory of each, and their ratios to the
student alone.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featcache.bench import load_1min, median, sync, utc_now, versions
from featcache.errors import ConfigError
from featcache.extract import ExtractConfig, extract
from featcache.progress import Reporter
from featcache.runtime import PeakRSS, autocast, device_name

if TYPE_CHECKING:
    from featcache.distill.trainer import DistillConfig

Scenario = tuple[str, "DistillConfig", int]  # (setting, its run's config, how many teachers)


def _timed_steps(parts, steps: int, warmup: int) -> dict[str, Any]:
    """Run ``warmup`` then ``steps`` training steps from the loader (epochs wrap around); images/s and peak memory.
    Online settings (``distill --online``) run their teachers inside each step, as a training run does."""
    device = parts.step.device
    done, timed_images, start = 0, 0, None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    epoch = 0
    while done < warmup + steps:
        parts.loader.set_epoch(epoch)
        for batch in parts.loader:
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            parts.run_step(batch, 0)
            done += 1
            if done > warmup:
                timed_images += len(batch)
            if done == warmup + steps:
                break
        epoch += 1
    sync(device)
    seconds = time.perf_counter() - start
    parts.loader.close()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"images_per_s": timed_images / seconds, "seconds": seconds, "images": timed_images,
            "peak_memory_bytes": peak}


def _bare_steps(s, steps: int, warmup: int) -> dict[str, Any]:
    """The limit: the same registry student and optimizer in a plain PyTorch loop (forward, cross-entropy, backward,
    step) on normalised images already in a tensor on the device; no loader, no method, no bookkeeping."""
    import copy

    from featcache.distill.trainer import make_optimizer

    config, device = s.config, s.device
    model = copy.deepcopy(s.model).to(device).train()
    size = s.transform.image_size
    x = torch.randn(config.batch_size, 3, size, size, device=device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.train.num_classes, (config.batch_size,), device=device)
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, s.precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"images_per_s": steps * config.batch_size / seconds, "seconds": seconds,
            "images": steps * config.batch_size, "peak_memory_bytes": peak}


def _extract_teachers(config: "DistillConfig", teachers, weights: str, scratch: Path,
                      reporter: Reporter) -> tuple[list[str], int | None]:
    """Extract each teacher into the scratch store (not timed), all at the first one's image size; their cache keys
    and that size (the student's own without teachers)."""
    exts, keys = [], []
    for i, name in enumerate(teachers):
        ext = ExtractConfig(
            teacher=name, weights=weights, dataset=config.dataset, data_root=config.data_root,
            dataset_options=dict(config.dataset_options),
            image_size=config.image_size or (None if i == 0 else exts[0].image_size),
            batch_size=config.batch_size, workers=config.workers, device=config.device,
            precision=config.precision, cache_dir=scratch,
        )
        reporter.message(f"extracting {name} into a scratch store (not timed)")
        result = extract(ext, reporter=reporter)
        ext.image_size = result.manifest.transform.image_size
        exts.append(ext)
        keys.append(result.key)
    return keys, exts[0].image_size if exts else config.image_size


def _scenarios(config: "DistillConfig", keys: list[str], size: int | None,
               scratch: Path) -> tuple[list[Scenario], dict[str, str]]:
    """The student alone, then with the first k cached and the first k online teachers, k = 1..T; and the method
    of each teacher setting (``config.method`` with one teacher, ``multi`` with several)."""
    base = replace(config, cache_dir=scratch, image_size=None, augment="none", noise_per_batch=0)
    scenarios: list[Scenario] = [("student", replace(base, teachers=[], method="ce", image_size=size), 0)]
    methods: dict[str, str] = {}
    for k in range(1, len(keys) + 1):
        method = (config.method or "ts") if k == 1 else "multi"
        for kind in ("cached", "online"):
            scenarios.append((f"{kind}-{k}", replace(base, teachers=keys[:k], method=method,
                                                     online=kind == "online"), k))
            methods[f"{kind}-{k}"] = method
    return scenarios, methods


def _limits(scenarios: list[Scenario], bare: bool) -> dict[str, str]:
    """The limit of each setting: its own student (a method may widen the feature layer) in a bare loop, timed right
    before it; online settings share the limit of the cached setting with the same student."""
    if not bare:
        return {}
    return {name: ("bare-cached-" + name.split("-")[1] if name.startswith("online") else f"bare-{name}")
            for name, _, _ in scenarios}


def _time_one(s, what: str, steps: int, warmup: int) -> dict[str, Any]:
    """One timing of setup ``s``: its bare loop (``bare-…``) or its training step through the loader."""
    from featcache.distill.trainer import training_parts

    with PeakRSS() as rss:
        if what.startswith("bare"):
            from featcache.runtime import use_cpu_threads

            use_cpu_threads(s.device, 0)
            got = _bare_steps(s, steps, warmup)
            resident = None
        else:
            parts = training_parts(s)
            resident = parts.resident
            got = _timed_steps(parts, steps, warmup)
            del parts
    got["peak_rss_bytes"] = rss.peak
    got["resident"] = resident
    got["threads"] = torch.get_num_threads()
    return got


def _run_rounds(scenarios: list[Scenario], *, steps: int, warmup: int, rounds: int, bare: bool,
                reporter: Reporter) -> tuple[dict[str, list[dict[str, Any]]], list, Any]:
    """Every setting once per round (its bare loop first), so a load change hits them all; the timings of each
    setting, the load after each round and the last setup's (device, precision, image size)."""
    from featcache.distill.trainer import setup

    runs: dict[str, list[dict[str, Any]]] = {}
    loads = [load_1min()]
    last = None
    for r in range(rounds):
        for name, cfg, _ in scenarios:
            torch.manual_seed(cfg.seed)
            s = setup(cfg)
            last = (s.device, s.precision, s.transform.image_size)
            if s.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            todo = ([f"bare-{name}"] if bare and not name.startswith("online") else []) + [name]
            for what in todo:
                reporter.message(f"round {r + 1}/{rounds}, {what}: {steps} steps of batch {cfg.batch_size} after "
                                 f"{warmup} warm-up steps")
                runs.setdefault(what, []).append(_time_one(s, what, steps, warmup))
            del s
            if last[0].type == "cuda":
                torch.cuda.empty_cache()
        loads.append(load_1min())
    return runs, loads, last


def _summarise(runs: dict[str, list[dict[str, Any]]], limit_of: dict[str, str]) -> dict[str, Any]:
    """Per setting: the median images/s of its rounds, its median per-round ratio to its limit and to the student
    alone, and its peak memory (and that over the student alone's)."""
    results: dict[str, Any] = {}
    for name, rs in runs.items():
        rate = [x["images_per_s"] for x in rs]
        res = {"images_per_s": median(rate), "rounds_images_per_s": rate,
               "peak_memory_bytes": max((x["peak_memory_bytes"] for x in rs if x["peak_memory_bytes"]), default=None),
               "peak_rss_bytes": max((x["peak_rss_bytes"] for x in rs if x["peak_rss_bytes"]), default=None),
               "resident": rs[0]["resident"], "threads": rs[0]["threads"]}
        ref = limit_of.get(name)
        if ref in runs:
            res["limit"] = ref
            res["speed_vs_bare"] = median([x["images_per_s"] / y["images_per_s"] for x, y in zip(rs, runs[ref])])
        res["speed_vs_student"] = median([x["images_per_s"] / y["images_per_s"] for x, y in zip(rs, runs["student"])])
        results[name] = res
    a = results["student"]
    for r in results.values():
        r["memory_vs_student"] = (r["peak_memory_bytes"] / a["peak_memory_bytes"]
                                  if r["peak_memory_bytes"] and a["peak_memory_bytes"] else None)
        r["rss_vs_student"] = (r["peak_rss_bytes"] / a["peak_rss_bytes"]
                               if r["peak_rss_bytes"] and a["peak_rss_bytes"] else None)
    return results


def bench_distill(
    config: "DistillConfig", *, teachers: list[str] | tuple[str, ...] = ("resnet50",), weights: str = "random",
    steps: int = 50, warmup: int = 10, rounds: int = 3, bare: bool = True, reporter: Reporter | None = None,
) -> dict[str, Any]:
    """The bare loop, the student alone, then with the first k cached teachers and with the same k teachers online,
    k = 1..T, in ``rounds`` interleaved rounds (every setting once per round, so a load change hits them all).

    ``config`` describes the student run (student, dataset, batch size, precision, --resident, --compile); with one
    teacher the method is ``config.method`` (default ``ts``), with several ``multi``. The teacher caches are
    extracted first into a scratch store at one image size (not timed). Each setting reports the median images/s of
    its rounds, its median per-round ratio to the bare loop and to the student alone, and peak memory (the device's
    allocator on a GPU, sampled RSS on the CPU).
    """
    reporter = reporter or Reporter()
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ConfigError(f"--steps and --rounds must be >= 1 and --warmup >= 0, got {steps}, {rounds} and {warmup}")
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as scratch:
        keys, size = _extract_teachers(config, teachers, weights, Path(scratch), reporter)
        scenarios, methods = _scenarios(config, keys, size, Path(scratch))
        limit_of = _limits(scenarios, bare)
        runs, loads, (device, precision, size) = _run_rounds(scenarios, steps=steps, warmup=warmup, rounds=rounds,
                                                             bare=bare, reporter=reporter)
    return {
        "benchmark": "distill",
        "date": utc_now(),
        "device": device_name(device),
        "versions": versions(),
        "student": config.student,
        "teachers": list(teachers),
        "methods": methods,
        "dataset": config.dataset,
        "image_size": size,
        "batch_size": config.batch_size,
        "precision": precision,
        "resident": config.resident,
        "compile": config.compile,
        "steps": steps,
        "rounds": rounds,
        "load_1min": loads,
        "results": _summarise(runs, limit_of),
    }
