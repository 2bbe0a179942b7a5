"""The synthetic cache of `featcache bench scale` (a real cache: verifies, reads back, resumes only unfinished shards)
and the out-of-core read path it measures (preadv straight into the ring, windows in fixed quarters)."""

import h5py
import numpy as np
import pytest

from featcache.bench.synth import SynthSpec, read_back_matches, synthetic_rows, write_synthetic_cache
from featcache.cache import FeatureCache
from featcache.cache.direct import read_rows_into
from featcache.cache.format import FEATURES, LOGITS, PART_DATA, TMP_SUFFIX
from featcache.cache.install import INCOMING
from featcache.cache.store import CacheStore
from featcache.distill.loader import InMemoryTable, OutOfCoreTable, epoch_plan
from featcache.errors import ConfigError
from featcache.util.progress import Reporter

SPEC = SynthSpec(rows=1000, dim=24, classes=5, views=2, shard_rows=128)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return store, write_synthetic_cache(store, SPEC)


def test_synthetic_cache_verifies_and_reads_back_what_was_written(synth):
    store, written = synth
    assert written.shards_written == 2 * 8 and written.shards_kept == 0
    assert written.directory == store / SPEC.key and not any((store / INCOMING).glob(f"{SPEC.key}@*"))
    report = CacheStore(store, shared_env=False).verify(SPEC.key)
    assert report.ok and report.complete and len(report.checks) == 16
    assert read_back_matches(written.directory, SPEC, np.array([0, 1, 127, 128, 500, 999]))
    with FeatureCache(written.directory) as cache:
        for part in SPEC.parts:
            rows = cache.read_all(part)
            want_f, want_l = synthetic_rows(SPEC, part, 0, SPEC.rows)
            assert np.array_equal(rows[FEATURES], want_f) and np.array_equal(rows[LOGITS], want_l)
        assert cache.manifest.views.count == 2 and cache.num_features == 24
    assert write_synthetic_cache(store, SPEC).reused  # a second write finds it


