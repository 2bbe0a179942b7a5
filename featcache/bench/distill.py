"""`featcache bench distill`: the training step of one student, fed by the same loader, measured back to back.

The settings: the student alone (``ce``); with the first k cached teachers (the product); with the same k teachers
run online on every batch (teachers in the loop; for comparison only, it exists in no other place). Each next to
its limit, the same student in a bare PyTorch loop; images/s and peak memory of each, and their ratios to the
student alone. And the real path end to end (``end_to_end``): the student alone trained by ``distill`` itself for a
few epochs (set-up, decode, evaluation, checkpoints), its training and wall images/s next to the bare loop timed in
the same round, epoch by epoch, so a gap outside the step cannot hide.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featcache.bench.extract import load_1min, median, sync, utc_now, versions
from featcache.errors import ConfigError
from featcache.extract import ExtractConfig, extract
from featcache.util.progress import Reporter
from featcache.util.runtime import PeakRSS, autocast, device_name

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
    exts: list[Any] = []
    keys: list[str] = []
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
    # Every setting trains alike (the papers' optimizer, as with teachers), so they differ only in the teachers' rows.
    base = replace(config.with_papers_defaults(), cache_dir=scratch, image_size=None, augment="none",
                   noise_per_batch=0)
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
            from featcache.util.runtime import use_cpu_threads

            use_cpu_threads(s.device, 0)
            got = _bare_steps(s, steps, warmup)
            resident = None
        else:
            parts = training_parts(s)
            resident = parts.resident
            images_per_epoch = parts.loader.images_per_epoch()
            got = _timed_steps(parts, steps, warmup)
            got["images_per_epoch"] = images_per_epoch
            del parts
    got["peak_rss_bytes"] = rss.peak
    got["resident"] = resident
    got["threads"] = torch.get_num_threads()
    return got


def _run_rounds(scenarios: list[Scenario], *, steps: int, warmup: int, rounds: int, bare: bool, e2e_epochs: int,
                scratch: Path, reporter: Reporter) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]],
                                                            list, Any]:
    """Every setting once per round (its bare loop first, and after the student alone its real `distill` run when
    ``e2e_epochs``), so a load change hits them all; the timings of each setting, the end-to-end runs, the load after
    each round and the last setup's (device, precision, image size)."""
    from featcache.distill.trainer import setup

    runs: dict[str, list[dict[str, Any]]] = {}
    e2e: list[dict[str, Any]] = []
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
            if name == "student" and e2e_epochs:
                reporter.message(f"round {r + 1}/{rounds}, end to end: distill for {e2e_epochs} epochs")
                e2e.append(_end_to_end(cfg, e2e_epochs, scratch / f"e2e-{r + 1}",
                                       runs["student"][-1]["images_per_epoch"], reporter))
        loads.append(load_1min())
    return runs, e2e, loads, last


