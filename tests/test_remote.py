"""Remote stores (featcache/cache/remote.py) and pulls (featcache/cache/pull.py), against real HTTP servers started on
a free local port (tests/http_server.py): listing by manifests, verified and resumable pulls, the faults a network
brings, offline mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.progress import Progress

from featcache.cache.install import host
from featcache.cache.pull import PART_SUFFIX, pull
from featcache.cache.remote import RemoteStore, split_path, store_url
from featcache.util.progress import RateColumn, Reporter
from helpers import REPO, SYN_DISTILL, SYN_EXTRACT, flat, invoke, one_line_error
from http_server import Faults, serve


@pytest.fixture
def mirror(syn_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The syn_cache moved out of the (now empty) personal store into tmp_path/mirror, the directory the tests serve;
    the network allowed (conftest sets FEATCACHE_OFFLINE=1; loopback stays open)."""
    monkeypatch.delenv("FEATCACHE_OFFLINE")
    monkeypatch.setenv("FEATCACHE_TIMEOUT", "10")
    (tmp_path / "mirror").mkdir()
    shutil.move(syn_cache, tmp_path / "mirror" / syn_cache.name)
    return tmp_path / "mirror"


@pytest.fixture
def served(mirror: Path):
    srv = serve(mirror)
    yield srv
    srv.stop()


def _key(mirror: Path) -> str:
    (key,) = [p.name for p in mirror.iterdir() if p.is_dir()]
    return key