class _StopAfter(Reporter):
    """A reporter that interrupts the write after ``n`` shards, as a kill would (the shards done are recorded)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def advance(self, k: int = 1) -> None:
        self.n -= k
        if self.n <= 0:
            raise KeyboardInterrupt


def test_an_interrupted_write_is_resumed_redoing_only_unfinished_shards(tmp_path):
    spec = SynthSpec(rows=1000, dim=16, classes=3, shard_rows=100, seed=1)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_cache(tmp_path, spec, reporter=_StopAfter(4))
    work = next((tmp_path / INCOMING).glob(f"{spec.key}@*"))
    finished = sorted(p.name for p in work.glob("data-*.h5"))
    assert 4 <= len(finished) < 10 and not (tmp_path / spec.key).exists()
    (work / ("data-00009.h5" + TMP_SUFFIX)).write_bytes(b"half a shard")  # what a kill leaves mid-write
    resumed = write_synthetic_cache(tmp_path, spec)
    assert resumed.shards_kept == len(finished) and resumed.shards_written == 10 - len(finished)
    assert CacheStore(tmp_path, shared_env=False).verify(spec.key).ok
    assert read_back_matches(resumed.directory, spec, np.arange(0, 1000, 37))
    assert not list(resumed.directory.glob("*" + TMP_SUFFIX))


def test_direct_reads_match_h5py_and_fall_back_for_other_layouts(tmp_path):
    data = np.arange(64 * 6, dtype=np.float16).reshape(64, 6)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("plain", data=data)
        f.create_dataset("chunked", data=data, chunks=(8, 6), compression="gzip")
        f.create_dataset("wide", data=data.astype(np.float32))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in ("plain", "chunked", "wide"):
            out = np.zeros((20, 6), dtype=np.float16 if name != "wide" else np.float32)
            read_rows_into(f, name, out, 10, 25, 3)
            assert np.array_equal(out[3:18], data[10:25].astype(out.dtype)) and not out[:3].any()
        out = np.zeros((4, 6), dtype=np.float32)  # a dtype other than the stored one: h5py converts
        read_rows_into(f, "plain", out, 0, 4, 0)
        assert np.array_equal(out, data[:4].astype(np.float32))


def test_out_of_core_table_serves_straddling_batches_as_ram_does_and_refuses_going_back(synth):
    """Windows of one 16-row block: batches of 40 rows straddle up to 4 windows of the ring, epoch after epoch."""
    _, written = synth
    cache = FeatureCache(written.directory)
    ram = InMemoryTable(cache, PART_DATA)
    disk = OutOfCoreTable(cache, PART_DATA, block_rows=16, window_blocks=1)
    for epoch in range(3):
        plan = epoch_plan(SPEC.rows, seed=5, epoch=epoch, shuffle="block", block_rows=16, window_blocks=1)
        disk.start_epoch(plan)
        kept = []
        for i in range(0, SPEC.rows, 40):
            got = disk.gather(plan.order[i : i + 40])
            kept.append((plan.order[i : i + 40], got))
        for idx, got in kept:  # rows handed out earlier are not overwritten by the ring moving on
            for a, b in zip(got, ram.gather(idx), strict=True):
                assert np.array_equal(a.numpy(), b.numpy())
        disk.close()
    disk.start_epoch(plan)
    disk.gather(plan.order[400:440])
    with pytest.raises(ConfigError, match="windows"):  # rows behind the ring: an error, never another row's data
        disk.gather(plan.order[:10])
    disk.close()


def test_bench_scale_runs_every_step_on_a_tiny_cache_and_removes_it(tmp_path):
    import json

    from typer.testing import CliRunner

    from featcache.cli import app

    out = tmp_path / "scale.json"
    args = ["bench", "scale", "--store", str(tmp_path / "store"), "--rows", "3000", "--dim", "16", "--views", "2",
            "--kill-at", "0", "--repeats", "1", "-b", "64", "--json-out", str(out)]
    for step in ("write", "join", "ram", "verify", "reuse", "store"):
        args += ["--only", step]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["write"]["shards"] == 2 and [j["temp"] for j in r["join"]["rounds"]] == ["warm", "cold"]
    assert all(j["run"]["rows"] == 3000 and j["ratio"] > 0 for j in r["join"]["rounds"])
    assert [d["views"] for d in r["auto"]] == [False, True] and r["auto"][0]["decision"] == "ram"
    assert all(v["ratio"] > 0 for v in r["verify"]) and r["reuse"][0]["recall_seconds"] > 0
    assert r["store"][0]["import_vs_copy_fsync"] > 0
    assert "join out of core, batch 64, cold" in result.output and "cache import" in result.output
    assert not (tmp_path / "store" / r["key"]).exists()  # --remove is the default


@pytest.mark.parametrize("mmap_on, shard_rows", [("1", 64), ("1", 40), ("0", 64)])
def test_mapped_ring_serves_the_same_rows_as_ram(tmp_path, monkeypatch, mmap_on, shard_rows):
    """Rows of whole pages (2048 fp16) are mapped into the ring from the page cache; FEATCACHE_MMAP=0, and blocks that
    do not fit (40-row shards: a 16-row block across two shards), are read with pread into fresh memory of their slot:
    the batches are the same either way, and the same as RAM's."""
    import featcache.distill.loader.mapped as mapped

    monkeypatch.setenv("FEATCACHE_MMAP", mmap_on)
    monkeypatch.setattr(mapped, "_LIBC", mapped._libc())
    spec = SynthSpec(rows=700, dim=2048, classes=3, shard_rows=shard_rows, seed=2)  # a last block of 700 % 16 = 12 rows
    cache = FeatureCache(write_synthetic_cache(tmp_path, spec).directory)
    ram = InMemoryTable(cache, PART_DATA)
    disk = OutOfCoreTable(cache, PART_DATA, block_rows=16, window_blocks=2)
    assert disk._ring.mapped == ((FEATURES,) if mmap_on == "1" else ())
    for epoch in range(2):
        plan = epoch_plan(spec.rows, seed=1, epoch=epoch, shuffle="block", block_rows=16, window_blocks=2)
        disk.start_epoch(plan)
        for i in range(0, spec.rows, 24):
            idx = plan.order[i : i + 24]
            for a, b in zip(disk.gather(idx), ram.gather(idx), strict=True):
                assert np.array_equal(a.numpy(), b.numpy())
        disk.close()


def test_an_int8_synthetic_cache_verifies_reads_back_and_streams_as_ram_does(tmp_path):
    """int8 rows and their per-row scales, as extract --dtype int8 stores them; the out-of-core ring maps the int8
    features (2048 bytes a row) and reads the scales."""
    from featcache.cache.format import FEATURE_SCALE

    spec = SynthSpec(rows=600, dim=2048, classes=3, shard_rows=64, dtype="int8", seed=3)
    written = write_synthetic_cache(tmp_path, spec)
    assert CacheStore(tmp_path, shared_env=False).verify(spec.key).ok
    assert read_back_matches(written.directory, spec, np.array([0, 63, 64, 599]))
    cache = FeatureCache(written.directory)
    fields = (FEATURES, LOGITS, FEATURE_SCALE)
    ram = InMemoryTable(cache, PART_DATA, fields)
    disk = OutOfCoreTable(cache, PART_DATA, block_rows=16, window_blocks=2, fields=fields)
    assert disk._buf[FEATURES].dtype == np.int8
    plan = epoch_plan(spec.rows, seed=0, epoch=0, shuffle="block", block_rows=16, window_blocks=2)
    disk.start_epoch(plan)
    for i in range(0, spec.rows, 50):
        idx = plan.order[i : i + 50]
        for a, b in zip(disk.gather(idx), ram.gather(idx), strict=True):
            assert np.array_equal(a.numpy(), b.numpy())
    disk.close()
