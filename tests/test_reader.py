"""Reading a cache from a store another user may have written (featcache.cache.reader, store, commands): a
manifest never names a file outside its cache's directory, a cache is the cache its name says, a newer format is
left alone, values are checked like flags and text is shown escaped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import DEEP_JSON, SYN_DISTILL, SYN_EXTRACT, digests, invoke, one_line_error


def edit_manifest(directory: Path, fn) -> None:
    m = json.loads((directory / "manifest.json").read_text())
    fn(m)
    (directory / "manifest.json").write_text(json.dumps(m))


def readers(syn_cache: Path, tmp_path: Path):
    """Every reader of a cache: distill, cache verify, cache info, the Python API."""
    from featcache import api
    from featcache.cache import open_cache
    from featcache.errors import CacheError

    key = syn_cache.name
    yield "distill", invoke("distill", *SYN_DISTILL, "--teacher", key, "--epochs", "1", "--run-dir", tmp_path / "r")
    yield "verify", invoke("cache", "verify", key)
    yield "info", invoke("cache", "info", key)
    for name, fn in (("open_cache", lambda: open_cache(key).gather(np.arange(4))),
                     ("RowJoin", lambda: api.RowJoin([key], check=False).join(np.arange(4)))):
        try:
            fn()
        except CacheError as exc:
            yield name, str(exc)
        else:
            yield name, None


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_shard_path_out_of_the_cache_is_refused_by_every_reader(syn_cache, tmp_path, where):
    shard = syn_cache / "data-00000.h5"
    outside = tmp_path / "elsewhere" / "x.h5"  # the same bytes, so that only the path can give it away
    outside.parent.mkdir()
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    name = os.path.relpath(outside, syn_cache) if where == "relative" else str(outside)
    edit_manifest(syn_cache, lambda m: m["shards"][0].update(file=name))
    for reader, result in readers(syn_cache, tmp_path):
        if isinstance(result, str) or result is None:
            assert result is not None and "data-00000.h5" in result, reader
        elif reader == "verify":  # verify's own verdict: FAILED and exit 1
            assert result.exit_code == 1 and "FAILED" in result.output and "Traceback" not in result.output
            assert "data-00000.h5" in " ".join(result.output.split())
        else:
            one_line_error(result, "data-00000.h5")
    assert not (tmp_path / "r" / "summary.json").exists()


def test_a_shard_that_is_a_link_out_of_the_cache_is_refused(syn_cache, tmp_path):
    shard = syn_cache / "data-00000.h5"
    outside = tmp_path / "x.h5"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)
    for reader, result in readers(syn_cache, tmp_path):
        if reader == "verify":
            assert result.exit_code == 1 and "symbolic link" in result.output, result.output
        elif isinstance(result, str) or result is None:
            assert result is not None and "symbolic link" in result, reader
        elif reader != "info":  # info reads the manifest only, never a shard
            one_line_error(result, "data-00000.h5", "symbolic link")
    # The extract does not follow it: the shard is written anew in place of the link, the outside file untouched.
    before = outside.read_bytes()
    r = invoke("extract", *SYN_EXTRACT)
    assert r.exit_code == 0 and "nothing to do" not in r.output, r.output
    assert not shard.is_symlink() and outside.read_bytes() == before
    assert invoke("cache", "verify", syn_cache.name).exit_code == 0


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["rows"].update(data="24"), "rows"),
    (lambda m: m.update(shard_rows=0), "shard_rows"),
    (lambda m: m.update(dtype="object"), "dtype"),
    (lambda m: m.update(key="../../evil"), "key"),
    (lambda m: m["teacher"].update(num_features=True), "num_features"),
    (lambda m: m["shards"][1].update(start=3), "rows [3"),
    (lambda m: m["shards"][0].update(sha256="x"), "sha256"),
    (lambda m: m.update(topk_logits=10**6), "topk_logits"),
    (lambda m: m.update(extra_field=1), "extra_field"),
])
def test_manifest_values_are_checked_like_flags(syn_cache, tmp_path, edit, needle):
    edit_manifest(syn_cache, edit)
    r = invoke("distill", *SYN_DISTILL, "--teacher", syn_cache.name, "--epochs", "1", "--run-dir", tmp_path / "r")
    one_line_error(r, needle)


# -- 8. a newer cache format is never overwritten; "no cache" says what was skipped ------------------------------------
def test_a_newer_format_cache_is_left_alone_and_named(syn_cache, tmp_path):
    edit_manifest(syn_cache, lambda m: m.update(format_version=99))
    before = digests(syn_cache)
    one_line_error(invoke("extract", *SYN_EXTRACT), syn_cache.name, "newer featcache", "format_version 99", "cache rm")
    one_line_error(invoke("extract", *SYN_EXTRACT, "--force"), syn_cache.name, "newer featcache")
    assert digests(syn_cache) == before
    one_line_error(invoke("distill", *SYN_DISTILL, "--teacher", "convnet", "--epochs", "1",
                          "--run-dir", tmp_path / "r"), "no cache of convnet", "newer featcache", syn_cache.name)
    one_line_error(invoke("distill", *SYN_DISTILL, "--teacher", syn_cache.name, "--epochs", "1",
                          "--run-dir", tmp_path / "r"), "newer featcache", "upgrade")
    r = invoke("cache", "ls", "--json")
    assert json.loads(r.output)[0]["status"] == "newer format"
    # Removing it is the user's call; after that the extract writes this version's cache.
    assert invoke("cache", "rm", syn_cache.name).exit_code == 0
    assert invoke("extract", *SYN_EXTRACT).exit_code == 0


def test_a_store_that_is_a_file_is_named(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a directory")
    monkeypatch.setenv("FEATCACHE_HOME", str(home))
    for args in (("cache", "ls"), ("extract", *SYN_EXTRACT),
                 ("distill", *SYN_DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "r")):
        one_line_error(invoke(*args), "FEATCACHE_HOME", str(home), "not a directory")
    one_line_error(invoke("cache", "ls", "--cache-dir", home), "--cache-dir", "not a directory")


# -- a cache is the cache its name says; what a manifest records is data --------------------------------------------
def _extract_other(home: Path, known: Path, *flags: str) -> Path:
    r = invoke("extract", *SYN_EXTRACT, *flags)
    assert r.exit_code == 0, r.output
    (other,) = [p for p in home.iterdir() if p != known and (p / "manifest.json").is_file()]
    return other


def test_a_cache_copied_under_another_key_is_refused_by_every_reader(syn_cache, home, tmp_path):
    """A float16 cache copied over an int8 cache's directory is not read as the int8 cache by anyone."""
    import shutil

    int8 = _extract_other(home, syn_cache, "--dtype", "int8")
    shutil.rmtree(int8)
    shutil.copytree(syn_cache, int8)
    for reader, result in readers(int8, tmp_path):
        if reader == "verify":
            assert result.exit_code == 1 and "FAILED" in result.output, result.output
            assert f"holds the manifest of cache {syn_cache.name}" in " ".join(result.output.split())
        elif isinstance(result, str) or result is None:
            assert result is not None and "holds the manifest of cache" in result, reader
        else:
            one_line_error(result, int8.name, f"holds the manifest of cache {syn_cache.name}", "refused")
    assert not (tmp_path / "r" / "summary.json").exists()
    listed = {e["key"]: e["status"] for e in json.loads(invoke("cache", "ls", "--json").output)}
    assert listed == {syn_cache.name: "complete", int8.name: "foreign"}
    (tmp_path / "shared").mkdir()
    one_line_error(invoke("cache", "publish", int8.name, "--to", tmp_path / "shared"), int8.name, "foreign")
    one_line_error(invoke("cache", "export", int8.name, "-o", tmp_path / "x.tar"), int8.name, syn_cache.name)
    assert not (tmp_path / "x.tar").exists() and not list((tmp_path / "shared").iterdir())


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["identity"].update(precision="fp16"), "is not the hash of the identity"),
    (lambda m: m.update(precision="fp16"), "its precision"),
    (lambda m: m["dataset"].update(labels_sha256="0" * 64), "its dataset"),
    (lambda m: m["teacher"].update(name="resnet50"), "its teacher"),
    (lambda m: m["transform"].update(interpolation="nearest"), "its transform"),
])
def test_a_manifest_whose_fields_are_not_its_keys_identity_is_refused(syn_cache, tmp_path, edit, needle):
    edit_manifest(syn_cache, edit)
    r = invoke("distill", *SYN_DISTILL, "--teacher", syn_cache.name, "--epochs", "1", "--run-dir", tmp_path / "r")
    one_line_error(r, syn_cache.name, needle, "refused")
    one_line_error(invoke("cache", "info", syn_cache.name), needle)


