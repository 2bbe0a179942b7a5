"""`featcache bench scale`, the life of a big cache: verify, ls, the re-extract answer, resume after kill -9 of the
writer, publish / export / import and gc --dry-run, each timed through the functions the commands call (or the
command in a fresh process where a user waits for it), next to its limit in the same process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from featcache.bench.scale import drop_pages, load, sequential_read
from featcache.bench.store import copy_files, git_commit
from featcache.bench.synth import SynthSpec, write_synthetic_cache
from featcache.cache.format import MANIFEST
from featcache.cache.install import INCOMING
from featcache.cache.store import CacheStore
from featcache.util.fileio import read_json


def _seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    got = fn()
    return time.perf_counter() - start, got


def _store(path: Path) -> CacheStore:
    return CacheStore(path, shared_env=False)


def bench_verify(store: Path, key: str, paths: list[Path], repeats: int, temps: tuple[str, ...],
                 reporter) -> list[dict[str, Any]]:
    """`cache verify` (every shard re-hashed, shapes checked) vs a sequential read + sha256 of the same bytes."""
    rounds = []
    for r in range(repeats):
        for temp in temps:
            reporter.message(f"verify round {r + 1}/{repeats}, {temp} page cache")
            got: dict[str, Any] = {"temp": temp, "load_before": load()}
            for name, fn in (("limit", lambda: sequential_read(paths, sha256=True)),
                             ("verify", lambda: _store(store).verify(key))):
                drop_pages(paths) if temp == "cold" else sequential_read(paths)
                got[f"{name}_seconds"], report = _seconds(fn)
            if not report.ok:
                raise RuntimeError(f"cache verify found {[c.file for c in report.bad][:3]} bad")
            got["ratio"] = got["limit_seconds"] / got["verify_seconds"]
            got["load_after"] = load()
            rounds.append(got)
    return rounds


def _cli(args: list[str]) -> float:
    env = {**os.environ, "FEATCACHE_PATH": ""}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featcache", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, check=True)
    return time.perf_counter() - start


def bench_commands(store: Path, repeats: int) -> dict[str, Any]:
    """`cache ls` and `cache gc --dry-run` (a budget that would remove everything) as a user waits for them: the
    command in a fresh process; and the store's listing alone."""
    ls = [_cli(["cache", "ls", "--cache-dir", str(store)]) for _ in range(repeats)]
    gc = [_cli(["cache", "gc", "--cache-dir", str(store), "--max-size", "1M", "--dry-run"]) for _ in range(repeats)]
    entries = [_seconds(lambda: _store(store).entries())[0] for _ in range(repeats)]
    start = time.perf_counter()
    _cli(["--help"])
    return {"ls_seconds": ls, "gc_dry_run_seconds": gc, "entries_seconds": entries,
            "help_seconds": time.perf_counter() - start, "load": load()}


def bench_reuse(store: Path, key: str, paths: list[Path], repeats: int, reporter) -> list[dict[str, Any]]:
    """The re-extract answer: a remembered request for the cache (what `featcache extract` of the same request checks
    before it says there is nothing to do: the memo, the manifest, the inputs' signature and every shard's size and
    sha256) and the full path's reuse check (locate + ``intact``), next to a sequential read + sha256 of the shards,
    warm page cache."""
    from featcache.cache.requests import recall, remember, request_inputs, tree_signature
    from featcache.extract.manifest import intact

    request = {"bench": "scale", "key": key}  # a synthetic cache has no real request: this one stands for it
    remember(store, request, key, tree_signature(request_inputs(request)), None)
    rounds = []
    for r in range(repeats):
        reporter.message(f"re-extract answer round {r + 1}/{repeats}")
        got: dict[str, Any] = {"load_before": load()}
        sequential_read(paths)
        got["limit_seconds"] = sequential_read(paths, sha256=True)["seconds"]
        got["recall_seconds"], answer = _seconds(lambda: recall(store, request))
        if answer is None or answer["key"] != key:
            raise RuntimeError(f"the remembered request was not answered ({answer})")
        got["locate_seconds"], entry = _seconds(lambda: _store(store).locate(key))
        got["intact_seconds"], ok = _seconds(lambda: intact(entry.directory))  # noqa: B023 (called now)
        if not ok:
            raise RuntimeError(f"cache {key} is not intact")
        got["ratio"] = got["limit_seconds"] / got["recall_seconds"]
        got["load_after"] = load()
        rounds.append(got)
    return rounds


