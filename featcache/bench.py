"""`featcache bench`: throughput measured against its limit, all figures of a table from one run.

extract: images/s of a full `featcache extract` (decode + resize in workers, copy, teacher, background writes)
next to the bare forward pass of the same teacher at the same batch size and precision on device-resident input
(the limit extraction can approach). The ratio is the headline.

distill: the training step of one student, fed by the same loader, measured back to back: the student alone
(``ce``); with the first k cached teachers (the product); with the same k teachers run online on every batch
(teachers in the loop; for comparison only, it exists in no other place). Images/s and peak device memory of each,
and their ratios to the student alone.

join: rows/s of the loader's row tables against naive h5py fancy indexing and one .pt file per sample.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featcache.transforms import Geometry
from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.models.teachers import create_teacher
from featcache.errors import ConfigError
from featcache.progress import Reporter
from featcache.runtime import PeakRSS, autocast, device_name
from featcache.specs import TransformSpec, WeightsInfo

if TYPE_CHECKING:
    from featcache.distill.trainer import DistillConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rate(
    config: ExtractConfig, *, iters: int = 20, warmup: int = 5, min_seconds: float = 3.0
) -> dict[str, Any]:
    """Images/s of the teacher alone on a pre-made, normalised, device-resident batch, with the thread count the
    extract uses; at least ``iters`` batches and ``min_seconds`` of timing, so the limit is not a few-ms blip."""
    from featcache.runtime import default_workers, use_cpu_threads

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
        _sync(device)
        start, done = time.perf_counter(), 0
        while done < iters or time.perf_counter() - start < min_seconds:
            with autocast(device, plan.precision):
                model(x)
            done += 1
            if done >= iters:
                _sync(device)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"images": done * config.batch_size, "seconds": seconds, "images_per_s": done * config.batch_size / seconds}


def decode_rate(config: ExtractConfig, *, max_images: int | None = None) -> dict[str, Any]:
    """Images/s of the input pipeline alone: extract's own batches (read, decode, resize, content digest) in its
    DataLoader workers, nothing else (the rate extraction can reach when the teacher is free)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from featcache.extract import Batches, DigestedSamples
    from featcache.runtime import default_workers

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
    loads, forwards, extracts, ratios, decodes, serial = [_load()], [], [], [], [], []
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
        loads.append(_load())
    extract_rate = _median(extracts)
    return {
        "benchmark": "extract",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(plan.device),
        "versions": _versions(),
        "teacher": plan.identity["teacher"]["name"],
        "dataset": f"{plan.dataset.name}/{plan.dataset.split}",
        "images": len(plan.dataset),
        "image_size": plan.transform.image_size,
        "batch_size": config.batch_size,
        "workers": result.manifest.timing.workers,
        "threads": torch.get_num_threads(),
        "precision": plan.precision,
        "rounds": rounds,
        "load_1min": loads,
        "forward_images_per_s": _median(forwards),
        "extract_images_per_s": extract_rate,
        "rounds_forward_images_per_s": forwards,
        "rounds_extract_images_per_s": extracts,
        "extract_seconds": result.seconds,
        "ratio": _median(ratios),
        "rounds_ratio": ratios,
        "decode_images_per_s": _median(decodes),
        "rounds_decode_images_per_s": decodes,
        "ratio_to_decode": extract_rate / _median(decodes) if _median(decodes) else None,
        "serial_images_per_s": _median([1 / (1 / f + 1 / d) for f, d in zip(forwards, decodes)]),
        "ratio_to_serial": _median(serial),
        "rounds_ratio_to_serial": serial,
        "cache_bytes": result.bytes,
    }


