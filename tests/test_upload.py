"""`cache publish --to URL` (featcache.cache.upload) against a real S3-compatible server started here (moto's server
mode on a free loopback port, the harness s3fs tests itself with): shards first and the manifest last, every upload
verified, idempotent, and a cache published by one FEATCACHE_HOME read by another, also through a static HTTP mirror.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from helpers import invoke, one_line_error

pytest.importorskip("s3fs", reason="the s3 extra is not installed: pip install 'featcache[s3]'")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed: pip install 'featcache[test]'")

BUCKET = "lab-caches"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible endpoint on loopback for the whole session (each test uses a bucket of its own)."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    """A fresh bucket on the endpoint, credentials and endpoint as a user sets them; returns (url, s3fs)."""
    import s3fs

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FEATCACHE_STORAGE_OPTIONS", json.dumps({"endpoint_url": s3_endpoint}))
    monkeypatch.delenv("FEATCACHE_OFFLINE")  # publishing is the network's job; loopback only (conftest's guard)
    bucket = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    # fsspec keeps one instance per set of options, its sync methods bound when it is made: a fresh one per test, so
    # that a test's patched method never outlives it
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    fs.mkdir(bucket)
    yield f"s3://{bucket}/shared", fs
    s3fs.S3FileSystem.clear_instance_cache()


def _names(fs, url: str) -> list[str]:
    root = url.removeprefix("s3://")
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def test_publish_to_s3_uploads_shards_then_manifest_then_index(home, syn_cache, s3, monkeypatch):
    import s3fs

    url, fs = s3
    key = syn_cache.name
    order = []
    for name in ("put_file", "pipe_file"):  # every write, in the order it reaches the server
        real = getattr(s3fs.S3FileSystem, name)
        monkeypatch.setattr(s3fs.S3FileSystem, name, lambda self, a, b, *r, _real=real, _name=name, **k: (
            order.append(Path(b if _name == "put_file" else a).name), _real(self, a, b, *r, **k))[1])
    r = invoke("cache", "publish", key, "--to", url)
    assert r.exit_code == 0, r.output
    assert "published" in r.output and f"{url}/{key}" in " ".join(r.output.split())
    shards = sorted(p.name for p in syn_cache.glob("*.h5"))
    assert order == [*shards, "manifest.json", "index.json"]
    local = sorted(p.name for p in syn_cache.iterdir() if p.name != "lock")
    assert _names(fs, url) == sorted(["index.json"] + [f"{key}/{n}" for n in local])
    root = url.removeprefix("s3://")
    for n in local:  # the same bytes, byte for byte
        assert fs.cat_file(f"{root}/{key}/{n}") == (syn_cache / n).read_bytes()
    assert json.loads(fs.cat_file(f"{root}/index.json")) == {"featcache_index": 1, "keys": [key]}


def test_publish_to_s3_again_uploads_nothing_and_says_so(home, syn_cache, s3, monkeypatch):
    from featcache.cache import upload

    url, fs = s3
    key = syn_cache.name
    assert invoke("cache", "publish", key, "--to", url).exit_code == 0
    sent = []
    real = upload.upload_file
    monkeypatch.setattr(upload, "upload_file", lambda *a, **k: sent.append(real(*a, **k)) or sent[-1])
    r = invoke("cache", "publish", key, "--to", url)
    assert r.exit_code == 0 and "already published" in r.output, r.output
    assert sent and not any(sent)  # every file checked at the target, none sent again


def test_an_upload_cut_short_leaves_no_manifest_and_the_next_publish_completes_it(home, syn_cache, s3, monkeypatch):
    import s3fs

    url, fs = s3
    key = syn_cache.name
    real_put = s3fs.S3FileSystem.put_file
    sent = []

    def dies_after_one(self, lpath, rpath, *a, **k):
        if len(sent) == 1:
            raise ConnectionResetError("connection reset by peer")
        sent.append(Path(lpath).name)
        return real_put(self, lpath, rpath, *a, **k)

    monkeypatch.setattr(s3fs.S3FileSystem, "put_file", dies_after_one)
    r = invoke("cache", "publish", key, "--to", url)
    assert "re-run" in one_line_error(r, url, "upload failed", "ConnectionResetError")
    assert _names(fs, url) == [f"{key}/{sent[0]}"]  # one shard, no manifest: no reader lists or reads it
    sent.clear()
    monkeypatch.setattr(s3fs.S3FileSystem, "put_file", lambda self, lpath, *a, **k: (
        sent.append(Path(lpath).name), real_put(self, lpath, *a, **k))[1])
    r = invoke("cache", "publish", key, "--to", url)
    assert r.exit_code == 0 and "published" in r.output, r.output
    shards = sorted(p.name for p in syn_cache.glob("*.h5"))
    assert sorted(sent) == shards[1:]  # the shard already there verified, not sent again
    assert f"{key}/manifest.json" in _names(fs, url)


def test_publish_refuses_a_different_cache_under_the_key_at_the_target(home, syn_cache, s3):
    url, fs = s3
    key = syn_cache.name
    assert invoke("cache", "publish", key, "--to", url).exit_code == 0
    root = url.removeprefix("s3://")
    theirs = json.loads(fs.cat_file(f"{root}/{key}/manifest.json"))
    theirs["shards"][0]["sha256"] = "0" * 64
    fs.pipe_file(f"{root}/{key}/manifest.json", json.dumps(theirs).encode())
    before = fs.cat_file(f"{root}/{key}/manifest.json")
    r = invoke("cache", "publish", key, "--to", url)
    one_line_error(r, "already holds a different cache", key)
    assert fs.cat_file(f"{root}/{key}/manifest.json") == before


def test_the_endpoint_of_an_s3_compatible_server_may_come_from_aws_endpoint_url(home, syn_cache, s3, s3_endpoint,
                                                                                 monkeypatch):
    url, fs = s3
    monkeypatch.delenv("FEATCACHE_STORAGE_OPTIONS")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # what docs/store.md tells MinIO and Ceph users to set
    r = invoke("cache", "publish", syn_cache.name, "--to", url)
    assert r.exit_code == 0, r.output
    assert f"{syn_cache.name}/manifest.json" in _names(fs, url)


def test_a_backend_without_checksums_is_verified_by_reading_back_and_written_through_a_temporary_name(
        home, syn_cache, monkeypatch):
    import fsspec

    from featcache.cache import upload

    monkeypatch.delenv("FEATCACHE_OFFLINE")
    monkeypatch.setattr(upload, "OBJECT_STORES", frozenset())  # as on a file system where a write is not atomic
    read = []
    real = upload.read_back
    monkeypatch.setattr(upload, "read_back", lambda target, names: read.append(names[-1]) or real(target, names))
    url = "memory://featcache-upload-test/shared"
    r = invoke("cache", "publish", syn_cache.name, "--to", url)
    assert r.exit_code == 0, r.output
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    shards = sorted(p.name for p in syn_cache.glob("*.h5"))
    assert sorted(read) == shards  # no ETag there: each upload read back and hashed
    for name in [*shards, "manifest.json"]:
        assert fs.cat_file(f"/{root}/{syn_cache.name}/{name}") == (syn_cache / name).read_bytes()
    assert not [p for p in fs.find(f"/{root}") if p.endswith(".tmp")]  # the temporary names moved into place
    fs.rm(f"/{root}", recursive=True)


def test_publish_to_a_url_while_offline_is_refused_in_one_line(home, syn_cache):
    one_line_error(invoke("cache", "publish", syn_cache.name, "--to", "s3://lab-caches/featcache"), "FEATCACHE_OFFLINE",
                   "s3://lab-caches/featcache")


def test_publish_to_an_http_url_is_refused_in_one_line(home, syn_cache, monkeypatch):
    monkeypatch.delenv("FEATCACHE_OFFLINE")
    r = invoke("cache", "publish", syn_cache.name, "--to", "https://mirror.example.org/caches")
    one_line_error(r, "https://mirror.example.org/caches", "read-only")


def test_publish_into_a_directory_writes_the_index_a_static_mirror_lists(home, syn_cache, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    key = syn_cache.name
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    assert json.loads((shared / "index.json").read_text()) == {"featcache_index": 1, "keys": [key]}
    shutil.rmtree(shared / key)  # rebuilt from the directory: a key gone from it leaves the index
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    assert json.loads((shared / "index.json").read_text())["keys"] == [key]
    assert invoke("cache", "ls", "--cache-dir", shared).exit_code == 0


def test_digests_give_the_s3_multipart_etag(tmp_path: Path):
    import hashlib

    from featcache.cache.upload import digests

    data = bytes(range(256)) * 41  # 10,496 bytes: parts of 4,096, 4,096, 2,304
    (tmp_path / "f").write_bytes(data)
    sha, md5, etag = digests(tmp_path / "f", 4096)
    parts = [hashlib.md5(data[i:i + 4096]).digest() for i in range(0, len(data), 4096)]
    assert (sha, md5) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    assert etag == hashlib.md5(b"".join(parts)).hexdigest() + "-3"


def test_a_multipart_upload_verifies_by_its_etag_and_a_changed_object_does_not(s3, tmp_path, monkeypatch):
    from featcache.cache import upload

    url, fs = s3
    data = bytes(range(256)) * (11 * 4096)  # 11 MiB: three parts of S3's smallest part size, 5 MiB
    (tmp_path / "f.h5").write_bytes(data)
    target = upload.Target(url)
    target.fs.put_file(str(tmp_path / "f.h5"), target.path("k", "f.h5"), chunksize=5 * 2**20)
    assert str(target.fs.info(target.path("k", "f.h5"))["ETag"]).strip('"').endswith("-3")
    sha, md5, _ = upload.digests(tmp_path / "f.h5")
    read_back = upload.read_back
    monkeypatch.setattr(upload, "read_back", lambda *a: pytest.fail("read back though the ETag tells"))
    assert upload.verified(target, tmp_path / "f.h5", ("k", "f.h5"), len(data), sha, md5)
    monkeypatch.setattr(upload, "read_back", read_back)
    target.fs.pipe_file(target.path("k", "f.h5"), data[:-1] + b"!")  # the same size, other bytes
    assert not upload.verified(target, tmp_path / "f.h5", ("k", "f.h5"), len(data), sha, md5)


def _metrics(run: Path) -> list[dict]:
    """What a run measured, without its timings."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if "acc" in k or "loss" in k} for r in rows]


