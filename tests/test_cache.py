"""The cache layer on its own: shard writing, vectorised gathers, verify, store lookup, locks, the documented format."""

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from featcache.cache import CacheLock, CacheStore, FeatureCache, Manifest, TeacherInfo
from featcache.cache import format as fmt
from featcache.cache.writer import BackgroundWriter, PartWriter
from featcache.errors import CacheError, CacheLockedError
from featcache.specs import TransformSpec, WeightsInfo

ROOT = Path(__file__).resolve().parents[1]
D, C = 6, 3


def build_cache(store: Path, key: str = "toy-synthetic-train-000000000000", rows=(101, 7), shard_rows=25, seed=0):
    """Write a cache of random rows through the real writer; returns (directory, features, logits)."""
    rng = np.random.default_rng(seed)
    directory = store / key
    directory.mkdir(parents=True)
    parts = {fmt.PART_DATA: rows[0], fmt.PART_NOISE: rows[1]}
    m = Manifest(
        key=key, identity={"k": key}, teacher=TeacherInfo("toy", WeightsInfo.random(0), "fc", D, C, None, "unknown"),
        dataset={"name": "synthetic", "split": "train"}, classes=["a", "b", "c"],
        transform=TransformSpec(image_size=8, resize=8),
        dtype="float16", logits_dtype="float32", precision="fp32", shard_rows=shard_rows, rows=parts, noise=None,
    )
    m.save(directory)
    data = {}

    def done(info):
        m.shards.append(info)
        m.save(directory)

    writers = {p: PartWriter(directory, m, p, done) for p in parts}
    bg = BackgroundWriter(writers, max_pending=2)
    for part, n in parts.items():
        f = rng.standard_normal((n, D)).astype(np.float16)
        lg = rng.standard_normal((n, C)).astype(np.float32)
        data[part] = (f, lg)
        for a in range(0, n, 10):  # batches that straddle shard boundaries
            b = min(a + 10, n)
            idx = np.arange(a, b)
            bg.submit(part, idx, f[a:b], lg[a:b], idx)
    bg.close()
    m.complete = True
    m.save(directory)
    return directory, data


def test_shards_are_contiguous_fixed_size_and_named_by_format(tmp_path):
    directory, _ = build_cache(tmp_path)
    names = sorted(p.name for p in directory.glob("*.h5"))
    assert names == [fmt.shard_name("data", i) for i in range(5)] + [fmt.shard_name("noise", 0)]
    with h5py.File(directory / names[0], "r") as f:
        assert set(f) == set(fmt.FIELDS)
        assert f[fmt.FEATURES].chunks is None and f[fmt.FEATURES].compression is None  # contiguous
        assert f[fmt.FEATURES].shape == (25, D) and f[fmt.INDEX][:].tolist() == list(range(25))
    with h5py.File(directory / names[4], "r") as f:
        assert f[fmt.FEATURES].shape == (1, D)  # 101 = 4*25 + 1
    assert not list(directory.glob("*.tmp"))


def test_gather_any_order_with_repeats_across_shards(tmp_path):
    directory, data = build_cache(tmp_path)
    features, logits = data[fmt.PART_DATA]
    rng = np.random.default_rng(1)
    with FeatureCache(directory) as cache:
        for _ in range(5):
            idx = rng.integers(0, 101, size=37)
            idx[:3] = idx[3]  # repeats
            rows = cache.gather(idx)
            np.testing.assert_array_equal(rows[fmt.FEATURES], features[idx])
            np.testing.assert_array_equal(rows[fmt.LOGITS], logits[idx])
        full = cache.read_all()
        np.testing.assert_array_equal(full[fmt.FEATURES], features)
        np.testing.assert_array_equal(cache.read_range(20, 60, fields=(fmt.INDEX,))[fmt.INDEX], np.arange(20, 60))
        np.testing.assert_array_equal(cache.read_all(fmt.PART_NOISE)[fmt.LOGITS], data[fmt.PART_NOISE][1])
        assert cache.gather([])[fmt.FEATURES].shape == (0, D)
        with pytest.raises(IndexError):
            cache.gather([101])
        assert cache.row_bytes() == D * 2 + C * 4


