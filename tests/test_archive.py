"""`featcache cache export` / `cache import` (issue 23): one file that moves a cache between clusters.

An archive may come from someone else, so every way of damaging or crafting one is refused in one ``error:`` line
(exit status 2) with nothing left behind: the key not visible, the store's incoming directory empty, nothing written
outside the store. The tampered archives are built with Python's own tarfile, as anyone could.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featcache.cli import app
from helpers import one_line_error, within

runner = CliRunner()
EXTRACT = ("--teacher", "convnet", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=24", "-o",
           "num_test=8", "--image-size", "32", "--shard-rows", "16", "--workers", "0")
INDEX = "featcache-archive.json"


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One tiny complete cache (24 rows in two shards), extracted once for the module; tests copy it."""
    home = tmp_path_factory.mktemp("built") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATCACHE_HOME", str(home))
        r = invoke("extract", *EXTRACT)
    assert r.exit_code == 0, r.output
    (key,) = [p.name for p in home.iterdir() if (p / "manifest.json").is_file()]
    return home / key


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    monkeypatch.delenv("FEATCACHE_PATH", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def cache(home, built) -> Path:
    shutil.copytree(built, home / built.name)
    return home / built.name


@pytest.fixture()
def archive(cache, tmp_path) -> Path:
    r = invoke("cache", "export", cache.name, "-o", tmp_path / "a.tar")
    assert r.exit_code == 0, r.output
    return tmp_path / "a.tar"


@pytest.fixture()
def other(tmp_path) -> Path:
    (tmp_path / "other").mkdir()
    return tmp_path / "other"


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def nothing_left(store: Path, key: str) -> None:
    assert not (store / key).exists()
    assert not any((store / ".incoming").iterdir()) if (store / ".incoming").exists() else True


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]