def _work_manifest(store: Path, key: str) -> tuple[int, int, int]:
    """(shards recorded in the manifest, finished shard files, unfinished .tmp files) of key's work directory."""
    for d in (store / INCOMING).glob(f"{key}@*"):
        try:
            recorded = len(read_json(d / MANIFEST)["shards"])
        except (OSError, ValueError, KeyError, TypeError):
            recorded = 0
        return recorded, len(list(d.glob("*.h5"))), len(list(d.glob("*.h5.tmp")))
    return 0, 0, 0


def bench_resume(store: Path, spec: SynthSpec, kill_at: float, reporter) -> dict[str, Any]:
    """Write the cache in a child process, kill -9 it once ``kill_at`` of its shards are recorded, finish it here
    (the work directory is adopted, recorded intact shards kept, the rest redone) and verify it."""
    total = spec.views * -(-spec.rows // spec.shard_rows)
    args = [sys.executable, "-m", "featcache", "bench", "scale", "--only", "write", "--store", str(store),
            "--rows", str(spec.rows), "--dim", str(spec.dim), "--classes", str(spec.classes), "--views",
            str(spec.views), "--dtype", spec.dtype, "--seed", str(spec.seed), "--kill-at", "0"]  # 0: no grandchild
    reporter.message(f"writing {spec.key} in a child process, kill -9 at {kill_at:.0%} of {total} shards")
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    while child.poll() is None and _work_manifest(store, spec.key)[0] < kill_at * total:
        time.sleep(0.1)
    if child.poll() is not None:  # finished before a manifest save showed enough shards: too small to kill
        return {"total_shards": total, "finished_before_kill": True, "returncode": child.returncode}
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child_seconds = time.perf_counter() - start
    recorded, files, tmp = _work_manifest(store, spec.key)
    reporter.message(f"killed: {recorded} shards recorded, {files} shard files, {tmp} unfinished; resuming")
    written = write_synthetic_cache(store, spec, reporter=reporter)
    verify_seconds, report = _seconds(lambda: _store(store).verify(spec.key))
    return {"total_shards": total, "child_seconds": child_seconds, "recorded_at_kill": recorded,
            "files_at_kill": files, "tmp_at_kill": tmp, "kept": written.shards_kept,
            "rewritten": written.shards_written,
            "resume_seconds": written.seconds, "verify_ok": report.ok, "verify_seconds": verify_seconds,
            "bytes": written.bytes, "load": load()}


def bench_store_ops(store: Path, key: str, scratch: Path, repeats: int, reporter) -> list[dict[str, Any]]:
    """`cache publish`, `cache export` and `cache import` of the cache next to a copy of its files (bare, and + fsync:
    the durability the three give), warm page cache, ``repeats`` rounds; everything they wrote is removed."""
    from featcache.cache.archive import export_cache, import_archive
    from featcache.cache.publish import publish

    files = sorted((store / key).iterdir())
    rounds = []
    for r in range(repeats):
        reporter.message(f"store round {r + 1}/{repeats}: copy, publish, export, import")
        got: dict[str, Any] = {"load_before": load()}
        sequential_read(files)
        got["copy_seconds"], got["copy_fsync_seconds"] = copy_files(files, scratch / "copy")
        shutil.rmtree(scratch / "copy")
        for name, fn in (("publish", lambda: publish(_store(store), key, scratch / "shared")),
                         ("export", lambda: export_cache(_store(store), key, scratch / "a.tar")),
                         ("import", lambda: import_archive(scratch / "a.tar", scratch / "imported"))):
            (scratch / "shared").mkdir(exist_ok=True)
            (scratch / "imported").mkdir(exist_ok=True)
            sequential_read(files if name != "import" else [scratch / "a.tar"])
            os.sync()
            got[f"{name}_seconds"] = _seconds(fn)[0]
        for p in ("shared", "imported", "a.tar"):
            shutil.rmtree(scratch / p) if (scratch / p).is_dir() else (scratch / p).unlink(missing_ok=True)
        for name in ("publish", "export", "import"):
            got[f"{name}_vs_copy"] = got["copy_seconds"] / got[f"{name}_seconds"]
            got[f"{name}_vs_copy_fsync"] = got["copy_fsync_seconds"] / got[f"{name}_seconds"]
        got["load_after"] = load()
        rounds.append(got)
    return rounds


STEPS = ("write", "join", "ram", "verify", "commands", "reuse", "store")


def _write(store: Path, spec: SynthSpec, steps: tuple[str, ...], kill_at: float, reporter) -> dict[str, Any]:
    """Make sure the cache exists: through a killed and resumed write when ``kill_at`` (and it is not there yet)."""
    try:
        done = read_json(store / spec.key / MANIFEST).get("complete") is True
    except (OSError, ValueError, AttributeError):  # none yet, or not one to trust: written (again) below
        done = False
    if kill_at and not done:
        return {"resume": bench_resume(store, spec, kill_at, reporter)}
    w = write_synthetic_cache(store, spec, reporter=reporter)
    return {"write": {"seconds": w.seconds, "bytes": w.bytes, "shards": w.shards_written, "reused": w.reused,
                      "bytes_per_s": w.bytes / w.seconds if w.seconds else None, "load": load()}}


def bench_scale(store: Path, spec: SynthSpec, *, steps: tuple[str, ...] = STEPS,
                batch_sizes: tuple[int, ...] = (128, 256), repeats: int = 3,
                temps: tuple[str, ...] = ("warm", "cold"), kill_at: float = 0.5, scratch: Path | None = None,
                reporter=None) -> dict[str, Any]:
    """Every step of ``steps`` on the synthetic cache ``spec`` in ``store`` (written first when missing)."""
    import datetime as _dt

    from featcache.bench.scale import auto_decision, bench_join_scale, bench_ram_join, bench_ram_load, shard_files
    from featcache.cache.format import PART_DATA
    from featcache.cache.reader import FeatureCache
    from featcache.distill.loader import default_ram_budget
    from featcache.util.progress import Reporter

    reporter = reporter or Reporter()
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out: dict[str, Any] = {"benchmark": "scale", "date": now,
                           "commit": git_commit(), "cpus": os.cpu_count(), "spec": spec.__dict__, "key": spec.key,
                           "steps": list(steps), "repeats": repeats, "temps": list(temps), "load": [load()],
                           "free_bytes_before": shutil.disk_usage(store).free}
    if "write" in steps:
        out.update(_write(store, spec, steps, kill_at, reporter))
    if tuple(steps) == ("write",):
        return out
    cache = FeatureCache(store / spec.key)
    out["cache_bytes"] = cache.manifest.total_bytes()
    paths = shard_files(cache)
    if "join" in steps:
        out["join"] = bench_join_scale(cache, batch_sizes, repeats, temps, reporter)
    if "ram" in steps:
        out["auto"] = [auto_decision(cache, spec, views) for views in ([False, True] if spec.views > 1 else [False])]
        out["ram_budget_bytes"] = default_ram_budget()
        for d in out["auto"]:
            if d["table_bytes"] <= d["budget_bytes"]:
                d["load"] = bench_ram_load(cache, spec, d["views"], repeats, temps, reporter)
        if out["auto"][0]["table_bytes"] <= out["auto"][0]["budget_bytes"]:
            out["ram_join"] = bench_ram_join(cache, batch_sizes[0], repeats)
    cache.close()
    if "verify" in steps:
        out["verify"] = bench_verify(store, spec.key, paths, repeats, temps, reporter)
    if "commands" in steps:
        out["commands"] = bench_commands(store, repeats)
    if "reuse" in steps:
        out["reuse"] = bench_reuse(store, spec.key, paths, repeats, reporter)
    if "store" in steps:
        work = Path(scratch or store.parent / "scale-scratch")
        work.mkdir(parents=True, exist_ok=True)
        out["store"] = bench_store_ops(store, spec.key, work, repeats, reporter)
    out["data_paths"] = len([p for p in paths if p.name.startswith(PART_DATA)])
    out["load"].append(load())
    return out