# -- distill ---------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


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
                _sync(device)
                start = time.perf_counter()
            parts.run_step(batch, 0)
            done += 1
            if done > warmup:
                timed_images += len(batch)
            if done == warmup + steps:
                break
        epoch += 1
    _sync(device)
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
            _sync(device)
            start = time.perf_counter()
        with autocast(device, s.precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"images_per_s": steps * config.batch_size / seconds, "seconds": seconds,
            "images": steps * config.batch_size, "peak_memory_bytes": peak}


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


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
    from featcache.distill.trainer import setup, training_parts

    reporter = reporter or Reporter()
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ConfigError(f"--steps and --rounds must be >= 1 and --warmup >= 0, got {steps}, {rounds} and {warmup}")
    methods: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as scratch:
        exts, keys = [], []
        for i, name in enumerate(teachers):
            ext = ExtractConfig(
                teacher=name, weights=weights, dataset=config.dataset, data_root=config.data_root,
                dataset_options=dict(config.dataset_options),
                image_size=config.image_size or (None if i == 0 else exts[0].image_size),
                batch_size=config.batch_size, workers=config.workers, device=config.device,
                precision=config.precision, cache_dir=Path(scratch),
            )
            reporter.message(f"extracting {name} into a scratch store (not timed)")
            result = extract(ext, reporter=reporter)
            ext.image_size = result.manifest.transform.image_size
            exts.append(ext)
            keys.append(result.key)
        size = exts[0].image_size if exts else config.image_size
        base = replace(config, cache_dir=Path(scratch), image_size=None, augment="none", noise_per_batch=0)
        alone = replace(base, teachers=[], method="ce", image_size=size)
        scenarios = [("student", alone, 0)]
        for k in range(1, len(teachers) + 1):
            method = (config.method or "ts") if k == 1 else "multi"
            for kind in ("cached", "online"):
                scenarios.append((f"{kind}-{k}", replace(base, teachers=keys[:k], method=method,
                                                         online=kind == "online"), k))
                methods[f"{kind}-{k}"] = method
        # The limit of each setting: its own student (a method may widen the feature layer) in a bare loop, timed
        # right before it; online settings share the limit of the cached setting with the same student.
        limit_of = {name: (None if name.startswith("online") else f"bare-{name}") for name, _, _ in scenarios}
        for name in list(limit_of):
            if name.startswith("online"):
                limit_of[name] = "bare-cached-" + name.split("-")[1]
        if not bare:
            limit_of = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        loads = [_load()]
        for r in range(rounds):
            for name, cfg, k in scenarios:
                torch.manual_seed(cfg.seed)
                s = setup(cfg)
                device, precision, size = s.device, s.precision, s.transform.image_size
                if s.device.type == "cuda":
                    torch.backends.cudnn.benchmark = True
                todo = ([f"bare-{name}"] if bare and not name.startswith("online") else []) + [name]
                for what in todo:
                    reporter.message(f"round {r + 1}/{rounds}, {what}: {steps} steps of batch {cfg.batch_size} after "
                                     f"{warmup} warm-up steps")
                    with PeakRSS() as rss:
                        if what.startswith("bare"):
                            from featcache.runtime import use_cpu_threads

                            use_cpu_threads(device, 0)
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
                    runs.setdefault(what, []).append(got)
                del s
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            loads.append(_load())
    results: dict[str, Any] = {}
    for name, rs in runs.items():
        rate = [x["images_per_s"] for x in rs]
        res = {"images_per_s": _median(rate), "rounds_images_per_s": rate,
               "peak_memory_bytes": max((x["peak_memory_bytes"] for x in rs if x["peak_memory_bytes"]), default=None),
               "peak_rss_bytes": max((x["peak_rss_bytes"] for x in rs if x["peak_rss_bytes"]), default=None),
               "resident": rs[0]["resident"], "threads": rs[0]["threads"]}
        ref = limit_of.get(name)
        if ref in runs:
            res["limit"] = ref
            res["speed_vs_bare"] = _median([x["images_per_s"] / y["images_per_s"] for x, y in zip(rs, runs[ref])])
        res["speed_vs_student"] = _median([x["images_per_s"] / y["images_per_s"] for x, y in zip(rs, runs["student"])])
        results[name] = res
    a = results["student"]
    for r in results.values():
        r["memory_vs_student"] = (r["peak_memory_bytes"] / a["peak_memory_bytes"]
                                  if r["peak_memory_bytes"] and a["peak_memory_bytes"] else None)
        r["rss_vs_student"] = (r["peak_rss_bytes"] / a["peak_rss_bytes"]
                               if r["peak_rss_bytes"] and a["peak_rss_bytes"] else None)
    return {
        "benchmark": "distill",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": _versions(),
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
        "results": results,
    }


# -- join ------------------------------------------------------------------------------------------------------------