def test_a_forged_key_over_an_edited_identity_is_refused(syn_cache, home, tmp_path):
    """Whoever edits the identity and renames the directory to the key it gives still has to change every field
    a reader uses to match it: what is left (the rows stored as float16, said float32 by the identity) is refused."""
    from featcache.cache.format import make_key

    m = json.loads((syn_cache / "manifest.json").read_text())
    m["identity"]["dtype"] = "float32"
    m["key"] = make_key(m["identity"], "convnet", "synthetic", "train")
    (syn_cache / "manifest.json").write_text(json.dumps(m))
    syn_cache.rename(home / m["key"])
    one_line_error(invoke("distill", *SYN_DISTILL, "--teacher", m["key"], "--epochs", "1", "--run-dir", tmp_path / "r"),
                   m["key"], "its dtype ('float16') is not the one its identity records ('float32')")


def test_a_recorded_command_is_never_shown_as_advice(syn_cache, tmp_path):
    """An archive's (or anyone's) manifest may record any text as its command: the repair hint shows the extract
    that makes this cache, rebuilt from its fields, never that text."""
    edit_manifest(syn_cache, lambda m: m.update(command="rm -rf ~ --force"))
    shard = syn_cache / "data-00001.h5"
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    r = invoke("distill", *SYN_DISTILL, "--teacher", syn_cache.name, "--epochs", "1", "--run-dir", tmp_path / "r")
    flat = one_line_error(r, "data-00001.h5", "`featcache extract --teacher convnet ")
    assert "rm -rf" not in flat
    info = invoke("cache", "info", syn_cache.name)
    assert info.exit_code == 0 and "rm -rf" not in info.output
    assert "featcache extract --teacher convnet" in " ".join(info.output.split())


