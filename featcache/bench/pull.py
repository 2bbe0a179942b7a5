"""`featcache bench store`'s pull: `cache pull` from a static HTTP mirror next to a plain download of the same files.

The cache is published into a directory (`cache publish --to DIR`, which also writes its index.json) and that
directory is served by ``python -m http.server`` in a process of its own on a loopback port: a mirror with no
featcache on the server, as a lab would serve one. Each round times, in this process, a plain urllib download of
every file of the cache into a scratch directory (1 MiB reads written to disk, no hashing: what ``curl -o`` does;
then an fsync of each, the durability a pull gives) and
`cache pull` of the same cache into an empty store (up to featcache.cache.pull.JOBS files at once, each file's sha256
computed as it is written and checked against the manifest, fsynced, installed by the verified rename), in
alternating order; the server reads its files from a warm page cache. The plain download is one file after the other
on one connection, as ``curl -o`` of each file is. The ratio is the plain download's seconds over the pull's, per
round, then their median.

With ``distill`` set it also times a student's first epoch from a real (small) cache pulled on use (`distill
--store URL`, an empty personal store) next to `cache pull` then the same distill from the local copy, each command
in a fresh process, as a user runs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from featcache.util.progress import Reporter

CHUNK = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def http_mirror(directory: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``directory`` on a free loopback port; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the HTTP server of the pull bench did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def plain_download(url: str, names: list[str], to: Path) -> tuple[float, float]:
    """Seconds to download ``url/<name>`` for every name into ``to`` with urllib (the bytes, nothing checked), and the
    same followed by an fsync of every file (the durability a pull gives: its files reach the disk before they are
    renamed into sight)."""
    to.mkdir()
    start = time.perf_counter()
    for name in names:
        with urllib.request.urlopen(f"{url}/{name}", timeout=60) as r, open(to / name, "wb") as f:
            while chunk := r.read(CHUNK):
                f.write(chunk)
    bare = time.perf_counter() - start
    for name in names:
        fd = os.open(to / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return bare, time.perf_counter() - start


def timed_pull(url: str, key: str, store: Path) -> float:
    from featcache.cache.pull import pull
    from featcache.cache.remote import RemoteStore

    start = time.perf_counter()
    pull(RemoteStore(url), key, store)
    return time.perf_counter() - start


def bench_pull(root: Path, src: Path, key: str, repeats: int, reporter: Reporter) -> dict[str, Any]:
    """`cache pull` of cache ``key`` (in the store ``src``) from an HTTP mirror next to a plain download."""
    from featcache.cache.publish import publish
    from featcache.cache.store import CacheStore

    mirror = root / "mirror"
    mirror.mkdir(parents=True)
    publish(CacheStore(src, shared_env=False), key, mirror)
    names = sorted(p.name for p in (mirror / key).iterdir())
    size = sum((mirror / key / n).stat().st_size for n in names)
    rounds = []
    with http_mirror(mirror) as url:
        plain_download(url + f"/{key}", names, root / "warm")  # untimed: the server's page cache, the first write
        shutil.rmtree(root / "warm")
        for r in range(repeats):
            reporter.message(f"pull round {r + 1}/{repeats}: plain download, cache pull")
            os.sync()
            t: dict[str, float] = {}
            for what in (("plain", "pull") if r % 2 == 0 else ("pull", "plain")):
                if what == "plain":
                    t["plain"], t["plain_fsync"] = plain_download(url + f"/{key}", names, root / "plain")
                else:
                    t["pull"] = timed_pull(url, key, root / "pulled")
                os.sync()
            t["load_1min"] = os.getloadavg()[0]
            rounds.append(t)
            shutil.rmtree(root / "plain")
            shutil.rmtree(root / "pulled")
    return _summary(rounds, size, len(names))


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _summary(rounds: list[dict[str, float]], size: int, files: int) -> dict[str, Any]:
    from featcache.cache.pull import JOBS

    out: dict[str, Any] = {"bytes": size, "files": files, "server": "python -m http.server (no Range), loopback",
                           "connections": min(JOBS, files),
                           "load_1min": [round(r["load_1min"], 2) for r in rounds]}
    for name in ("plain", "plain_fsync", "pull"):
        seconds = [r[name] for r in rounds]
        out[name] = {"seconds": _median(seconds), "mb_per_s": size / 1e6 / _median(seconds), "all_seconds": seconds}
    # same-round ratios, then their median; the goal: >= 0.8 of the plain download
    out["pull_vs_plain"] = _median([r["plain"] / r["pull"] for r in rounds])
    out["pull_vs_plain_fsync"] = _median([r["plain_fsync"] / r["pull"] for r in rounds])
    return out


SYN = ("--dataset", "synthetic", "-o", "num_test=200", "--workers", "0")


def _cli(args: list[str], home: Path, check: bool = True) -> float:
    """Seconds of ``featcache ARGS`` in a fresh process with the personal store ``home`` (and no FEATCACHE_PATH)."""
    env = {**os.environ, "FEATCACHE_HOME": str(home), "FEATCACHE_PATH": ""}
    env.pop("FEATCACHE_OFFLINE", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "featcache", *args], env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"featcache {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def bench_distill_pull(root: Path, images: int, repeats: int, reporter: Reporter) -> dict[str, Any]:
    """A student's first epoch (kd, lenet5, CPU) from a cache on an HTTP mirror: `distill --store URL` with an empty
    personal store (pulled on use) next to `cache pull` then `distill` from the local copy; seconds of each command,
    each in a fresh process, arms alternating."""
    data = (*SYN, "-o", f"num_train={images}")
    root.mkdir(parents=True)
    made = root / "made"
    reporter.message(f"distill pull: extracting a convnet cache of {images:,} synthetic images")
    _cli(["extract", "--teacher", "convnet", "--weights", "random", *data, "--image-size", "32",
          "--shard-rows", str(max(1, images // 8))], made)
    (key,) = [p.name for p in made.iterdir() if (p / "manifest.json").is_file()]
    mirror = root / "dmirror"
    mirror.mkdir()
    _cli(["cache", "publish", key, "--to", str(mirror)], made)
    size = sum(p.stat().st_size for p in (mirror / key).iterdir())
    distill = ["distill", "--student", "lenet5", "--teacher", "convnet", "--method", "kd", *data, "--device", "cpu",
               "--batch-size", "64", "--epochs", "1"]
    rounds = []
    with http_mirror(mirror) as url:
        for r in range(repeats):
            reporter.message(f"distill pull round {r + 1}/{repeats}: on use, pull first")
            t: dict[str, float] = {}
            for arm in (("on_use", "pull_first") if r % 2 == 0 else ("pull_first", "on_use")):
                home, run = root / f"home-{arm}", root / f"run-{arm}"
                if arm == "on_use":
                    t["on_use"] = _cli([*distill, "--store", url, "--run-dir", str(run)], home)
                else:
                    t["pull"] = _cli(["cache", "pull", key, "--store", url], home)
                    t["distill_local"] = _cli([*distill, "--run-dir", str(run)], home)
                    t["pull_first"] = t["pull"] + t["distill_local"]
                shutil.rmtree(home)
                shutil.rmtree(run)
            t["load_1min"] = os.getloadavg()[0]
            rounds.append(t)
    out: dict[str, Any] = {"images": images, "cache_bytes": size, "key": key,
                           "load_1min": [round(r["load_1min"], 2) for r in rounds]}
    for name in ("on_use", "pull_first", "pull", "distill_local"):
        seconds = [r[name] for r in rounds]
        out[name] = {"seconds": _median(seconds), "all_seconds": seconds}
    return out