def test_reader_pickles_without_open_handles(tmp_path):
    import pickle

    directory, data = build_cache(tmp_path)
    cache = FeatureCache(directory)
    cache.gather([0])
    assert cache._files
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._files == {}
    np.testing.assert_array_equal(clone.gather([50])[fmt.FEATURES], data[fmt.PART_DATA][0][[50]])


def test_verify_reports_corrupt_truncated_missing_and_leftover(tmp_path):
    directory, _ = build_cache(tmp_path)
    store = CacheStore(tmp_path)
    assert store.verify("toy").ok
    shard = directory / fmt.shard_name("data", 1)
    raw = bytearray(shard.read_bytes())
    raw[-20] ^= 0xFF
    shard.write_bytes(bytes(raw))
    truncated = directory / fmt.shard_name("data", 2)
    truncated.write_bytes(truncated.read_bytes()[:-50])
    (directory / fmt.shard_name("data", 3)).unlink()
    (directory / (fmt.shard_name("data", 9) + fmt.TMP_SUFFIX)).write_bytes(b"x")
    report = store.verify("toy")
    status = {c.file: c.status for c in report.checks}
    assert status[fmt.shard_name("data", 1)] == "corrupt"
    assert status[fmt.shard_name("data", 2)] == "truncated"
    assert status[fmt.shard_name("data", 3)] == "missing"
    assert status[fmt.shard_name("data", 9) + fmt.TMP_SUFFIX] == "leftover"
    assert status[fmt.shard_name("data", 0)] == "ok"
    assert not report.ok and len(report.bad) == 3


def test_store_resolves_prefixes_and_lists(tmp_path):
    build_cache(tmp_path, key="toy-a-train-111111111111")
    build_cache(tmp_path, key="toy-b-train-222222222222")
    store = CacheStore(tmp_path)
    assert [e.key for e in store.entries()] == ["toy-a-train-111111111111", "toy-b-train-222222222222"]
    assert store.resolve("toy-b") == "toy-b-train-222222222222"
    with pytest.raises(CacheError, match="ambiguous"):
        store.resolve("toy")
    with pytest.raises(CacheError, match="no cache 'zzz'"):
        store.resolve("zzz")
    assert [e.key for e in store.find(teacher="toy", split="train")] == [e.key for e in store.entries()]
    assert store.find(teacher="other") == []


def test_remove_refuses_a_locked_cache(tmp_path):
    directory, _ = build_cache(tmp_path)
    store = CacheStore(tmp_path)
    lock = CacheLock(directory).acquire()
    with pytest.raises(CacheLockedError, match="being written"):
        store.remove("toy")
    lock.release()
    assert store.remove("toy") > 0
    assert not directory.exists() and store.entries() == []


def test_broken_manifest_is_listed_not_fatal(tmp_path):
    directory, _ = build_cache(tmp_path)
    (directory / fmt.MANIFEST).write_text("{not json")
    entries = CacheStore(tmp_path).entries()
    assert entries[0].status == "broken" and "unreadable" in entries[0].error
    with pytest.raises(CacheError, match="unreadable"):
        FeatureCache(directory)


def test_store_home_comes_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    assert CacheStore().root == tmp_path / "home"


def test_docs_describe_every_name_in_the_format():
    doc = (ROOT / "docs" / "cache-format.md").read_text()
    names = [fmt.MANIFEST, fmt.LOCK, *fmt.FIELDS, *fmt.PARTS, "float16", "sha256"]
    names += list(Manifest.__dataclass_fields__) + list(TeacherInfo.__dataclass_fields__)
    names += [fmt.FEATURE_SCALE, fmt.INT8_CODEC, fmt.PROJECTION_FILE, fmt.PROJECTION_MEAN, fmt.PROJECTION_COMPONENTS,
              fmt.PROJECTION_METHOD, *fmt.FEATURE_DTYPES, *fmt.ProjectionInfo.__dataclass_fields__]
    missing = [n for n in names if not re.search(rf"`{re.escape(n)}`", doc)]
    assert not missing, f"docs/cache-format.md does not mention: {missing}"
    assert f"format_version` {fmt.FORMAT_VERSION}" in doc or f"`format_version`: {fmt.FORMAT_VERSION}" in doc