def test_names_and_text_from_a_store_are_shown_escaped(syn_cache, home, tmp_path):
    """Another user's directory named with a terminal escape and a newline is listed apart, escaped, never as a
    cache; a manifest naming its teacher so is shown escaped too."""
    import shutil

    from featcache.cache.format import make_key

    weird = home / "evil\x1b[2J\nname"
    shutil.copytree(syn_cache, weird)
    m = json.loads((syn_cache / "manifest.json").read_text())
    for where in (m["identity"]["teacher"], m["teacher"]):
        where["name"] = "evil\x1b]0;owned\x07\x1b[31m[red]teacher"
    m["key"] = make_key(m["identity"], m["teacher"]["name"], "synthetic", "train")
    forged = home / m["key"]
    shutil.copytree(syn_cache, forged)
    (forged / "manifest.json").write_text(json.dumps(m))
    r = invoke("cache", "ls")
    assert r.exit_code == 0 and "\x1b" not in r.output and "\x07" not in r.output, repr(r.output)
    flat = " ".join(r.output.split())
    assert "not caches" in flat and "evil\\e[2J\\nname" in flat and "[red]teacher" in flat
    assert "evil\\e[2J\\nname" not in flat.split("not caches")[0]  # never in the table of caches
    listed = {e["key"]: e["status"] for e in json.loads(invoke("cache", "ls", "--json").output)}
    assert listed == {syn_cache.name: "complete", forged.name: "complete"}
    info = invoke("cache", "info", forged.name)
    assert info.exit_code == 0 and "\x1b" not in info.output and "[red]teacher" in info.output, info.output
    for name in (weird.name, "../" + syn_cache.name):
        flat = one_line_error(invoke("cache", "info", name), "no cache")
        assert "\x1b" not in flat