def write_random_cache(directory: Path, rows: int, dim: int, classes: int, shard_rows: int = 4096, seed: int = 0,
                       identity: dict | None = None, dtype: str = "float16"):
    """A complete cache of random fp16 features / fp32 logits written by the real writer (benchmarks, tests); its
    key is the directory's name (give the ``identity`` it is the hash of for a cache that `cache import` accepts).
    ``dtype="int8"``: the same rows quantised as `extract --dtype int8` stores them (with their per-row scales)."""
    import numpy as np

    from featcache.cache.codec import quantise
    from featcache.cache.format import FEATURE_SCALE, INT8_CODEC, PART_DATA, Manifest, TeacherInfo
    from featcache.cache.writer import PartWriter

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.name
    identity = identity or {"bench": key, **({"feature_codec": INT8_CODEC} if dtype == "int8" else {})}
    m = Manifest(
        key=key, identity=identity, teacher=TeacherInfo("random", WeightsInfo.random(0), "random", dim, classes,
                                                        None, "unknown"),
        dataset={"name": "bench", "split": "train"}, classes=[str(c) for c in range(classes)],
        transform=TransformSpec(image_size=1, resize=1), dtype=dtype, logits_dtype="float32", precision="fp32",
        shard_rows=shard_rows, rows={PART_DATA: rows}, noise=None,
        feature_codec=INT8_CODEC if dtype == "int8" else None,
    )
    m.save(directory)
    writer = PartWriter(directory, m, PART_DATA, m.shards.append)
    for a in range(0, rows, shard_rows):
        b = min(a + shard_rows, rows)
        idx = np.arange(a, b)
        features, extra = rng.standard_normal((b - a, dim), dtype=np.float32).astype(np.float16), {}
        if dtype == "int8":
            q, scale = quantise(torch.from_numpy(features))
            features, extra = q.numpy(), {FEATURE_SCALE: scale.numpy()}
        writer.write(idx, features, rng.standard_normal((b - a, classes), dtype=np.float32), idx, extra)
    m.complete = True
    m.save(directory)
    return m


def _rate(fn, batches, limit_s: float) -> dict[str, Any]:
    """Rows/s of ``fn(batch)`` over ``batches``, stopping after ``limit_s`` seconds (slow anchors)."""
    rows, start = 0, time.perf_counter()
    for b in batches:
        fn(b)
        rows += len(b)
        if time.perf_counter() - start > limit_s:
            break
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0}


