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


def toy_key(name: str) -> str:
    """The key of a toy cache: ``name`` and the hash of its identity, as every reader requires."""
    return f"{name}-{fmt.hashlib.sha256(fmt.canonical_json({'k': name}).encode()).hexdigest()[:12]}"


def build_cache(store: Path, name: str = "toy-synthetic-train", rows=(101, 7), shard_rows=25, seed=0):
    """Write a cache of random rows through the real writer; returns (directory, features, logits)."""
    rng = np.random.default_rng(seed)
    key = toy_key(name)
    directory = store / key
    directory.mkdir(parents=True)
    parts = {fmt.PART_DATA: rows[0], fmt.PART_NOISE: rows[1]}
    m = Manifest(
        key=key, identity={"k": name}, teacher=TeacherInfo("toy", WeightsInfo.random(0), "fc", D, C, None, "unknown"),
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
    a, b = toy_key("toy-a-train"), toy_key("toy-b-train")
    build_cache(tmp_path, name="toy-a-train")
    build_cache(tmp_path, name="toy-b-train")
    store = CacheStore(tmp_path)
    assert [e.key for e in store.entries()] == [a, b]
    assert store.resolve("toy-b") == b
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


def test_a_cache_is_read_only_under_the_key_its_identity_gives(tmp_path):
    """A cache copied or renamed under another key, or whose identity was edited, is refused by the reader and
    listed as foreign, never found by a search; its own directory, and an extract's work directory, still read."""
    import shutil

    from featcache.errors import CacheIdentityError

    directory, _ = build_cache(tmp_path / "s")
    with FeatureCache(directory) as cache:
        assert cache.key == directory.name
    work = tmp_path / "s" / ".incoming" / f"{directory.name}@host@1@00"
    shutil.copytree(directory, work)
    assert FeatureCache(work).key == directory.name
    other = tmp_path / "s" / toy_key("toy-other-train")
    shutil.copytree(directory, other)
    with pytest.raises(CacheIdentityError, match=f"holds the manifest of cache {directory.name}"):
        FeatureCache(other)
    store = CacheStore(tmp_path / "s", shared_env=False)
    status = {e.key: e.status for e in store.entries()}
    assert status == {directory.name: "complete", other.name: "foreign"}
    with pytest.raises(CacheIdentityError):
        store.open(other.name)
    assert [e.key for e in store.find(teacher="toy")] == [directory.name]
    assert "whose manifest is not of its key" in store.skipped_note()


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["identity"].update(k="else"), "not the hash of the identity"),
    (lambda m: m.update(key=m["key"].replace("toy", "toy-else")), "holds the manifest of cache"),
])
def test_an_edited_key_or_identity_is_refused(tmp_path, edit, needle):
    import json

    from featcache.errors import CacheIdentityError

    directory, _ = build_cache(tmp_path)
    m = json.loads((directory / fmt.MANIFEST).read_text())
    edit(m)
    (directory / fmt.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CacheIdentityError, match=needle):
        FeatureCache(directory)
    assert CacheStore(tmp_path, shared_env=False).entries()[0].status == "foreign"


def test_names_that_are_not_keys_are_strays_never_caches(tmp_path):
    import shutil

    directory, _ = build_cache(tmp_path)
    for name in ("evil\x1b[2J\nname", "a b", "x@y"):
        shutil.copytree(directory, tmp_path / name)
    store = CacheStore(tmp_path, shared_env=False)
    assert [e.key for e in store.entries()] == [directory.name]
    assert sorted(p.name for p in store.strays()) == sorted(["evil\x1b[2J\nname", "a b", "x@y"])
    for name in ("evil\x1b[2J\nname", "../" + directory.name, "x@y"):
        with pytest.raises(CacheError, match="no cache") as info:
            store.locate(name)
        assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


def test_a_recorded_command_is_shown_only_as_the_extract_its_fields_make():
    import dataclasses

    from featcache.cache.commands import command_or, extract_command

    golden = ROOT / "tests" / "golden" / "resnet18-synthetic-train-bae82c00140b"
    m = Manifest.load(golden)
    shown = extract_command(m)
    assert shown.startswith("featcache extract --teacher resnet18 ") and "--image-size 32 --shard-rows 8" in shown
    for recorded in ("rm -rf ~ --force", "featcache extract --teacher resnet18; rm -rf ~",
                     "featcache extract --teacher resnet50 --weights random --image-size 32 --shard-rows 8",
                     "featcache extract --teacher resnet18 --weights random --image-size 32 --shard-rows 8 --evil x",
                     "featcache extract --teacher resnet18 --weights random --image-size 32 --shard-rows 8 \x1b[2J"):
        text = extract_command(dataclasses.replace(m, command=recorded))
        assert text.startswith("featcache extract --teacher resnet18 ") and "--weights random" in text, recorded
        assert "rm" not in text and "resnet50" not in text and "evil" not in text and "\x1b" not in text
    # What does not parse to an extract of this cache is rebuilt from the manifest's fields: a quoted value stays one
    # word of the command, never a second command.
    text = extract_command(dataclasses.replace(m, command=m.command + " --data-root '$(rm -rf ~)'"))
    assert "--data-root '$(rm -rf ~)'" in text and "resnet18" in text
    # A cache no extract command makes (a benchmark's) has none to show; one of the Python API, the call.
    bench = dataclasses.replace(m, identity={"bench": 1}, command="featcache bench scale")
    assert extract_command(bench) is None and command_or(bench) == "the featcache extract command that made it"
    module = dataclasses.replace(m.teacher, weights=WeightsInfo(source="module", ref="Net", sha256="0" * 64))
    api = dataclasses.replace(m, teacher=module, command="python: rm -rf ~")
    assert extract_command(api) is None
    assert command_or(api) == ("featcache.extract_from(<your model>, <your dataset>, name='resnet18', "
                               "dataset_name='synthetic', split='train')")