def test_json_nested_100k_deep_in_a_store_is_one_line_or_one_entry_marked(syn_cache, home, tmp_path):
    """A manifest, a lease, a remembered request or an archive index nested 100k deep: the command that reads it
    says so in one line, or lists the file's cache as damaged and goes on with the rest."""
    import tarfile

    from featcache.cache.install import host
    from featcache.cache.leases import lease_dir

    bad = home / "convnet-synthetic-train-0123456789ab"
    bad.mkdir()
    (bad / "manifest.json").write_text(DEEP_JSON)
    from typer.testing import CliRunner

    from featcache.cli import app

    r = CliRunner().invoke(app, ["cache", "ls"], env={"COLUMNS": "200"})  # wide enough for one line per cache
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    lines = {ln.split()[0]: ln.split()[-1] for ln in r.output.splitlines() if ln.startswith("convnet-")}
    assert lines == {syn_cache.name: "complete", bad.name: "broken"}, r.output
    r = invoke("cache", "verify")
    assert r.exit_code == 1 and "Traceback" not in r.output and f"ok {syn_cache.name}" in r.output, r.output
    assert "nested deeper than" in " ".join(r.output.split())
    one_line_error(invoke("cache", "info", bad.name), bad.name, "nested deeper than")
    one_line_error(invoke("distill", *SYN_DISTILL, "--teacher", bad.name, "--run-dir", tmp_path / "r"), bad.name)
    # Everyone else's work goes on: a search by teacher name finds the good cache and trains from it.
    r = invoke("distill", *SYN_DISTILL, "--method", "kd", "--teacher", "convnet", "--epochs", "1", "--run-dir",
               tmp_path / "r")
    assert r.exit_code == 0 and (tmp_path / "r" / "summary.json").is_file(), r.output
    r = invoke("cache", "gc", "--max-size", "0", "--dry-run")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert invoke("cache", "rm", bad.name).exit_code == 0 and not bad.exists()
    # Another user's lease on the cache, nested deep: still a lease (its pid runs), so the cache is not removed.
    lease = lease_dir(home, syn_cache.name) / f"{host()}@{os.getpid()}@deadbeef"
    lease.parent.mkdir(parents=True)
    lease.write_text(DEEP_JSON[:999])
    one_line_error(invoke("cache", "rm", syn_cache.name), syn_cache.name)
    r = invoke("cache", "gc", "--max-size", "0")
    assert r.exit_code == 0 and "Traceback" not in r.output and syn_cache.exists(), r.output
    lease.unlink()
    # A remembered request nested deep is no answer: the extract takes its full path and finds the cache.
    memos = list((home / "requests").glob("*.json"))
    assert memos
    for memo in memos:
        memo.write_text(DEEP_JSON)
    r = invoke("extract", *SYN_EXTRACT)
    assert r.exit_code == 0 and "nothing to do" in " ".join(r.output.split()), r.output
    # An archive whose index is nested deep.
    archive = tmp_path / "deep.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("featcache-archive.json")
        info.size = len(DEEP_JSON)
        tar.addfile(info, __import__("io").BytesIO(DEEP_JSON.encode()))
    (tmp_path / "other").mkdir()
    one_line_error(invoke("cache", "import", archive, "--to", tmp_path / "other"), "deep.tar")
    assert not [p for p in (tmp_path / "other").iterdir() if not p.name.startswith(".")]