def _same_bits(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def _shard_gets(srv) -> list[tuple[str, str | None]]:
    return [(p, r) for p, r in srv.requests if p.endswith(".h5")]


def test_store_url_and_featcache_path_split():
    assert store_url(Path("https://host:8080/caches/")) == "https://host:8080/caches"  # pathlib's "https:/host"
    assert store_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert store_url("/shared/caches") is None and store_url("relative/dir") is None
    assert store_url("nosuchscheme://x") is None  # only a scheme fsspec knows makes a URL
    assert split_path("/a:https://host:8080/x:s3://b/p:/c") == ["/a", "https://host:8080/x", "s3://b/p", "/c"]
    assert split_path("/a::/b") == ["/a", "/b"]


@pytest.mark.parametrize("indexed", [False, True], ids=["html-listing", "index-json"])
def test_ls_lists_a_remote_store_by_its_manifests_only(mirror: Path, served, home: Path, indexed: bool):
    key = _key(mirror)
    if indexed:
        (mirror / "index.json").write_text(json.dumps({"featcache_index": 1, "keys": [key]}))
    r = invoke("cache", "ls", "--store", served.url)
    assert r.exit_code == 0, r.output
    assert key in flat(r) and f"remote {served.url}: 1 cache(s)" in flat(r)
    assert not _shard_gets(served) and not (home / key).exists()  # manifests only, nothing pulled
    listed = json.loads(invoke("cache", "ls", "--store", served.url, "--json").output)
    assert [(e["key"], e["store"], e["personal"]) for e in listed] == [(key, served.url, False)]


def test_pull_installs_the_same_bits_once(mirror: Path, served, home: Path):
    key = _key(mirror)
    r = invoke("cache", "pull", key[:12], "--store", served.url)  # a prefix, found through the listing
    assert r.exit_code == 0 and "pulled" in flat(r), r.output
    _same_bits(mirror / key, home / key)
    assert not list((home / ".incoming").glob("*@*"))  # the work directory became the cache
    r = invoke("cache", "pull", key, "--store", served.url)
    assert r.exit_code == 0 and "already here" in flat(r), r.output
    assert invoke("cache", "verify", key).exit_code == 0


def test_open_cache_pulls_on_use_through_featcache_path(mirror: Path, served, home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    import featcache as fc

    key = _key(mirror)
    (tmp_path / "local").mkdir()
    monkeypatch.setenv("FEATCACHE_PATH", f"{tmp_path / 'local'}:{served.url}")
    cache = fc.open_cache(key)
    assert cache.directory == home / key and cache.manifest.complete
    _same_bits(mirror / key, home / key)


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_pull_the_server_drops_mid_shard_resumes_to_the_same_bits(mirror: Path, home: Path, ranges: bool):
    key = _key(mirror)
    shard = sorted(p.name for p in (mirror / key).glob("*.h5"))[0]
    srv = serve(mirror, ranges=ranges, faults=Faults(drop={shard: 5000}))
    try:
        r = invoke("cache", "pull", key, "--store", srv.url)
    finally:
        srv.stop()
    assert r.exit_code == 0, r.output
    _same_bits(mirror / key, home / key)
    gets = [rng for p, rng in _shard_gets(srv) if p.endswith(shard)]
    assert gets == [None, "bytes=5000-"]  # resumed from where it stopped (a server without Range sent it all again)


def test_a_pull_downloads_the_files_of_a_cache_at_once(mirror: Path, home: Path):
    key = _key(mirror)
    started: dict[str, float] = {}
    faults = Faults(delay=0.5, on_request=lambda path: started.setdefault(path, time.monotonic()))
    srv = serve(mirror, faults=faults)  # each body takes 0.5 s: one after the other, they start 0.5 s apart
    try:
        pull(RemoteStore(srv.url), key, home)
    finally:
        srv.stop()
    shards = sorted(t for p, t in started.items() if p.endswith(".h5"))
    assert len(shards) == 2 and shards[1] - shards[0] < 0.25
    _same_bits(mirror / key, home / key)


def test_concurrent_downloads_each_resume_after_the_server_drops_them(mirror: Path, home: Path):
    key = _key(mirror)
    shards = sorted(p.name for p in (mirror / key).glob("*.h5"))
    srv = serve(mirror, faults=Faults(drop={shards[0]: 5000, shards[1]: 3000}))
    try:
        pull(RemoteStore(srv.url), key, home)
    finally:
        srv.stop()
    _same_bits(mirror / key, home / key)
    for shard, at in zip(shards, (5000, 3000), strict=True):
        assert [rng for p, rng in _shard_gets(srv) if p.endswith(shard)] == [None, f"bytes={at}-"]


def test_a_refused_shard_ends_the_pull_at_once_while_another_shard_is_stalled(mirror: Path, home: Path):
    key = _key(mirror)
    stalled, tampered = sorted((mirror / key).glob("*.h5"))
    tampered.chmod(0o644)
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"?")
    srv = serve(mirror, faults=Faults(stall={stalled.name: 5000}))  # then 30 s of silence (FEATCACHE_TIMEOUT is 10)
    try:
        start = time.monotonic()
        line = one_line_error(invoke("cache", "pull", key, "--store", srv.url), tampered.name, "do not match")
        took = time.monotonic() - start
    finally:
        srv.stop()
    assert took < 5, (took, line)  # the stalled download was ended, not waited out
    assert not (home / key).exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a descriptor's file through /proc")
def test_a_shard_that_cannot_be_made_durable_installs_nothing_and_a_rerun_resumes(mirror: Path, served, home: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    key = _key(mirror)
    shard = sorted(p.name for p in (mirror / key).glob("*.h5"))[-1]
    fsync = os.fsync

    def failing(fd: int) -> None:  # the disk fails this one file's fsync
        if os.readlink(f"/proc/self/fd/{fd}").endswith(shard + PART_SUFFIX):
            raise OSError(5, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    one_line_error(invoke("cache", "pull", key, "--store", served.url), f"store {home}", "Input/output error")
    work = home / ".incoming" / f"{key}@{host()}@pull"
    assert not (home / key).exists() and not (work / shard).exists()  # never renamed to its name undurable
    monkeypatch.setattr(os, "fsync", fsync)
    assert invoke("cache", "pull", key, "--store", served.url).exit_code == 0
    _same_bits(mirror / key, home / key)


@pytest.mark.slow  # a process of its own, killed
def test_a_pull_killed_then_rerun_resumes_to_the_same_bits(mirror: Path, home: Path):
    key = _key(mirror)
    shard = sorted(p.name for p in (mirror / key).glob("*.h5"))[0]
    srv = serve(mirror, faults=Faults(stall={shard: 5000}))  # 5000 bytes, then nothing: killed mid-shard
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        p = subprocess.Popen([sys.executable, "-m", "featcache", "cache", "pull", key, "--store", srv.url], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        part = home / ".incoming" / f"{key}@{host()}@pull" / f"{shard}{PART_SUFFIX}"
        while not (part.is_file() and part.stat().st_size == 5000) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        r = invoke("cache", "pull", key, "--store", srv.url)
    finally:
        srv.stop()
    assert r.exit_code == 0, r.output
    _same_bits(mirror / key, home / key)
    assert [rng for p, rng in _shard_gets(srv) if p.endswith(shard)] == [None, "bytes=5000-"]


def test_a_part_file_killed_before_its_rename_is_verified_not_fetched_again(mirror: Path, served, home: Path):
    key = _key(mirror)
    shard = sorted(p.name for p in (mirror / key).glob("*.h5"))[0]
    work = home / ".incoming" / f"{key}@{host()}@pull"
    work.mkdir(parents=True)
    shutil.copy(mirror / key / "manifest.json", work / "manifest.json")
    shutil.copy(mirror / key / shard, work / f"{shard}{PART_SUFFIX}")
    r = invoke("cache", "pull", key, "--store", served.url)
    assert r.exit_code == 0, r.output
    _same_bits(mirror / key, home / key)
    assert shard not in {p.rsplit("/", 1)[-1] for p, _ in _shard_gets(served)}


@pytest.mark.slow  # two processes of their own
def test_two_processes_pulling_one_key_download_it_once(mirror: Path, home: Path):
    key = _key(mirror)
    srv = serve(mirror, faults=Faults(delay=0.2))
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "featcache", "cache", "pull", key, "--store", srv.url]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        srv.stop()
    assert all(p.returncode == 0 for p in procs), outs
    shards = sorted(p.name for p in (mirror / key).glob("*.h5"))
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in _shard_gets(srv)) == shards  # each shard fetched once
    _same_bits(mirror / key, home / key)


def test_a_shard_whose_bytes_differ_from_its_hash_is_refused(mirror: Path, served, home: Path):
    key = _key(mirror)
    shard = sorted((mirror / key).glob("*.h5"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))
    one_line_error(invoke("cache", "pull", key, "--store", served.url), shard.name, "do not match the sha256",
                   "nothing was installed")
    assert not (home / key).exists() and not list(home.glob(f".incoming/*/*{shard.name}*"))


def test_a_shard_longer_than_its_manifest_says_is_refused(mirror: Path, served, home: Path):
    key = _key(mirror)
    shard = sorted((mirror / key).glob("*.h5"))[0]
    shard.chmod(0o644)
    with open(shard, "ab") as f:
        f.write(b"\0" * 4096)
    one_line_error(invoke("cache", "pull", key, "--store", served.url), "sends more than", "nothing was installed")
    assert not (home / key).exists()


def test_a_shard_shorter_than_its_manifest_says_is_refused_without_retrying(mirror: Path, served, home: Path):
    key = _key(mirror)
    shard = sorted((mirror / key).glob("*.h5"))[0]
    shard.chmod(0o644)
    shard.write_bytes(shard.read_bytes()[:-100])
    one_line_error(invoke("cache", "pull", key, "--store", served.url), "bytes, its manifest records",
                   "nothing was installed")
    assert len([p for p, _ in _shard_gets(served) if p.endswith(shard.name)]) == 1 and not (home / key).exists()


def test_a_missing_shard_is_one_line_naming_its_url(mirror: Path, served, home: Path):
    key = _key(mirror)
    shard = sorted((mirror / key).glob("*.h5"))[-1]
    shard.unlink()
    one_line_error(invoke("cache", "pull", key, "--store", served.url), f"{served.url}/{key}/{shard.name}", "404")
    assert not (home / key).exists()


def test_a_remote_manifest_that_changes_between_two_reads_is_refused(mirror: Path, home: Path):
    key = _key(mirror)
    manifest = mirror / key / "manifest.json"

    lock, done = threading.Lock(), []

    def republish(path: str) -> None:  # a publisher rewrites the manifest once the first shard is being fetched
        with lock:  # (the pull fetches several shards at once: one rewrite, by one request)
            if path.endswith(".h5") and not done:
                d = json.loads(manifest.read_text())
                d["finished"] = "2030-01-01T00:00:00+00:00"
                fresh = manifest.with_name("manifest.json.new")
                fresh.write_text(json.dumps(d))
                os.replace(fresh, manifest)
                done.append(path)

    srv = serve(mirror, faults=Faults(on_request=republish))
    try:
        one_line_error(invoke("cache", "pull", key, "--store", srv.url), "changed while the cache was pulled",
                       "nothing was installed")
    finally:
        srv.stop()
    assert not (home / key).exists() and not list(home.glob(".incoming/*@pull"))


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["shards"][0].update(file="../../escape.h5"), "is unreadable"),
    (lambda d: d.update(format_version=99), "written by a newer featcache"),
    (lambda d: d["identity"].update(dtype="float32"), "its rows are not what its key names"),
], ids=["traversal", "newer-format", "identity"])
def test_a_remote_manifest_is_refused_as_a_local_one_is(mirror: Path, served, home: Path, edit, needle: str):
    key = _key(mirror)
    manifest = mirror / key / "manifest.json"
    d = json.loads(manifest.read_text())
    edit(d)
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(d))
    one_line_error(invoke("cache", "pull", key, "--store", served.url), needle)
    assert not _shard_gets(served) and not (home / key).exists()


