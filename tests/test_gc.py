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
from typer.testing import CliRunner

from featcache.cache import CacheLock, leases
from featcache.cache.install import host
from featcache.cache.leases import LEASES, TRASH, Lease
from featcache.cache.usage import USAGE, last_used, record_use
from featcache.cli import app
from helpers import first_column, one_line_error

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
def three_caches(template, tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    """The personal store holding a copy of the template's three caches, none used yet; returns (store, keys)."""
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
def test_record_use_is_a_touch_in_the_personal_index(three_caches):
    store, (key, *_) = three_caches
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
def test_a_leased_cache_is_refused_by_rm_and_skipped_by_gc(three_caches):
    store, (key, *_) = three_caches
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


def test_a_lease_is_released_on_an_exception(three_caches):
    store, (key, *_) = three_caches
    with pytest.raises(RuntimeError):
        with Lease([store / key], what="distill"):
            assert (store / LEASES / key).is_dir()
            raise RuntimeError("boom")
    assert not (store / LEASES / key).exists()
    assert invoke("cache", "rm", key).exit_code == 0


def test_the_heartbeat_refreshes_a_lease_and_writes_it_again(three_caches, monkeypatch):
    store, (key, *_) = three_caches
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


def test_stale_leases_do_not_block_and_a_live_remote_one_does(three_caches, monkeypatch):
    store, (a, b, c) = three_caches
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
def test_gc_removes_by_age_then_by_size_in_lru_order(three_caches):
    store, (a, b, c) = three_caches
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


def test_a_cache_never_used_counts_from_its_extract(three_caches):
    store, (a, b, c) = three_caches
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
def test_a_lease_taken_between_gcs_check_and_its_delete_restores_the_cache(three_caches, monkeypatch):
    store, (key, *_) = three_caches
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
def test_a_reader_waits_for_a_removers_verdict(three_caches, verdict):
    store, (key, *_) = three_caches
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
def test_gc_cleans_what_crashes_left(three_caches):
    store, (a, b, _c) = three_caches
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
def test_ls_columns_totals_sort_and_json(three_caches):
    store, (a, b, c) = three_caches
    used_at(store, a, 3)
    r = runner.invoke(app, ["cache", "ls"], env={"COLUMNS": "200"})  # wide enough for one line per cache
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


@pytest.mark.parametrize("columns", [60, 80, 100, 200])
def test_ls_never_drops_a_key_or_a_column_at_any_width(tmp_path, monkeypatch, columns):
    """Keys that differ only in their last characters (the hash) are shown whole on one line, ready to copy: in the
    table where they fit beside the other columns, else each on a line of its own above its cells (at 80 columns, a
    pipe's width, the keys of real caches do not fit); every cell of every cache is there."""
    from featcache.bench.join import write_random_cache

    home = tmp_path / "home"
    keys = sorted(write_random_cache(home / f"c{k}", rows=8 * (k + 1), dim=4, classes=2).key for k in range(3))
    monkeypatch.setenv("FEATCACHE_HOME", str(home))
    monkeypatch.delenv("FEATCACHE_PATH", raising=False)
    r = runner.invoke(app, ["cache", "ls"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    shown = first_column(r.output)
    assert all(key in shown for key in keys), r.output
    for cell in ("random", "bench", "train", "8", "16", "24", "never"):
        assert f" {cell}" in r.output or f"\n{cell}" in r.output, (cell, r.output)
    assert r.output.count("complete") == 3 and r.output.count("personal") == 3 + 1, r.output  # + the total line
    assert all(len(ln) <= columns for ln in r.output.splitlines()
               if ln not in keys and not ln.startswith(("caches in", "personal /"))), r.output
    assert isinstance(shown, list) == (columns <= 80), r.output  # blocks up to a pipe's width, a table beyond
    if isinstance(shown, list):
        assert [ln for ln in shown if ln.startswith("random-")] == keys, r.output
    else:  # a line per cache, its key never folded
        assert shown.startswith("".join(keys)), r.output


def test_gc_flags_are_checked(three_caches):
    one_line_error(invoke("cache", "gc", "--max-size", "12X"), "--max-size", "200G")
    one_line_error(invoke("cache", "gc", "--unused-for", "30"), "--unused-for", "30d")


# -- end to end: the readers ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_uses_are_recorded_in_the_personal_store_and_a_read_only_shared_store_is_untouched(three_caches, tmp_path,
                                                                                           monkeypatch):
    from featcache import api
    from featcache.cache import open_cache
    from featcache.datasets import get_dataset

    store, (key, *_) = three_caches
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
def test_a_running_distill_holds_its_lease_until_killed(three_caches, tmp_path):
    store, (key, *_) = three_caches
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


# -- a store others write to: planted links, odd names, damaged leases, a store marked read-only --------------------
@pytest.fixture
def victim(three_caches, tmp_path) -> Path:
    """Another store (a cache of its own and an unrelated file) that links planted in the personal store point into."""
    store, (key, *_) = three_caches
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(store / key, other / key)
    (other / "notes.txt").write_text("not featcache's")
    return other


def test_gc_and_rm_never_follow_a_link_out_of_the_store(three_caches, victim):
    store, (a, b, c) = three_caches
    dead = dead_pid()
    before = snapshot(victim)
    (store / TRASH).mkdir()
    os.symlink(victim / a, store / TRASH / f"{a}@{host()}@{dead}@00000001")  # a "trash" that is another's cache
    inner = store / TRASH / f"{b}@{host()}@{dead}@00000002"  # a real trash directory holding links
    inner.mkdir()
    os.symlink(victim / a / "manifest.json", inner / "manifest.json")
    os.symlink(victim / "notes.txt", inner / "data-00000.h5")
    (store / ".incoming").mkdir(exist_ok=True)
    os.symlink(victim, store / ".incoming" / f"{a}@{host()}@{dead}@00000003")
    lease = store / LEASES / c / f"{host()}@{dead}@00000004"
    lease.parent.mkdir(parents=True)
    os.symlink(victim / "notes.txt", lease)
    shutil.rmtree(store / c)
    os.symlink(victim / a, store / c)  # a store entry that is a link to another store's cache
    used_at(store, c, 10)
    r = invoke("cache", "gc", "--unused-for", "1d", "--max-size", "0")
    assert r.exit_code == 0 and f"removed {a}" in r.output and f"removed {b}" in r.output, r.output
    assert f"skipped {c}" in r.output and "symbolic link" in r.output
    assert snapshot(victim) == before
    assert not list((store / TRASH).iterdir()) and not list((store / ".incoming").glob("*@*"))
    assert not os.path.lexists(lease) and (store / c).is_symlink()
    r = invoke("cache", "gc", "--unused-for", "1d")  # and again: one bad entry never stops a later gc
    assert r.exit_code == 0 and f"skipped {c}" in r.output, r.output
    r = invoke("cache", "rm", c)  # removed as a link, nothing it points to
    assert r.exit_code == 0 and not os.path.lexists(store / c), r.output
    assert snapshot(victim) == before and (victim / a / "manifest.json").is_file()


def test_bookkeeping_directories_that_are_links_are_never_entered(three_caches, victim):
    store, (a, *_) = three_caches
    dead = dead_pid()
    bait = victim / f"{a}@{host()}@{dead}@00000001"  # named like a dead remover's trash, a dead reader's lease...
    bait.mkdir()
    (bait / "manifest.json").write_text("{}")
    (victim / a / f"{host()}@{dead}@00000002").write_text("{}")
    os.chmod(victim, 0o700)
    before = snapshot(victim)
    for name in (TRASH, ".incoming", LEASES):
        shutil.rmtree(store / name, ignore_errors=True)
        os.symlink(victim, store / name)
    r = invoke("cache", "gc", "--max-size", "0", "--dry-run")
    assert r.exit_code == 0 and snapshot(victim) == before, r.output
    r = invoke("cache", "gc", "--max-size", "0")
    assert r.exit_code == 0 and f"removed {a}" in r.output, r.output
    assert snapshot(victim) == before and stat_mode(victim) == 0o700  # not entered, not chmod-ed
    assert not any(os.path.lexists(store / n) and (store / n).is_symlink() for n in (TRASH, ".incoming", LEASES))


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_a_lock_or_a_usage_index_planted_as_a_link_is_never_written_through(three_caches, victim):
    store, (a, b, _c) = three_caches
    before = snapshot(victim)
    os.symlink(victim / "notes.txt", store / a / ".lock")
    one_line_error(invoke("cache", "rm", a), ".lock", "symbolic link")
    (store / b / ".lock").unlink(missing_ok=True)
    os.mkfifo(store / b / ".lock")  # never read: no hang
    result = []
    threading.Thread(target=lambda: result.append(invoke("cache", "rm", b)), daemon=True).start()
    deadline = time.time() + 60
    while not result and time.time() < deadline:
        time.sleep(0.05)
    assert result, "cache rm hung on a FIFO planted as the cache's lock"
    one_line_error(result[0], ".lock")
    shutil.rmtree(store / USAGE, ignore_errors=True)
    os.symlink(victim, store / USAGE)
    record_use(store, [a])
    assert snapshot(victim) == before and (store / a / "manifest.json").is_file()


@pytest.mark.parametrize("pid", ["²", "1" + "0" * 30, "0", "٣"])
def test_lease_and_incoming_names_with_odd_pids_never_crash(three_caches, pid):
    from featcache.cache import install

    store, (a, b, _c) = three_caches
    for key in (a, b):
        d = store / LEASES / key
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{host()}@{pid}@00000000").write_text("{}")
        (d / f"removing@{host()}@{pid}@00000000").write_text("{}")
        (store / ".incoming" / f"{key}@{host()}@{pid}@00000000").mkdir(parents=True)
        (store / TRASH / f"{key}@elsewhere@{pid}@00000000").mkdir(parents=True)
    with Lease([store / a], what="distill"):  # a distill's lease check reads the key's other leases
        pass
    assert invoke("cache", "rm", a).exit_code == 0  # a foreign name is no lease: it blocks nothing
    r = invoke("cache", "gc")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    # Nobody can be alive behind such a name: it is cleaned once unchanged for as long as another host's would be.
    old = time.time() - 2 * DAY
    for p in [*(store / LEASES).glob("*/*"), *(store / ".incoming").iterdir(), *(store / TRASH).iterdir()]:
        os.utime(p, (old, old))
    r = invoke("cache", "gc")
    assert r.exit_code == 0 and "cleaned lease" in r.output, r.output
    assert not list((store / LEASES).glob("*/*@*")) and not list((store / ".incoming").glob("*@*"))
    assert not list((store / TRASH).iterdir())
    r = invoke(*EXTRACT, "--cache-dir", store, "--force")  # --force's removal path parses the same names
    assert r.exit_code == 0, r.output
    assert install.parse_pid(pid) is None and install.parse_incoming(f"{a}@{host()}@{pid}@0") is None
    assert install.parse_pid("4242") == 4242 and not install.pid_alive(10**30) and not install.pid_alive(0)


@pytest.mark.parametrize("content", ["[" * 100_000, "\udcff", ""])
def test_a_damaged_lease_is_read_as_a_lease_without_details(three_caches, content):
    store, (a, *_) = three_caches
    live = fake_lease(store, a, host(), os.getpid())
    live.write_bytes(content.encode("utf-8", "surrogateescape"))
    with Lease([store / a], what="distill"):
        pass
    one_line_error(invoke("cache", "rm", a), f"pid {os.getpid()}@{host()}")  # a live pid, whatever the file says
    r = invoke("cache", "gc", "--max-size", "0")
    assert r.exit_code == 0 and f"skipped {a}" in r.output, r.output
    live.unlink()
    fifo = store / LEASES / a / f"{host()}@{os.getpid()}@fifo0000"
    os.mkfifo(fifo)  # a FIFO is no lease, and is never opened
    done = threading.Event()
    threading.Thread(target=lambda: (invoke("cache", "rm", a), done.set()), daemon=True).start()
    assert done.wait(60) and not (store / a).exists()


def test_gc_goes_on_past_an_entry_it_cannot_remove(three_caches, monkeypatch):
    from featcache.cache import gc

    store, (a, b, _c) = three_caches
    dead = dead_pid()
    stuck = store / ".incoming" / f"{a}@{host()}@{dead}@00000000"
    stuck.mkdir(parents=True)
    real = gc.remove_tree

    def refuses(path):
        if Path(path) == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(gc, "remove_tree", refuses)
    for _ in range(2):
        r = invoke("cache", "gc", "--unused-for", "1s")
        assert r.exit_code == 0 and f"left incoming directory {stuck.name}" in r.output, r.output
        assert "Permission denied" in r.output
    assert not (store / a).exists() and not (store / b).exists()  # the caches were freed all the same


def test_a_store_marked_read_only_is_left_alone_even_as_root(three_caches):
    store, (a, b, _c) = three_caches
    os.chmod(store, 0o555)  # chmod a-w: how an admin marks a store read-only
    try:
        before = snapshot(store)
        with Lease([store / a], what="distill") as lease:
            assert lease.files == []  # a reader takes no lease there...
            # ... so no maintenance command writes there either, root included.
            one_line_error(invoke("cache", "rm", a), str(store), "read-only", "chmod")
            one_line_error(invoke("cache", "gc", "--max-size", "0"), str(store), "read-only")
            one_line_error(invoke(*EXTRACT, "--cache-dir", store, "--force"), str(store), "read-only")
            new_key = [x if x != "num_train=24" else "num_train=17" for x in EXTRACT]
            one_line_error(invoke(*new_key, "--cache-dir", store), str(store), "read-only")
        r = invoke("cache", "gc", "--max-size", "0", "--dry-run")
        assert r.exit_code == 0 and f"would remove {b}" in r.output, r.output
        assert snapshot(store) == before
    finally:
        os.chmod(store, 0o755)
    assert invoke("cache", "rm", a).exit_code == 0  # writable again: maintenance works, readers lease


def test_extract_force_never_replaces_a_cache_being_read(three_caches, victim):
    store, (a, *_) = three_caches
    before, ours = snapshot(victim), snapshot(store / a)
    dead = dead_pid()
    (store / ".incoming").mkdir(exist_ok=True)
    os.symlink(victim / a, store / ".incoming" / f"{a}@{host()}@{dead}@00000000")  # never adopted
    with Lease([store / a], what="distill"):
        one_line_error(invoke(*EXTRACT, "--cache-dir", store, "--force"), a, f"pid {os.getpid()}@{host()}",
                       "--force")
        assert snapshot(store / a) == ours
    r = invoke(*EXTRACT, "--cache-dir", store, "--force")
    assert r.exit_code == 0, r.output
    assert not (store / a).is_symlink() and (store / a / "manifest.json").is_file()
    assert snapshot(victim) == before