def repack(path: Path, items, reindex: bool = False) -> Path:
    """Write ``items`` [(TarInfo, data)] as a tar with Python's tarfile; ``reindex``: the index rewritten to agree
    with the members that follow it (a consistent forgery, not a damaged file)."""
    items = list(items)
    if reindex:
        index = json.loads(items[0][1])
        index["members"] = [{"name": m.name, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                            for m, d in items[1:] if d is not None]
        items[0] = (items[0][0], json.dumps(index).encode())
    out = path.with_name("forged.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in items:
            info = _copy(info)
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return out


def _copy(info: tarfile.TarInfo) -> tarfile.TarInfo:
    new = tarfile.TarInfo(info.name)
    new.type, new.linkname, new.mode, new.mtime, new.size = info.type, info.linkname, info.mode, info.mtime, info.size
    new.pax_headers = dict(info.pax_headers)
    return new


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


# -- the round trip ---------------------------------------------------------------------------------------------------
def test_export_import_round_trip_is_bit_exact_and_usable(cache, archive, other):
    from featcache.cache import open_cache

    names = [m.name for m, _ in members(archive)]
    assert names == [INDEX, f"{cache.name}/manifest.json", f"{cache.name}/data-00000.h5", f"{cache.name}/data-00001.h5"]
    index = json.loads(members(archive)[0][1])
    assert index["key"] == cache.name and index["version"] == 1
    assert index["members"][0]["sha256"] == hashlib.sha256((cache / "manifest.json").read_bytes()).hexdigest()
    r = invoke("cache", "import", archive, "--to", other)
    assert r.exit_code == 0 and "imported" in r.output, r.output
    assert files(other / cache.name) == files(cache)
    assert not any((other / ".incoming").iterdir())
    assert invoke("cache", "verify", cache.name, "--cache-dir", other).exit_code == 0
    rows = open_cache(cache.name, cache_dir=other).gather(np.arange(24))
    assert np.array_equal(rows["features"], open_cache(cache.name).gather(np.arange(24))["features"])


def test_shards_of_many_chunks_round_trip_through_the_library(tmp_path):
    """Shards larger than the copy's chunks, hashed by several threads at once, arrive bit-exact."""
    from featcache.bench.join import write_random_cache
    from featcache.cache.archive import export_cache, import_archive
    from featcache.cache.format import make_key
    from featcache.cache.hashpipe import CHUNK
    from featcache.cache.store import CacheStore

    identity = {"test": "archive", "rows": 2048}
    key = make_key(identity, "random", "bench", "train")
    write_random_cache(tmp_path / "a" / key, rows=2048, dim=512, classes=3, shard_rows=512, identity=identity)
    assert min(p.stat().st_size for p in (tmp_path / "a" / key).glob("*.h5")) > 2 * CHUNK > 0
    seen = []
    exported = export_cache(CacheStore(tmp_path / "a", shared_env=False), key, tmp_path / "x.tar", progress=seen.append)
    assert exported.bytes == (tmp_path / "x.tar").stat().st_size and sum(seen) > 2_000 * 1024
    (tmp_path / "b").mkdir()
    imported = import_archive(tmp_path / "x.tar", tmp_path / "b")
    assert imported.new and files(tmp_path / "b" / key) == files(tmp_path / "a" / key)


def test_export_refuses_a_directory_as_its_output(cache, tmp_path):
    one_line_error(invoke("cache", "export", cache.name, "-o", tmp_path), "is a directory")
    one_line_error(invoke("cache", "export", cache.name, "-o", tmp_path / "no" / "such" / "a.tar"),
                   "cannot be written")


def _not_regular(path: Path, kind: str, victim: Path) -> bool:
    """Plant ``kind`` at ``path``; False when this machine cannot make one (a device node needs root's mknod)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling symlink":
        path.symlink_to(victim.with_name("not-there"))
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        except (PermissionError, OSError):
            return False
    return True


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling symlink", "device"])
def test_export_refuses_an_output_that_is_not_a_regular_file_and_leaves_it_as_it_was(cache, tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    target = tmp_path / "out.tar"
    if not _not_regular(target, kind, victim):
        pytest.skip("a device node needs root with CAP_MKNOD (mknod refused here)")
    before = os.lstat(target)
    one_line_error(invoke("cache", "export", cache.name, "-o", target), f"-o {target}", "not a regular file")
    after = os.lstat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert victim.read_text() == "someone else's file\n"
    assert not (tmp_path / "not-there").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("planted", ["symlink", "directory", "fifo"])
def test_export_never_writes_through_what_is_planted_beside_its_output(cache, tmp_path, other, planted):
    """FILE.tmp (the name an older featcache used for its temporary file) planted by someone else: a link is never
    written through, a directory or a FIFO is no obstacle; the archive is written, whole, under FILE."""
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    target = tmp_path / "out.tar"
    beside = tmp_path / "out.tar.tmp"
    {"symlink": lambda: beside.symlink_to(victim), "directory": beside.mkdir,
     "fifo": lambda: os.mkfifo(beside)}[planted]()
    target.write_bytes(b"an older archive")  # a regular file at FILE is replaced, as before
    with within(30):  # opening a FIFO for writing would wait for a reader forever
        r = invoke("cache", "export", cache.name, "-o", target)
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "someone else's file\n"
    assert beside.is_symlink() if planted == "symlink" else beside.exists()
    r = invoke("cache", "import", target, "--to", other)
    assert r.exit_code == 0, r.output
    assert files(other / cache.name) == files(cache)


def test_paths_with_a_name_too_long_for_a_file_system_are_one_line(cache, archive, tmp_path):
    long = "q" * 300
    one_line_error(invoke("cache", "export", cache.name, "-o", tmp_path / long), "-o", "File name too long")
    one_line_error(invoke("cache", "export", cache.name, "-o", tmp_path / long / "a.tar"), "-o", "File name too long")
    one_line_error(invoke("cache", "import", tmp_path / f"{long}.tar", "--to", tmp_path), "File name too long")
    one_line_error(invoke("cache", "import", tmp_path / long / "a.tar", "--to", tmp_path), "File name too long")
    one_line_error(invoke("cache", "import", archive, "--to", tmp_path / long), "--to", "File name too long")


def test_import_defaults_to_the_personal_store_and_reads_stdin(cache, archive, home, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "fresh"))
    r = invoke("cache", "import", "-", input=archive.read_bytes())
    assert r.exit_code == 0, r.output
    assert files(tmp_path / "fresh" / cache.name) == files(cache)


def test_export_to_stdout_is_the_same_archive_but_its_date(cache, archive, home):
    r = invoke("cache", "export", cache.name, "-o", "-")
    assert r.exit_code == 0, r.stderr
    assert [d for _, d in members(archive)][1:] == [d for _, d in members(Path(_write(archive, r.stdout_bytes)))][1:]


def _write(near: Path, data: bytes) -> Path:
    p = near.with_name("stdout.tar")
    p.write_bytes(data)
    return p


def test_a_tar_written_by_another_tool_with_the_same_members_is_accepted(cache, archive, other):
    r = invoke("cache", "import", repack(archive, members(archive)), "--to", other)
    assert r.exit_code == 0, r.output
    assert files(other / cache.name) == files(cache)


def test_importing_a_cache_the_store_holds_says_so_and_a_different_one_is_refused(cache, archive, home):
    r = invoke("cache", "import", archive)
    assert r.exit_code == 0 and "already there" in r.output, r.output
    m = json.loads((cache / "manifest.json").read_text())
    m["shards"][0]["sha256"] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(m))
    one_line_error(invoke("cache", "import", archive), "different cache", cache.name)
    assert json.loads((cache / "manifest.json").read_text())["shards"][0]["sha256"] == "0" * 64  # left as it was


# -- damaged archives -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["empty", "index header", "index", "manifest", "shard", "end marker"])
def test_a_truncated_archive_is_refused_and_leaves_nothing(cache, archive, other, where):
    items = {m.name.rsplit("/", 1)[-1]: m for m, _ in members(archive)}
    cut = {"empty": 0, "index header": 100, "index": items[INDEX].offset_data + 10,
           "manifest": items["manifest.json"].offset_data + 100, "shard": items["data-00001.h5"].offset_data + 5000,
           "end marker": items["data-00001.h5"].offset_data + items["data-00001.h5"].size + 600}[where]
    cut_file = archive.with_name("cut.tar")
    cut_file.write_bytes(archive.read_bytes()[:cut])
    one_line_error(invoke("cache", "import", cut_file, "--to", other), "truncated", "nothing was imported")
    nothing_left(other, cache.name)


def test_a_flipped_byte_in_a_shard_is_refused(cache, archive, other):
    (info, _), = [(m, d) for m, d in members(archive) if m.name.endswith("data-00000.h5")]
    data = bytearray(archive.read_bytes())
    data[info.offset_data + 3000] ^= 0x01
    archive.write_bytes(bytes(data))
    one_line_error(invoke("cache", "import", archive, "--to", other), "data-00000.h5", "sha256")
    nothing_left(other, cache.name)


def test_an_edited_identity_is_refused_even_with_a_consistent_index(cache, archive, other):
    items = members(archive)
    m = json.loads(items[1][1])
    m["identity"]["precision"] = "fp16" if m["identity"]["precision"] != "fp16" else "fp32"
    items[1] = (items[1][0], json.dumps(m).encode())
    one_line_error(invoke("cache", "import", repack(archive, items, reindex=True), "--to", other),
                   "not the hash of the identity")
    nothing_left(other, cache.name)


def test_an_edited_shard_checksum_is_refused_even_with_a_consistent_index(cache, archive, other):
    """The forger edits a shard, and its sha256 in the manifest and the index: the shard still has to hash to it."""
    items = members(archive)
    m = json.loads(items[1][1])
    m["shards"][1]["sha256"] = "ab" * 32
    items[1] = (items[1][0], json.dumps(m).encode())
    forged = repack(archive, items, reindex=True)
    index = json.loads(members(forged)[0][1])
    index["members"][2]["sha256"] = "ab" * 32
    items = members(forged)
    items[0] = (items[0][0], json.dumps(index).encode())
    one_line_error(invoke("cache", "import", repack(forged, items), "--to", other), "sha256")
    nothing_left(other, cache.name)


def test_an_index_that_disagrees_with_the_manifest_is_refused(cache, archive, other):
    items = members(archive)
    index = json.loads(items[0][1])
    index["members"][1]["sha256"] = "cd" * 32
    items[0] = (items[0][0], json.dumps(index).encode())
    one_line_error(invoke("cache", "import", repack(archive, items), "--to", other), "different shards")
    nothing_left(other, cache.name)


# -- crafted members --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "ABS", "{key}/../../x", "{key}/data-00001.h5/../../x"])
@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_a_member_named_out_of_the_cache_is_refused(cache, archive, other, tmp_path, name, listed):
    name = name.format(key=cache.name).replace("ABS", str(tmp_path / "abs"))
    items = members(archive)
    info = _copy(items[3][0])
    info.name = name
    items[3] = (info, items[3][1])
    r = invoke("cache", "import", repack(archive, items, reindex=listed), "--to", other)
    one_line_error(r, "its index lists" if listed else "is not the one its index lists next")
    nothing_left(other, cache.name)
    assert not (tmp_path / "abs").exists() and not (tmp_path / "x").exists() and not (other / "x").exists()


@pytest.mark.parametrize("kind,words", [(tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link"),
                                        (tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"),
                                        (tarfile.FIFOTYPE, "a fifo"), (tarfile.DIRTYPE, "a directory")])
def test_a_member_that_is_not_a_regular_file_is_refused(cache, archive, other, kind, words):
    items = members(archive)
    items[3] = special(items[3][0].name, kind, linkname="/etc/passwd" if kind == tarfile.SYMTYPE else
                       f"{cache.name}/data-00000.h5")
    one_line_error(invoke("cache", "import", repack(archive, items), "--to", other), words, "regular files only")
    nothing_left(other, cache.name)


def test_an_unlisted_extra_member_is_refused(cache, archive, other):
    items = members(archive)
    extra = _copy(items[2][0])
    extra.name = f"{cache.name}/data-00002.h5"
    one_line_error(invoke("cache", "import", repack(archive, [*items, (extra, b"x" * 100)]), "--to", other),
                   "data-00002.h5", "not listed in its index")
    one_line_error(invoke("cache", "import", repack(archive, [*items[:3], (extra, b"x"), items[3]]), "--to", other),
                   "is not the one its index lists next")
    nothing_left(other, cache.name)


def test_a_duplicate_member_is_refused(cache, archive, other):
    items = members(archive)
    one_line_error(invoke("cache", "import", repack(archive, [*items, items[3]]), "--to", other), "not listed")
    forged = repack(archive, [*items, items[3]], reindex=True)  # the index lists it twice too
    one_line_error(invoke("cache", "import", forged, "--to", other), "twice")
    nothing_left(other, cache.name)


def index_of(archive: Path, count: int) -> Path:
    """The archive's index listing ``count`` members (its manifest, then shard names that exist nowhere), followed
    by its real manifest: a forged index, never a damaged one."""
    items = members(archive)
    index = json.loads(items[0][1])
    key = index["key"]
    listed = index["members"][:1]
    for i in range(count - 1):
        part, number = ("data", i) if i < 100_000 else (f"view{i // 100_000}", i % 100_000)
        listed.append({"name": f"{key}/{part}-{number:05d}.h5", "bytes": 1, "sha256": "0" * 64})
    index["members"] = listed
    return repack(archive, [(items[0][0], json.dumps(index).encode()), items[1]])


def test_an_index_listing_more_members_than_the_limit_is_refused_at_once(cache, archive, other):
    from featcache.cache.archive import MAX_MEMBERS

    forged = index_of(archive, 100_000)
    with within(5):
        one_line_error(invoke("cache", "import", forged, "--to", other), "100,000 members",
                       f"the {MAX_MEMBERS:,} an archive may hold", "archive member limit")
    nothing_left(other, cache.name)
    assert f"more than {MAX_MEMBERS:,} members" in (Path(__file__).parents[1] / "docs" / "store.md").read_text()


def test_export_refuses_a_cache_of_more_shards_than_an_archive_may_hold(cache, tmp_path, monkeypatch):
    from featcache.cache import archive as archive_module

    monkeypatch.setattr(archive_module, "MAX_MEMBERS", 2)  # the manifest and two shards: one member too many
    one_line_error(invoke("cache", "export", cache.name, "-o", tmp_path / "b.tar"), "has 2 shard files",
                   "at most 2 members", "archive member limit", "--shard-rows")
    assert not (tmp_path / "b.tar").exists()


def test_an_index_of_as_many_members_as_allowed_is_checked_in_linear_time(cache, archive, other):
    from featcache.cache.archive import MAX_MEMBERS

    forged = index_of(archive, MAX_MEMBERS)  # every name distinct and well formed: all of them are compared
    with within(5):
        one_line_error(invoke("cache", "import", forged, "--to", other), "list different shards")
    nothing_left(other, cache.name)


def _with_pax(archive: Path, pax: dict[str, str]) -> Path:
    items = members(archive)
    first = _copy(items[0][0])
    first.pax_headers = pax  # written as given: tarfile adds its own records only for what ustar cannot hold
    return repack(archive, [(first, items[0][1]), *items[1:]])


@pytest.mark.parametrize("size", ["²", "1²", "٣", "-1", "1e3", "9" * 5000])
def test_a_pax_size_that_is_not_plain_ascii_digits_is_refused(cache, archive, other, size):
    one_line_error(invoke("cache", "import", _with_pax(archive, {"size": size}), "--to", other),
                   "a pax header gives no valid size")
    nothing_left(other, cache.name)


def test_a_negative_base_256_size_is_refused(cache, archive, other):
    data = bytearray(archive.read_bytes())
    data[124:136] = b"\xff" * 12  # the first header's size field: -1 in tar's base-256 form
    data[148:156] = b"        "
    data[148:155] = f"{sum(data[:512]):06o}\0".encode()  # its checksum, recomputed
    forged = _write(archive, bytes(data))
    one_line_error(invoke("cache", "import", forged, "--to", other), "negative size")
    nothing_left(other, cache.name)


def test_something_that_is_not_an_archive_is_refused(cache, other, tmp_path):
    (tmp_path / "junk.tar").write_bytes(os.urandom(4096))
    one_line_error(invoke("cache", "import", tmp_path / "junk.tar", "--to", other), "tar header is damaged")
    with tarfile.open(tmp_path / "plain.tar", "w") as tf:
        tf.add(cache / "manifest.json", arcname="manifest.json")
    one_line_error(invoke("cache", "import", tmp_path / "plain.tar", "--to", other), "not a featcache archive")
    one_line_error(invoke("cache", "import", tmp_path / "missing.tar", "--to", other), "missing.tar")


# -- export of a damaged cache; interrupted imports -----------------------------------------------------------------
def test_export_of_a_corrupt_shard_is_refused_and_writes_nothing(cache, tmp_path):
    shard = cache / "data-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    one_line_error(invoke("cache", "export", cache.name, "-o", tmp_path / "b.tar"), "data-00001.h5",
                   "does not match its manifest", "featcache cache verify")
    assert not (tmp_path / "b.tar").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_exception_midway_through_an_import_leaves_nothing_visible(cache, archive, other, monkeypatch):
    from featcache.cache import archive as archive_module
    from featcache.cache.install import stale_incoming
    from featcache.cache.tarstream import TarReader

    real = TarReader.readinto

    def failing(self, buf):  # the first shard is in the incoming directory: the reader (or anything) fails
        if list(other.glob(f".incoming/{cache.name}@*/data-00000.h5")):
            raise RuntimeError("simulated failure")
        return real(self, buf)

    monkeypatch.setattr(TarReader, "readinto", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        archive_module.import_archive(archive, other)
    nothing_left(other, cache.name)
    assert stale_incoming(other) == []
    monkeypatch.setattr(TarReader, "readinto", real)
    assert archive_module.import_archive(archive, other).new


@pytest.mark.slow
def test_kill_9_during_an_import_leaves_the_key_invisible_and_a_rerun_succeeds(cache, archive, other, tmp_path):
    from featcache.cache.install import stale_incoming

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "featcache", "cache", "import", str(fifo), "--to", str(other)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = archive.read_bytes()
    shard = [m for m, _ in members(archive) if m.name.endswith("data-00001.h5")][0]
    with open(fifo, "wb") as w:  # blocks until the importer opens its end
        w.write(data[:shard.offset_data + 4096])
        w.flush()
        deadline = time.monotonic() + 60
        while not list((other / ".incoming").glob(f"{cache.name}@*/data-00001.h5")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (other / cache.name).exists()
    assert len(stale_incoming(other)) == 1  # what `cache gc` removes
    r = invoke("cache", "import", archive, "--to", other)
    assert r.exit_code == 0 and "imported" in r.output, r.output
    assert files(other / cache.name) == files(cache)


@pytest.mark.slow
def test_bench_store_times_export_and_import_next_to_a_copy(tmp_path):
    out = tmp_path / "store.json"
    r = invoke("bench", "store", "--size-mib", "2", "--repeats", "1", "--keys", "5", "--scratch", tmp_path,
               "--distill-images", "32", "--json-out", out)
    assert r.exit_code == 0, r.output
    x = json.loads(out.read_text())
    assert x["benchmark"] == "store" and x["repeats"] == 1 and len(x["load_1min"]) == 2 and x["shards"] == 1
    for name in ("export", "import"):
        assert x["results"][name]["mb_per_s"] > 0 and x["results"][name]["vs_copy"] > 0
    assert x["ls"]["keys"] == 5 and x["ls"]["cli_seconds"] > 0
    # the pull from an HTTP mirror next to a plain download, and a distill pulled on use next to one pulled first
    p = x["pull"]
    assert p["bytes"] == x["cache_bytes"] and p["pull_vs_plain"] > 0 and p["pull_vs_plain_fsync"] > 0
    d = x["distill_pull"]
    assert d["images"] == 32 and d["on_use"]["seconds"] > 0 and d["pull_first"]["seconds"] > d["pull"]["seconds"] > 0
    assert [p for p in tmp_path.iterdir() if p.name != "store.json"] == []  # the scratch store is removed