class _ProgressOnly(Reporter):
    """The real run's progress bar (its cost is part of the path), without its pre-flight and epoch lines."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def message(self, text: str) -> None:
        pass  # the run's own lines are not the bench's

    def start(self, *args, **kwargs) -> None:
        self.inner.start(*args, **kwargs)

    def advance(self, n: int = 1, **fields: object) -> None:
        self.inner.advance(n, **fields)

    def stop(self) -> None:
        self.inner.stop()


def _end_to_end(cfg: "DistillConfig", epochs: int, run_dir: Path, images_per_epoch: int,
                reporter: Reporter) -> dict[str, Any]:
    """One real ``distill`` call (the student alone for ``epochs`` epochs into ``run_dir``): its training images/s
    (the summary's, and each epoch's from metrics.jsonl) and its wall images/s (the whole call: set-up, decode,
    evaluation on the test split, checkpoints)."""
    from featcache.distill.trainer import distill
    from featcache.runs.rundir import read_metrics

    start = time.perf_counter()
    summary = distill(replace(cfg, epochs=epochs, run_dir=run_dir), reporter=_ProgressOnly(reporter))
    wall = time.perf_counter() - start
    metrics = read_metrics(run_dir)
    return {"train_images_per_s": summary.images_per_s, "wall_images_per_s": epochs * images_per_epoch / wall,
            "wall_seconds": wall, "images_per_epoch": images_per_epoch,
            "epochs_images_per_s": [m["images_per_s"] for m in metrics],
            "epoch_seconds": [m["epoch_seconds"] for m in metrics]}


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
            res["speed_vs_bare"] = median([x["images_per_s"] / y["images_per_s"]
                                           for x, y in zip(rs, runs[ref], strict=True)])
        res["speed_vs_student"] = median([x["images_per_s"] / y["images_per_s"]
                                          for x, y in zip(rs, runs["student"], strict=True)])
        results[name] = res
    a = results["student"]
    for r in results.values():
        r["memory_vs_student"] = (r["peak_memory_bytes"] / a["peak_memory_bytes"]
                                  if r["peak_memory_bytes"] and a["peak_memory_bytes"] else None)
        r["rss_vs_student"] = (r["peak_rss_bytes"] / a["peak_rss_bytes"]
                               if r["peak_rss_bytes"] and a["peak_rss_bytes"] else None)
    return results


def _summarise_e2e(e2e: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The real path's medians over rounds (overall and per epoch), and its median per-round ratios to the bare loop
    (``*_vs_bare``) and to the student alone's step through the loader (``*_vs_student``) timed in the same round."""
    if not e2e:
        return None
    epochs = len(e2e[0]["epochs_images_per_s"])
    res: dict[str, Any] = {
        "epochs": epochs, "images_per_epoch": e2e[0]["images_per_epoch"],
        "train_images_per_s": median([x["train_images_per_s"] for x in e2e]),
        "wall_images_per_s": median([x["wall_images_per_s"] for x in e2e]),
        "epochs_images_per_s": [median([x["epochs_images_per_s"][i] for x in e2e]) for i in range(epochs)],
        "rounds": e2e,
    }
    for ref, key in (("bare-student", "vs_bare"), ("student", "vs_student")):
        if ref not in runs:
            continue
        base = [y["images_per_s"] for y in runs[ref]]
        for what in ("train", "wall"):
            res[f"{what}_{key}"] = median([x[f"{what}_images_per_s"] / b for x, b in zip(e2e, base, strict=True)])
        res[f"epochs_{key}"] = [median([x["epochs_images_per_s"][i] / b for x, b in zip(e2e, base, strict=True)])
                                for i in range(epochs)]
    return res


def bench_distill(
    config: "DistillConfig", *, teachers: list[str] | tuple[str, ...] = ("resnet50",), weights: str = "random",
    steps: int = 50, warmup: int = 10, rounds: int = 3, bare: bool = True, e2e_epochs: int = 2,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """The bare loop, the student alone, then with the first k cached teachers and with the same k teachers online,
    k = 1..T, in ``rounds`` interleaved rounds (every setting once per round, so a load change hits them all).

    ``config`` describes the student run (student, dataset, batch size, precision, --resident, --compile); with one
    teacher the method is ``config.method`` (default ``ts``), with several ``multi``. The teacher caches are
    extracted first into a scratch store at one image size (not timed). Each setting reports the median images/s of
    its rounds, its median per-round ratio to the bare loop and to the student alone, and peak memory (the device's
    allocator on a GPU, sampled RSS on the CPU). With ``e2e_epochs`` (0: none), every round also runs the real
    ``distill`` of the student alone for that many epochs into a scratch run dir (``end_to_end``).
    """
    reporter = reporter or Reporter()
    if steps < 1 or warmup < 0 or rounds < 1 or e2e_epochs < 0:
        raise ConfigError(f"--steps and --rounds must be >= 1, --warmup and --e2e-epochs >= 0, got {steps}, {rounds}, "
                          f"{warmup} and {e2e_epochs}")
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as scratch:
        keys, size = _extract_teachers(config, teachers, weights, Path(scratch), reporter)
        scenarios, methods = _scenarios(config, keys, size, Path(scratch))
        limit_of = _limits(scenarios, bare)
        runs, e2e, loads, (device, precision, size) = _run_rounds(
            scenarios, steps=steps, warmup=warmup, rounds=rounds, bare=bare, e2e_epochs=e2e_epochs,
            scratch=Path(scratch), reporter=reporter)
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
        "e2e_epochs": e2e_epochs,
        "end_to_end": _summarise_e2e(e2e, runs),
    }