def test_offline_reads_no_remote_and_names_the_pull(mirror: Path, served, home: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    key = _key(mirror)
    one_line_error(invoke("cache", "info", key, "--store", served.url, "--offline"), "offline",
                   f"featcache cache pull {key} --store {served.url}")
    monkeypatch.setenv("FEATCACHE_OFFLINE", "1")
    one_line_error(invoke("cache", "pull", key, "--store", served.url), "FEATCACHE_OFFLINE=1")
    assert served.requests == []  # the network was never touched


def test_a_stalled_server_times_out_naming_the_url(mirror: Path, home: Path, monkeypatch: pytest.MonkeyPatch):
    import featcache.cache.pull as pull_module

    key = _key(mirror)
    monkeypatch.setattr(pull_module, "RETRIES", 0)
    monkeypatch.setenv("FEATCACHE_TIMEOUT", "0.2")
    srv = serve(mirror, faults=Faults(delay=1.0))
    try:
        line = one_line_error(invoke("cache", "pull", key, "--store", srv.url), "timed out", "FEATCACHE_TIMEOUT")
    finally:
        srv.stop()
    assert f"{srv.url}/{key}/" in line and not (home / key).exists()


def test_a_pull_reports_bytes_for_a_rate_and_eta(mirror: Path, home: Path):
    key = _key(mirror)
    srv = serve(mirror, faults=Faults(delay=0.01))

    class Seen(Reporter):
        def start(self, total, description, unit="img", run=None):
            self.total, self.unit, self.done = total, unit, 0

        def advance(self, n=1, **fields):
            self.done += n

    seen = Seen()
    try:
        pull(RemoteStore(srv.url), key, home, seen)
    finally:
        srv.stop()
    size = sum(p.stat().st_size for p in (mirror / key).glob("*.h5"))
    assert (seen.unit, seen.total, seen.done) == ("B", size, size)
    with Progress(RateColumn(), disable=True) as bar:  # what the CLI's bar shows with those calls
        task = bar.add_task("pull", total=size, unit="B")
        bar.update(task, completed=size)
        assert "B/s" in str(RateColumn().render(bar.tasks[0]))


def test_a_remote_store_is_read_only(mirror: Path, served, home: Path):
    key = _key(mirror)
    one_line_error(invoke("cache", "rm", key, "--store", served.url), "remote store", "read-only")


def test_distill_from_a_remote_store_equals_the_same_distill_from_a_local_copy(mirror: Path, served, home: Path,
                                                                                 tmp_path: Path):
    key = _key(mirror)
    args = ("distill", "--teacher", key, *SYN_DISTILL, "--method", "ts", "--epochs", "1")
    remote = invoke(*args, "--store", served.url, "--run-dir", tmp_path / "remote")
    assert remote.exit_code == 0, remote.output
    assert (home / key / "manifest.json").is_file()
    local = invoke(*args, "--cache-dir", mirror, "--run-dir", tmp_path / "local")
    assert local.exit_code == 0, local.output
    metrics = [[json.loads(ln) for ln in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
               for r in ("remote", "local")]
    strip = [[{k: v for k, v in m.items() if not k.endswith(("_per_s", "seconds", "time"))} for m in ms]
             for ms in metrics]  # every number but the speeds: the same bits
    assert strip[0] == strip[1] and "test_acc" in strip[0][-1]


def test_a_remote_store_that_cannot_be_reached_leaves_the_local_ones_usable(syn_cache: Path, home: Path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FEATCACHE_OFFLINE")
    srv = serve(home)  # a port that was a server's and is closed now
    srv.stop()
    r = invoke("cache", "ls", "--store", srv.url)
    assert r.exit_code == 0 and f"not read {srv.url}" in flat(r) and syn_cache.name in flat(r), r.output
    assert invoke("cache", "info", syn_cache.name[:10], "--store", srv.url).exit_code == 0  # a prefix: listed


def test_distill_offline_names_the_pull_and_reads_nothing(mirror: Path, served, home: Path, tmp_path: Path):
    key = _key(mirror)
    r = invoke("distill", "--teacher", key, *SYN_DISTILL, "--epochs", "1", "--store", served.url, "--offline",
               "--run-dir", tmp_path / "run")
    one_line_error(r, f"featcache cache pull {key} --store {served.url}")
    assert served.requests == []


def test_extract_reuses_a_cache_a_remote_store_holds(mirror: Path, served, home: Path):
    key = _key(mirror)
    r = invoke("extract", *SYN_EXTRACT, "--store", served.url)
    assert r.exit_code == 0, r.output
    _same_bits(mirror / key, home / key)  # pulled, not extracted again
    assert _shard_gets(served)


def test_a_store_any_fsspec_protocol_serves_is_pulled_and_resumed(mirror: Path, home: Path):
    import fsspec

    key = _key(mirror)
    fs = fsspec.filesystem("memory")
    for p in (mirror / key).iterdir():
        fs.pipe(f"/mirror/{key}/{p.name}", p.read_bytes())
    try:
        remote = RemoteStore("memory://mirror")
        assert remote.keys() == [key]
        shard = sorted(p.name for p in (mirror / key).glob("*.h5"))[0]
        work = home / ".incoming" / f"{key}@{host()}@pull"
        work.mkdir(parents=True)
        shutil.copy(mirror / key / "manifest.json", work / "manifest.json")
        (work / f"{shard}{PART_SUFFIX}").write_bytes((mirror / key / shard).read_bytes()[:1000])  # half a shard
        pull(remote, key, home)
        _same_bits(mirror / key, home / key)
    finally:
        fs.rm("/mirror", recursive=True)