def test_a_distill_from_a_cache_published_to_s3_equals_the_distill_from_the_local_copy(home, syn_cache, s3, tmp_path,
                                                                                        monkeypatch):
    from helpers import SYN_DISTILL

    url, fs = s3
    key = syn_cache.name
    distill = ("distill", *SYN_DISTILL, "--teacher", "convnet", "--method", "kd", "--epochs", "1")
    r = invoke(*distill, "--run-dir", tmp_path / "local")
    assert r.exit_code == 0, r.output
    assert invoke("cache", "publish", key, "--to", url).exit_code == 0
    other = tmp_path / "other-home"  # another user, elsewhere: an empty personal store and the bucket's URL
    monkeypatch.setenv("FEATCACHE_HOME", str(other))
    r = invoke("cache", "ls", "--store", url)
    assert r.exit_code == 0 and key in r.output, r.output
    assert not other.exists() or not (other / key).exists()  # listed from the manifest alone, nothing pulled
    r = invoke(*distill, "--store", url, "--run-dir", tmp_path / "remote")
    assert r.exit_code == 0, r.output
    assert (other / key / "manifest.json").is_file()  # pulled into the personal store, verified
    assert _metrics(tmp_path / "remote") == _metrics(tmp_path / "local") != []


def test_a_directory_published_into_and_served_as_it_is_is_a_store(home, syn_cache, tmp_path, monkeypatch):
    from http_server import serve

    shared = tmp_path / "shared"
    shared.mkdir()
    key = syn_cache.name
    assert invoke("cache", "publish", key, "--to", shared).exit_code == 0
    srv = serve(shared, ranges=False)  # a static web server, no featcache on it, no Range support
    try:
        monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "other-home"))
        monkeypatch.delenv("FEATCACHE_OFFLINE")
        r = invoke("cache", "ls", "--store", srv.url)
        assert r.exit_code == 0 and key in r.output, r.output
        r = invoke("cache", "verify", key, "--store", srv.url)
        assert r.exit_code == 0, r.output
    finally:
        srv.stop()
    assert (tmp_path / "other-home" / key / "manifest.json").is_file()
    assert any(path.endswith("/index.json") for path, _ in srv.requests)