def _drop_page_cache(paths) -> bool:
    """Ask the kernel to forget the cached pages of ``paths`` (posix_fadvise DONTNEED: no root needed); False where
    the platform cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def bench_join(*, rows: int = 100_000, dim: int = 2048, classes: int = 10, batch_size: int = 128,
               pt_files: int = 5000, limit_s: float = 20.0, directory: Path | None = None, seed: int = 0,
               cold: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Rows/s of the joined loader's two table modes, each next to the machine's own limit for it, and the naive
    peers (h5py fancy indexing, one .pt file per sample).

    Limits: for the in-RAM table, ``np.take`` of the same shuffled batches into a reused buffer (a gather can be no
    faster); for the out-of-core table, a sequential read of the same shard bytes (the disk, or the page cache, can
    serve no faster). Every method serves shuffled batches of ``batch_size`` rows of the same cache (2048-d fp16
    features + logits by default). Files are freshly written, so reads come from the page cache unless ``cold``:
    then the shards' cached pages are dropped before each disk measurement.
    """
    import numpy as np

    from featcache.cache.reader import FeatureCache
    from featcache.distill.loader import InMemoryTable, OutOfCoreTable, epoch_plan

    reporter = reporter or Reporter()
    if rows < batch_size or batch_size < 1:
        raise ConfigError(f"--rows must be >= --batch-size >= 1, got {rows} and {batch_size}")
    load = [_load()]
    with tempfile.TemporaryDirectory(prefix="featcache-bench-join-", dir=directory) as scratch:
        root = Path(scratch)
        reporter.message(f"writing {rows:,} random rows of {dim}-d fp16 features (not timed)")
        write_random_cache(root / "cache", rows, dim, classes, seed=seed)
        cache = FeatureCache(root / "cache")
        shard_paths = [root / "cache" / sh.file for sh in cache.manifest.shards]
        rng = np.random.default_rng(seed)
        perm = rng.permutation(rows)
        shuffled = [perm[i : i + batch_size] for i in range(0, rows - batch_size + 1, batch_size)]
        results: dict[str, Any] = {}

        def maybe_cold() -> None:
            if cold and not _drop_page_cache(shard_paths):
                raise ConfigError("--cold needs posix_fadvise (Linux)")

        reporter.message("timing a sequential read of the shards (the out-of-core limit)")
        maybe_cold()
        chunk = bytearray(8 << 20)
        start, read = time.perf_counter(), 0
        for path in shard_paths:  # the files' bytes, in order, into one reused buffer: no parsing, no copies
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(chunk):
                    read += n
        seconds = time.perf_counter() - start
        total = sum(p.stat().st_size for p in shard_paths)
        results["sequential_read"] = {"rows": rows, "seconds": seconds, "rows_per_s": rows * (read / total) / seconds,
                                      "bytes_per_s": read / seconds}

        reporter.message("timing naive h5py fancy indexing (one sorted read per batch and shard)")
        maybe_cold()
        results["h5py_fancy"] = _rate(lambda b: cache.gather(b), shuffled, limit_s)

        n_pt = min(pt_files, rows)
        reporter.message(f"writing {n_pt:,} per-sample .pt files (not timed)")
        pt_dir = root / "pt"
        pt_dir.mkdir()
        table = cache.read_range(0, n_pt)
        for i in range(n_pt):
            torch.save({"features": torch.from_numpy(table["features"][i]),
                        "logits": torch.from_numpy(table["logits"][i])},
                       pt_dir / f"{i}.pt")
        pt_perm = rng.permutation(n_pt)
        pt_batches = [pt_perm[i : i + batch_size] for i in range(0, n_pt - batch_size + 1, batch_size)]

        def load_pt(b):
            items = [torch.load(pt_dir / f"{i}.pt", weights_only=True) for i in b]
            return torch.stack([x["features"] for x in items]), torch.stack([x["logits"] for x in items])

        reporter.message("timing one .pt file per sample (torchdistill's cache layout)")
        results["pt_per_sample"] = _rate(load_pt, pt_batches, limit_s)

        reporter.message("loading the in-RAM table")
        maybe_cold()
        t0 = time.perf_counter()
        ram = InMemoryTable(cache, "data")
        load_s = time.perf_counter() - t0
        feats, logits = ram.arrays
        buf_f = np.empty((batch_size, feats.shape[1]), feats.dtype)
        buf_l = np.empty((batch_size, logits.shape[1]), logits.dtype)

        def take_reused(b):
            # mode="clip": with out= and the default "raise", numpy gathers into a temporary and copies it over
            np.take(feats, b, axis=0, out=buf_f, mode="clip")
            np.take(logits, b, axis=0, out=buf_l, mode="clip")

        reporter.message("timing np.take into a reused buffer (the in-RAM limit), then the in-RAM table")
        results["np_take"] = _rate(take_reused, shuffled, limit_s)
        results["ram"] = _rate(ram.gather, shuffled, limit_s)
        results["ram"]["load_seconds"] = load_s
        ram = None  # free the table before the next one
        reporter.message("timing featcache.api.RowJoin (the rows in a user's own loop)")
        from featcache.api import RowJoin

        join = RowJoin([cache], check=False)  # scratch rows of no dataset: the gather alone is timed
        results["library"] = _rate(join.join, shuffled, limit_s)
        join = feats = logits = None  # free the tables before the out-of-core measurement

        reporter.message("timing the out-of-core table (block shuffle, prefetch thread)")
        plan = epoch_plan(rows, seed=seed, epoch=0, shuffle="block", block_rows=1024, window_blocks=8)
        disk = OutOfCoreTable(cache, "data", 1024, 8)
        block_batches = [plan.order[i : i + batch_size] for i in range(0, rows - batch_size + 1, batch_size)]
        maybe_cold()
        disk.start_epoch(plan)
        try:
            results["disk"] = _rate(disk.gather, block_batches, limit_s)
        finally:
            disk.close()
            cache.close()
    load.append(_load())
    anchor = results["h5py_fancy"]["rows_per_s"]
    for r in results.values():
        r["vs_h5py_fancy"] = r["rows_per_s"] / anchor if anchor else None
    results["ram"]["vs_limit"] = results["ram"]["rows_per_s"] / results["np_take"]["rows_per_s"]
    results["library"]["vs_limit"] = results["library"]["rows_per_s"] / results["np_take"]["rows_per_s"]
    results["disk"]["vs_limit"] = results["disk"]["rows_per_s"] / results["sequential_read"]["rows_per_s"]
    return {
        "benchmark": "join",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "versions": _versions(),
        "rows": rows, "dim": dim, "classes": classes, "batch_size": batch_size, "pt_files": n_pt,
        "table_bytes": rows * (2 * dim + 4 * classes), "cold": cold, "load_1min": load,
        "results": results,
    }


# -- trust -----------------------------------------------------------------------------------------------------------


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
    import os

    from featcache.cache.reader import CONTENT_SAMPLE, FeatureCache, check_shard, forget_verified_shards

    reporter = reporter or Reporter()
    plan = plan_extract(config)
    ds = plan.dataset
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
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
        "benchmark": "trust",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(plan.device),
        "versions": _versions(),
        "teacher": plan.identity["teacher"]["name"],
        "dataset": f"{ds.name}/{ds.split}",
        "images": len(ds),
        "image_size": plan.transform.image_size,
        "cache_bytes": result.bytes,
        "extract_seconds": extract_s,
        "content_sample_rows": min(CONTENT_SAMPLE, len(ds)),
        "repeats": repeats,
        "load_1min": round(load, 2) if load is not None else None,
        "results": results,
    }
