"""A lab's store: shared stores under the personal one, publish, and writers that share a file system.

Shared stores are read-only to readers: a distill, an extract that finds its cache there, a verify and the Python API
leave them byte for byte and mtime for mtime as they were (on a real read-only mount where the test may make one).
Writers never show a half-written key, and two of them — with flock working or not, as on some NFS mounts — end with
one good cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featcache.cli import app
from helpers import FOLDER_DISTILL, SYN_DISTILL, SYN_EXTRACT, folder_extract_key, mount_tmpfs, one_line_error, umount

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
DISTILL = (*SYN_DISTILL, "--epochs", "1")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (what a reader must not change)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def extract_key(*args) -> str:
    r = invoke("extract", *SYN_EXTRACT, *args)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split()).split("cache ")[-1].split(":")[0].split(" ")[0]


# -- layered stores ---------------------------------------------------------------------------------------------------
def test_a_read_only_shared_store_is_read_and_never_written(home, syn_cache, tmp_path, monkeypatch):
    from featcache import api
    from featcache.cache import CacheStore

    key = syn_cache.name
    shared = tmp_path / "shared"
    real = mount_tmpfs(shared, "4m")
    try:
        assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
        assert invoke("cache", "rm", key).exit_code == 0
        if real:
            subprocess.run(["mount", "-o", "remount,ro", str(shared)], check=True)
        else:  # no mount rights: a tree nobody may write (how an admin marks a store read-only)
            for p in [shared, *shared.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        before = listing(shared)
        monkeypatch.setenv("FEATCACHE_PATH", str(shared))
        # Every reader: the re-extract finds it there, distill reads it, eval, verify, ls/info and the API.
        r = invoke("extract", *SYN_EXTRACT)
        assert r.exit_code == 0 and "nothing to do" in " ".join(r.output.split()), r.output
        assert not (home / key).exists()
        r = invoke("distill", *DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "run")
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "run" / "config.json").read_text())["teachers"][0]["key"] == key
        assert invoke("eval", tmp_path / "run").exit_code == 0
        assert invoke("cache", "verify", key).exit_code == 0
        info = invoke("cache", "info", key)
        assert info.exit_code == 0 and "(shared)" in info.output
        rows = api.RowJoin([key], check=False).join(np.arange(3))
        assert rows[0]["features"].shape[0] == 3
        assert CacheStore().locate(key).store == shared
        one_line_error(invoke("cache", "rm", key), "shared store", "--cache-dir")
        assert listing(shared) == before
    finally:
        if real:
            umount(shared)
        else:
            for p in [shared, *shared.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


def test_store_flags_and_the_recipe_key_search_the_same_stack(home, syn_cache, tmp_path):
    from featcache.pipeline import parse_pipeline

    key = syn_cache.name
    shared = tmp_path / "shared"
    shared.mkdir()
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    assert invoke("cache", "rm", key).exit_code == 0
    one_line_error(invoke("distill", *DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "a"), "no cache",
                   str(home))
    r = invoke("distill", *DISTILL, "--teacher", "convnet", "--store", shared, "--run-dir", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert invoke("cache", "ls", "--store", shared, "--json").exit_code == 0
    recipe = tmp_path / "r" / "x.toml"
    recipe.parent.mkdir()
    p = parse_pipeline({"pipeline": {"stores": ["../shared"]}, "dataset": {"name": "synthetic"}}, path=recipe)
    assert p.stores == [recipe.parent / "../shared"]
    with pytest.raises(Exception, match="stores"):
        parse_pipeline({"pipeline": {"stores": "../shared"}, "dataset": {"name": "synthetic"}}, path=recipe)


def test_a_key_in_two_stores_with_different_contents_is_an_error(home, syn_cache, tmp_path, monkeypatch):
    from featcache.util.hashing import file_sha256

    key = syn_cache.name
    shared = tmp_path / "shared"
    shared.mkdir()
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    # The shared copy is made different but self-consistent (its manifest records the new bytes).
    copy = shared / key
    shard = copy / "data-00001.h5"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    m = json.loads((copy / "manifest.json").read_text())
    m["shards"][1]["sha256"] = file_sha256(shard)
    (copy / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setenv("FEATCACHE_PATH", str(shared))
    for args in (("distill", *DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "r"),
                 ("distill", *DISTILL, "--teacher", key, "--run-dir", tmp_path / "r"), ("cache", "info", key)):
        one_line_error(invoke(*args), key, str(home), str(shared), "different contents")


def test_publish_is_all_or_nothing_and_a_second_publisher_loses_cleanly(home, syn_cache, tmp_path, monkeypatch):
    from featcache.cache import publish as pub

    key = syn_cache.name
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o2775)
    os.chmod(shared, 0o2775)
    # A publish that dies halfway leaves nothing under the key (only its private incoming directory).
    calls = {"n": 0}
    real = pub.copy_checked

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pub, "copy_checked", dies)
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 130
    monkeypatch.setattr(pub, "copy_checked", real)
    assert not (shared / key).exists() and not [p for p in (shared / ".incoming").iterdir()]
    r = invoke("cache", "publish", key, "--to", shared)
    assert r.exit_code == 0 and "published" in r.output
    mode = os.stat(shared / key).st_mode
    assert mode & 0o2070 == 0o2070  # the store's group bits and setgid follow into the cache
    assert all(p.stat().st_mode & 0o040 for p in (shared / key).iterdir())  # group-readable files
    # Second publishers: told it is there, nothing changed.
    before = listing(shared / key)
    r = invoke("cache", "publish", key, "--to", shared)
    assert r.exit_code == 0 and "already published" in r.output and listing(shared / key) == before
    from featcache.cache.install import install, new_incoming

    racing = new_incoming(shared, key)  # one that lost the rename race: its copy is discarded
    for p in (shared / key).iterdir():
        (racing / p.name).write_bytes(p.read_bytes())
    assert install(racing, shared, key) is False and not racing.exists()


KILL_AT = """
import os, signal, sys
from featcache.cache import install as inst, publish as pub
point, n = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def dying(real, after=False):
    def f(*a, **k):
        calls["n"] += 1
        if not after and calls["n"] == n:
            if point == "copy":  # halfway through this file: write part of it, then die
                src, dst = a[0], a[1]
                dst.write_bytes(src.read_bytes()[: max(1, src.stat().st_size // 2)])
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*a, **k)
        if after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return f

if point == "copy":
    pub.copy_checked = dying(pub.copy_checked)
elif point == "check":
    pub.check_complete = dying(pub.check_complete)
elif point == "rename":  # the directory complete and fsynced, the rename not done
    inst.fsync_dir = dying(inst.fsync_dir)
elif point == "installed":  # renamed, the store's directory entry not yet fsynced
    pub.install = dying(pub.install, after=True)
from featcache.cli import app
sys.exit(app(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point,n", [("copy", 1), ("copy", 2), ("check", 1), ("rename", 1), ("installed", 1)])
def test_kill_9_at_each_step_of_a_publish_leaves_nothing_or_the_complete_cache(home, syn_cache, tmp_path, point, n):
    from featcache.cache.install import check_complete, stale_incoming

    key = syn_cache.name
    shared = tmp_path / "shared"
    shared.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_AT, point, str(n), "cache", "publish", key, "--to", shared],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr  # it died where it was told to
    if (shared / key).exists():  # killed after the rename: then the key is the complete, verified cache
        assert point == "installed"
        check_complete(shared / key, key)
    else:
        assert len(stale_incoming(shared)) == 1  # a dead writer's private directory, which `cache gc` removes
    r = invoke("cache", "publish", key, "--to", shared)
    assert r.exit_code == 0, r.output
    assert ("already published" in r.output) == (point == "installed")
    check_complete(shared / key, key)
    r = invoke("cache", "gc", "--cache-dir", shared)
    assert r.exit_code == 0, r.output
    assert not list((shared / ".incoming").iterdir())


# -- writers sharing a file system ------------------------------------------------------------------------------------
NO_FLOCK = """
import errno, fcntl, sys
def refuse(*a, **k):
    raise OSError(errno.ENOLCK, "No locks available")  # as on an NFS mount without lock support
fcntl.flock = refuse
from featcache.cli import app
sys.exit(app(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_writers_without_flock_end_with_one_good_cache(tmp_path):
    store = tmp_path / "nfs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FEATCACHE_PATH", None)
    args = [sys.executable, "-c", NO_FLOCK, "extract", *SYN_EXTRACT[:-6], "-o", "num_train=600", "-o", "num_test=8",
            "--workers", "0", "--image-size", "32", "--shard-rows", "64", "--cache-dir", str(store)]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    keys = [p.name for p in store.iterdir() if not p.name.startswith(".") and p.name != "requests"]
    assert len(keys) == 1, keys
    r = invoke("cache", "verify", "--cache-dir", store)
    assert r.exit_code == 0 and "ok" in r.output, r.output
    assert [p.name for p in (store / ".incoming").iterdir() if "@" in p.name] == []  # the loser left nothing


def test_locks_left_by_another_host(home, syn_cache, tmp_path):
    from featcache.extract import plan_extract
    from featcache.extract.manifest import key_lock
    from featcache.extract.workdir import abandoned

    key = syn_cache.name
    assert invoke("cache", "rm", key).exit_code == 0
    # A live writer on another machine (its heartbeat is fresh): --no-wait refuses, naming it.
    from featcache.config import ExtractConfig

    plan = plan_extract(ExtractConfig(teacher="convnet", weights="random", dataset="synthetic", image_size=32,
                                      dataset_options={"num_train": 24, "num_test": 8}, shard_rows=16))
    lock = key_lock(plan).path
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("4242 gpu-node-7")
    one_line_error(invoke("extract", *SYN_EXTRACT, "--no-wait"), "4242 on host gpu-node-7")
    # A writer that died there an hour ago: its lock is taken over and its work directory adopted.
    old = time.time() - 3600
    os.utime(lock, (old, old))
    work = lock.parent / f"{key}@gpu-node-7@4242@00000000"
    work.mkdir()
    (work / ".heartbeat").touch()
    os.utime(work / ".heartbeat", (old, old))
    assert abandoned(home, key) == [work]
    r = invoke("extract", *SYN_EXTRACT, "--no-wait")
    assert r.exit_code == 0 and "continuing the work of an earlier extract" in " ".join(r.output.split()), r.output
    assert not work.exists() and invoke("cache", "verify", key).exit_code == 0
    # A run directory locked by a process that died on another host: refused with what to do.
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("77 gpu-node-3")
    os.utime(run / ".lock", (old, old))
    one_line_error(invoke("distill", *DISTILL, "--teacher", key, "--run-dir", run), "pid 77 on host gpu-node-3",
                   "delete")


def test_a_traversal_manifest_in_a_shared_store_is_refused(home, syn_cache, tmp_path, monkeypatch):
    """The trust rules hold for every store of the stack: a shared store's manifest naming a shard out of its
    directory is refused by distill, verify and the API, and nothing outside is read."""
    from featcache import api
    from featcache.errors import CacheError

    key = syn_cache.name
    shared = tmp_path / "shared"
    shared.mkdir()
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    assert invoke("cache", "rm", key).exit_code == 0
    outside = tmp_path / "x.h5"
    outside.write_bytes((shared / key / "data-00000.h5").read_bytes())
    m = json.loads((shared / key / "manifest.json").read_text())
    m["shards"][0]["file"] = os.path.relpath(outside, shared / key)
    (shared / key / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setenv("FEATCACHE_PATH", str(shared))
    one_line_error(invoke("distill", *DISTILL, "--teacher", key, "--run-dir", tmp_path / "r"), "data-00000.h5")
    r = invoke("cache", "verify", key)
    assert r.exit_code in (1, 2) and "data-00000.h5" in " ".join(r.output.split()) and "Traceback" not in r.output
    with pytest.raises(CacheError, match="data-00000.h5"):
        api.RowJoin([key], check=False)


# -- permissions in a store shared through a group --------------------------------------------------------------------
def test_publish_import_and_extract_leave_no_writable_cache_file_whatever_the_umask(home, syn_cache, tmp_path):
    """docs/store.md: cache files are never writable (and readable by the store's group), even with umask 002."""
    key = syn_cache.name
    stores = {name: tmp_path / name for name in ("published", "imported", "extracted")}
    for store in stores.values():
        store.mkdir()
        os.chmod(store, 0o2775)
    old = os.umask(0o002)
    try:
        assert invoke("cache", "publish", key, "--to", stores["published"]).exit_code == 0
        assert invoke("cache", "export", key, "-o", tmp_path / "c.tar").exit_code == 0
        assert invoke("cache", "import", tmp_path / "c.tar", "--to", stores["imported"]).exit_code == 0
        assert extract_key("--cache-dir", stores["extracted"]) == key
    finally:
        os.umask(old)
    for name, store in stores.items():
        files = list((store / key).iterdir())
        assert files and {p.name for p in files} >= {"manifest.json"}, name
        modes = {p.name: p.stat().st_mode & 0o777 for p in files}
        assert all(m & 0o222 == 0 and m & 0o040 for m in modes.values()), (name, modes)
        assert (store / key).stat().st_mode & 0o2070 == 0o2070, name  # the directory: the group's, to remove it


def test_a_link_planted_as_a_stores_bookkeeping_directory_is_never_written_through(home, syn_cache, tmp_path):
    key = syn_cache.name
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir()
    elsewhere.mkdir()
    os.chmod(shared, 0o2775)
    os.chmod(elsewhere, 0o700)
    os.symlink(elsewhere, shared / ".incoming")
    one_line_error(invoke("cache", "publish", key, "--to", shared), ".incoming", "symbolic link")
    assert not list(elsewhere.iterdir()) and elsewhere.stat().st_mode & 0o7777 == 0o700  # not chmod-ed either
    r = invoke("cache", "gc", "--cache-dir", shared)  # gc removes the link itself, then publishing works
    assert r.exit_code == 0 and ".incoming" in r.output and not (shared / ".incoming").is_symlink(), r.output
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    assert elsewhere.is_dir() and not list(elsewhere.iterdir())


READER_AS_NOBODY = """
import sys, time
from featcache.cache.leases import Lease
with Lease([sys.argv[1]], what="distill") as lease:
    print(len(lease.files), flush=True)
    time.sleep(120)
"""


def test_a_reader_of_a_group_store_as_another_user_holds_a_lease_root_respects(syn_cache, home):
    """A store shared through a group, read by a user who is not root: their lease is written, and root's
    `cache rm` / `cache gc` there leave the cache alone while they read it."""
    import grp
    import shutil
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a reader as the user nobody")
    try:
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no group nogroup to share the store through")
    key = syn_cache.name
    shared = Path(tempfile.mkdtemp(prefix="featcache-group-store-"))  # outside root's private pytest directory
    try:
        os.chmod(shared, 0o755)
        shared = shared / "store"
        shared.mkdir()
        os.chown(shared, -1, nogroup)
        os.chmod(shared, 0o2775)
        assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
        from featcache.cache.leases import Lease

        with Lease([shared / key], what="root's reader"):  # root made .leases: the group may write in it too
            pass
        reader = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", READER_AS_NOBODY,
             str(shared / key)], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "1"  # nobody's lease is written
            one_line_error(invoke("cache", "rm", key, "--cache-dir", shared), f"pid {reader.pid}", "distill")
            r = invoke("cache", "gc", "--max-size", "0", "--cache-dir", shared)
            assert r.exit_code == 0 and f"skipped {key}" in r.output, r.output
            assert (shared / key / "manifest.json").is_file()
        finally:
            reader.kill()
            reader.wait()
        assert invoke("cache", "rm", key, "--cache-dir", shared).exit_code == 0
    finally:
        subprocess.run(["rm", "-rf", str(shared.parent if shared.name == "store" else shared)], check=False)


# -- the store: orphans, rm during an extract, timing of resumed extracts ------------------------------------------
@pytest.mark.slow
def test_orphaned_shards_are_listed_and_removable(home, folder_tree):
    key = folder_extract_key("--data-root", folder_tree / "train")
    (home / key / "manifest.json").unlink()
    r = invoke("cache", "ls")
    assert r.exit_code == 0 and "orphaned" in r.output
    assert invoke("cache", "verify").exit_code == 1
    one_line_error(invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key), "cache rm")
    r = invoke("cache", "rm", key)
    assert r.exit_code == 0 and not (home / key).exists()


@pytest.mark.slow
def test_rm_of_a_cache_being_written_says_what_to_do(home, folder_tree):
    from featcache.cache import CacheLock

    key = folder_extract_key("--data-root", folder_tree / "train")
    lock = CacheLock(home / key).acquire()
    try:
        text = one_line_error(invoke("cache", "rm", key), key, "let its extract finish")
        assert "--no-wait" not in text
    finally:
        lock.release()
