"""Last use, reader leases, `cache gc` and `cache ls` (featcache/cache/usage.py, leases.py, gc.py).

Tiny caches come from the CLI once per module and are copied into each test's own personal store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from typer.testing import CliRunner

from featcache.cache import CacheLock, leases
from featcache.cache.install import host
from featcache.cache.leases import LEASES, TRASH, Lease
from featcache.cache.usage import USAGE, last_used, record_use
from featcache.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SYN = ["--dataset", "synthetic", "-o", "num_train=24", "-o", "num_test=8"]
EXTRACT = ["extract", "--teacher", "convnet", "--weights", "random", *SYN, "--image-size", "32", "--shard-rows", "16",
           "--workers", "0"]
DISTILL = ["distill", "--student", "lenet5", *SYN, "--device", "cpu", "--workers", "0", "--epochs", "1",
           "--batch-size", "8"]
DAY = 86400


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, list[str]]:
    """A store with three caches (24, 20 and 16 rows: different keys), made once."""
    store = tmp_path_factory.mktemp("template")
    keys = []
    for n in (24, 20, 16):
        args = [a if a != "num_train=24" else f"num_train={n}" for a in EXTRACT]
        r = invoke(*args, "--cache-dir", store)
        assert r.exit_code == 0, r.output
        keys.append(r.output.split("cache ")[1].split(":")[0].strip())
    return store, keys


@pytest.fixture
def home(template, tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    store, keys = template
    home = tmp_path / "home"
    shutil.copytree(store, home)
    shutil.rmtree(home / USAGE, ignore_errors=True)  # the extracts' uses: each test sets its own
    monkeypatch.setenv("FEATCACHE_HOME", str(home))
    monkeypatch.delenv("FEATCACHE_PATH", raising=False)
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    return home, keys


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def fake_lease(store: Path, key: str, where: str, pid: int, age: float = 0.0) -> Path:
    d = store / LEASES / key
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{where}@{pid}@0123abcd"
    path.write_text(json.dumps({"what": "distill"}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def used_at(store: Path, key: str, days_ago: float) -> None:
    record_use(store, [key])
    t = time.time() - days_ago * DAY
    os.utime(store / USAGE / key, (t, t))


def snapshot(store: Path) -> list:
    """Every path under ``store`` with its mtime (and a file's size and sha256)."""
    out = []
    for p in sorted(store.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out.append((str(p.relative_to(store)), st.st_mtime_ns, st.st_size if p.is_file() else 0, digest))
    return out + [(".", store.stat().st_mtime_ns, 0, "")]


# -- last use ------------------------------------------------------------------------------------------------------
def test_record_use_is_a_touch_in_the_personal_index(home):
    store, (key, *_) = home
    assert last_used(store, key) is None
    record_use(store, [key, "../escape", "", None])
    assert abs(last_used(store, key) - time.time()) < 5
    assert sorted(os.listdir(store / USAGE)) == [key]  # what is not a cache name is never a path
    # A personal store nobody may write records nothing, and says nothing.
    os.chmod(store, 0o555)
    try:
        record_use(store, [key + "x"])
        assert last_used(store, key + "x") is None
    finally:
        os.chmod(store, 0o755)


# -- leases: cache rm refuses, gc skips, both go ahead once the lease ends -----------------------------------------
def test_a_leased_cache_is_refused_by_rm_and_skipped_by_gc(home):
    store, (key, *_) = home
    with Lease([store / key], what="distill") as lease:
        (path,) = lease.files
        assert path.parent == store / LEASES / key and path.name.startswith(f"{host()}@{os.getpid()}@")
        one_line_error(invoke("cache", "rm", key), key, f"pid {os.getpid()}@{host()}", "distill", "wait for it")
        r = invoke("cache", "gc", "--max-size", "0")
        assert r.exit_code == 0 and f"skipped {key}" in r.output and "being read by" in r.output, r.output
        assert (store / key / "manifest.json").is_file()
    assert not (store / LEASES / key).exists()  # released: the file and its key's directory
    writer = CacheLock(store / key).acquire(wait=False)  # a writer's lock: skipped too
    try:
        r = invoke("cache", "gc", "--max-size", "0")
        assert f"skipped {key}" in r.output and f"being written by pid {os.getpid()}" in r.output, r.output
    finally:
        writer.release()
    r = invoke("cache", "gc", "--max-size", "0")
    assert r.exit_code == 0 and f"removed {key}" in r.output and not (store / key).exists(), r.output
    assert not list((store / TRASH).iterdir())


def test_a_lease_is_released_on_an_exception(home):
    store, (key, *_) = home
    with pytest.raises(RuntimeError):
        with Lease([store / key], what="distill"):
            assert (store / LEASES / key).is_dir()
            raise RuntimeError("boom")
    assert not (store / LEASES / key).exists()
    assert invoke("cache", "rm", key).exit_code == 0


def test_the_heartbeat_refreshes_a_lease_and_writes_it_again(home, monkeypatch):
    store, (key, *_) = home
    monkeypatch.setattr(leases, "HEARTBEAT", 0.02)

    def wait_for(condition):
        deadline = time.time() + 10
        while not condition():
            assert time.time() < deadline
            time.sleep(0.01)

    with Lease([store / key], what="distill") as lease:
        (path,) = lease.files
        os.utime(path, (1, 1))
        wait_for(lambda: path.stat().st_mtime > 1)
        path.unlink()  # taken for stale by a host whose clock runs ahead
        wait_for(path.exists)
        wait_for(lambda: path.read_text() != "")
        assert json.loads(path.read_text())["what"] == "distill"
    assert not path.exists()


def test_stale_leases_do_not_block_and_a_live_remote_one_does(home, monkeypatch):
    store, (a, b, c) = home
    fake_lease(store, a, host(), dead_pid())  # killed on this host
    fake_lease(store, a, "elsewhere", 4242, age=leases.STALE + 60)  # another host, heartbeat long gone
    fake_lease(store, b, host(), os.getpid())  # a reused pid: this process did not write it, at another start time
    (store / LEASES / b / f"{host()}@{os.getpid()}@0123abcd").write_text(json.dumps({"start": -1}))
    remote = fake_lease(store, c, "elsewhere", 4242, age=10)  # another host, heartbeat fresh: live
    assert invoke("cache", "rm", a).exit_code == 0
    assert invoke("cache", "rm", b).exit_code == 0
    one_line_error(invoke("cache", "rm", c), "pid 4242@elsewhere")
    os.utime(remote, (time.time() - leases.STALE - 1,) * 2)
    r = invoke("cache", "gc")  # no budget: only what crashes left
    assert r.exit_code == 0 and f"cleaned lease {c}/elsewhere@4242" in r.output, r.output
    assert r.output.count("cleaned lease") == 1 and not list((store / LEASES).iterdir())  # rm took a's and b's
    assert invoke("cache", "rm", c).exit_code == 0


# -- gc: least recently used first, by age and by size -------------------------------------------------------------
def test_gc_removes_by_age_then_by_size_in_lru_order(home):
    store, (a, b, c) = home
    used_at(store, a, 40)
    used_at(store, b, 10)
    used_at(store, c, 1)
    before = snapshot(store)
    r = invoke("cache", "gc", "--unused-for", "30d", "--dry-run")
    assert r.exit_code == 0 and f"would remove {a}" in r.output and b not in r.output, r.output
    assert "would free" in r.output and snapshot(store) == before  # a dry run touches nothing
    r = invoke("cache", "gc", "--unused-for", "30d")
    assert f"removed {a}" in r.output and "unused for 40 d" in r.output and b not in r.output, r.output
    assert not (store / a).exists() and (store / b).is_dir()
    # Over budget: the least recently used goes first, and gc stops as soon as the store fits.
    size_c = sum(p.stat().st_size for p in (store / c).iterdir())
    r = invoke("cache", "gc", "--max-size", str(size_c))
    assert f"removed {b}" in r.output and "over the size budget" in r.output and c not in r.output, r.output
    assert (store / c).is_dir()


def test_a_cache_never_used_counts_from_its_extract(home):
    store, (a, b, c) = home
    used_at(store, b, 40)
    used_at(store, c, 1)  # a: never recorded, extracted seconds ago
    r = invoke("cache", "gc", "--max-size", "0", "--dry-run")
    lines = [ln for ln in r.output.splitlines() if ln.startswith("would remove")]
    assert [ln.split()[2] for ln in lines] == [b, c, a], r.output
    assert "never used, extracted" in lines[2]
    ls = invoke("cache", "ls", "--sort", "used")
    rows = [ln.split()[0] for ln in ls.output.splitlines() if ln.startswith("convnet")]
    assert rows == [a, b, c], ls.output  # never used first, then the oldest use


# -- the race between a remover and a reader starting at the same moment --------------------------------------------
def test_a_lease_taken_between_gcs_check_and_its_delete_restores_the_cache(home, monkeypatch):
    store, (key, *_) = home
    real = leases._to_trash
    reader = Lease(what="distill")

    def to_trash_then_a_reader_arrives(directory):
        trash = real(directory)
        reader.files.append(leases._write(directory.parent, directory.name, "distill"))  # after gc's first check
        return trash

    monkeypatch.setattr(leases, "_to_trash", to_trash_then_a_reader_arrives)
    r = invoke("cache", "gc", "--max-size", "0")
    assert f"skipped {key}" in r.output and "being read by" in r.output, r.output
    assert (store / key / "manifest.json").is_file() and not list((store / TRASH).iterdir())
    assert invoke("cache", "verify", key).exit_code == 0
    reader.release()


@pytest.mark.parametrize("verdict", ["restore", "delete"])
def test_a_reader_waits_for_a_removers_verdict(home, verdict):
    store, (key, *_) = home
    mark = leases._write(store, key, "remove", remover=True)
    trash = leases._to_trash(store / key)

    def remover():
        time.sleep(0.3)
        if verdict == "restore":
            os.rename(trash, store / key)
        else:
            shutil.rmtree(trash)
        mark.unlink()

    t = threading.Thread(target=remover)
    t.start()
    try:
        if verdict == "restore":
            with Lease([store / key], what="distill"):
                assert (store / key / "manifest.json").is_file()
        else:
            with pytest.raises(leases.CacheError, match="was removed"):
                Lease([store / key], what="distill").__enter__()
            assert not list((store / LEASES).glob(f"{key}/*"))  # its lease went with the error
    finally:
        t.join()


# -- what a crash leaves -------------------------------------------------------------------------------------------
def test_gc_cleans_what_crashes_left(home):
    store, (a, b, _c) = home
    dead = dead_pid()
    incoming = store / ".incoming" / f"{a}@{host()}@{dead}@00000000"
    incoming.mkdir(parents=True)
    (incoming / "data-00000.h5.tmp").write_bytes(b"x" * 10)
    (store / TRASH).mkdir()
    trash = store / TRASH / f"{a}@{host()}@{dead}@00000001"
    shutil.copytree(store / a, trash)
    lost = store / TRASH / f"{b}@{host()}@{dead}@00000002"  # a remover died between its rename and its re-check
    os.rename(store / b, lost)
    stale = fake_lease(store, a, host(), dead)
    with Lease([store / a], what="distill"):
        b_reader = leases._write(store, b, "distill")  # b's reader leased its key just before b's remover died
        before = snapshot(store)
        r = invoke("cache", "gc", "--dry-run")
        assert r.output.count("would clean") == 4 and snapshot(store) == before, r.output
        r = invoke("cache", "gc")
        assert r.exit_code == 0 and r.output.count("cleaned") == 4, r.output
        assert f"{lost.name} of a removal that was interrupted: restored" in r.output
        assert (store / b / "manifest.json").is_file()  # back in place for its reader
    b_reader.unlink()
    assert not incoming.exists() and not trash.exists() and not stale.exists()
    assert not list((store / TRASH).iterdir()) and (store / a / "manifest.json").is_file()


# -- cache ls ------------------------------------------------------------------------------------------------------
def test_ls_columns_totals_sort_and_json(home):
    store, (a, b, c) = home
    used_at(store, a, 3)
    r = invoke("cache", "ls")
    assert r.exit_code == 0, r.output
    header = next(ln for ln in r.output.splitlines() if ln.startswith("key"))
    assert header.split() == ["key", "store", "teacher", "dataset", "split", "rows", "size", "last", "used", "status"]
    row_a = next(ln for ln in r.output.splitlines() if ln.startswith(a))
    assert "3 d ago" in row_a and "personal" in row_a and "complete" in row_a
    assert "never" in next(ln for ln in r.output.splitlines() if ln.startswith(b))
    assert f"personal {store}: 3 cache(s)" in r.output
    by_size = invoke("cache", "ls", "--sort", "size", "--json")
    listed = json.loads(by_size.output)
    assert [x["key"] for x in listed] == [a, b, c]  # 24, 20, 16 rows: largest first
    first = listed[0]
    assert first["store"] == str(store) and first["personal"] and first["bytes"] > 0 and first["status"] == "complete"
    assert first["last_used"].endswith("+00:00") and listed[1]["last_used"] is None
    assert {"teacher", "dataset", "split", "rows"} <= set(first)
    one_line_error(invoke("cache", "ls", "--sort", "age"), "--sort", "key, size, used")


def test_gc_flags_are_checked(home):
    one_line_error(invoke("cache", "gc", "--max-size", "12X"), "--max-size", "200G")
    one_line_error(invoke("cache", "gc", "--unused-for", "30"), "--unused-for", "30d")


# -- end to end: the readers ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_uses_are_recorded_in_the_personal_store_and_a_read_only_shared_store_is_untouched(home, tmp_path, monkeypatch):
    from featcache import api
    from featcache.cache import open_cache
    from featcache.datasets import get_dataset

    store, (key, *_) = home
    shared = tmp_path / "shared"
    shared.mkdir()
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    assert invoke("cache", "rm", key).exit_code == 0
    monkeypatch.setenv("FEATCACHE_PATH", str(shared))
    subprocess.run(["chmod", "-R", "a-w", str(shared)], check=True)  # root writes anyway: the listing tells
    before = snapshot(shared)
    try:
        r = invoke(*DISTILL, "--teacher", key, "--run-dir", tmp_path / "run")
        assert r.exit_code == 0, r.output
        assert abs(last_used(store, key) - time.time()) < 60
        os.utime(store / USAGE / key, (1, 1))
        assert invoke("eval", tmp_path / "run", "--device", "cpu", "--workers", "0").exit_code == 0
        assert last_used(store, key) > 1  # eval reads no cache, but uses the run's teachers
        assert invoke("cache", "verify", key).exit_code == 0
        os.utime(store / USAGE / key, (1, 1))
        join = api.RowJoin([key], get_dataset("synthetic", None, "train", num_train=24, num_test=8))
        assert len(join) == 24 and last_used(store, key) > 1
        os.utime(store / USAGE / key, (1, 1))
        open_cache(key)
        assert last_used(store, key) > 1
        assert not (store / LEASES).exists() or not list((store / LEASES).iterdir())
        assert snapshot(shared) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(shared)], check=True)


@pytest.mark.slow
def test_a_running_distill_holds_its_lease_until_killed(home, tmp_path):
    store, (key, *_) = home
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATCACHE_HOME": str(store)}
    args = [sys.executable, "-m", "featcache", *[a if a != "1" else "100000" for a in DISTILL], "--teacher", key,
            "--run-dir", str(run)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not (run / "config.json").exists():
            assert first.poll() is None and time.time() < deadline, first.stdout.read().decode()
            time.sleep(0.05)
        one_line_error(invoke("cache", "rm", key), f"pid {first.pid}@{host()}", "(distill)", "wait for it")
        r = invoke("cache", "gc", "--max-size", "0")
        assert f"skipped {key}" in r.output and f"pid {first.pid}@{host()}" in r.output, r.output
        assert (store / key / "manifest.json").is_file()
    finally:
        first.kill()  # kill -9: the lease stays behind, and is stale
        first.wait()
    assert list((store / LEASES / key).iterdir())
    r = invoke("cache", "gc", "--max-size", "0")
    assert f"cleaned lease {key}/" in r.output and f"removed {key}" in r.output, r.output
    assert not (store / key).exists() and not (store / LEASES / key).exists()
