"""featcache.cache.codec, compressed rows: int8 features with a per-row scale and a fitted PCA projection, read
back as the float rows every method expects, in their own keys and manifest fields, checked like everything else
in a cache."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featcache.api import RowJoin
from featcache.cache import CacheStore, FeatureCache, Manifest
from featcache.cache.format import FEATURE_SCALE, FEATURES, MANIFEST, PROJECTION_FILE
from featcache.cli import app
from featcache.datasets import get_dataset
from featcache.distill.loader import JoinedLoader
from featcache.distill.resident import ResidentLoader
from featcache.distill.trainer import CONFIG, DistillConfig, distill
from featcache.errors import CacheError, ConfigError
from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.transforms import Geometry
from helpers import one_line_error

SYN = {"num_train": 48, "num_test": 16}
N = 16  # --project
runner = CliRunner()


def cfg(root, **kw) -> ExtractConfig:
    return ExtractConfig(teacher="convnet", weights="random", dataset="synthetic", dataset_options=dict(SYN),
                         image_size=32, workers=0, cache_dir=root, precision="fp32", shard_rows=20, **kw)


@pytest.fixture(scope="module")
def codec_store(tmp_path_factory):
    """One teacher, five caches of its rows: float32 (the reference), float16, int8, projected, projected int8."""
    root = tmp_path_factory.mktemp("store")
    keys = {name: extract(cfg(root, **kw)).key for name, kw in (
        ("float32", {"dtype": "float32"}), ("float16", {}), ("int8", {"dtype": "int8"}), ("project", {"project": N}),
        ("project-int8", {"project": N, "dtype": "int8"}))}
    return root, keys


def open_(codec_store, name) -> FeatureCache:
    root, keys = codec_store
    return FeatureCache(root / keys[name])


def reference(codec_store) -> np.ndarray:
    with open_(codec_store, "float32") as c:
        return c.read_all()[FEATURES]


# -- what is stored ------------------------------------------------------------------------------------------------


def test_int8_rows_are_within_half_a_step_of_the_features(codec_store):
    f = reference(codec_store)
    with open_(codec_store, "int8") as c:
        raw = c.read_all(fields=(FEATURES, FEATURE_SCALE))  # asking for the scales: the stored int8 rows
        back = c.read_all()[FEATURES]  # without: float rows
        assert c.manifest.dtype == "int8" and c.manifest.feature_codec == "int8-row-absmax"
        assert c.row_bytes((FEATURES, FEATURE_SCALE)) == c.num_features + 4
    q, s = raw[FEATURES], raw[FEATURE_SCALE]
    assert q.dtype == np.int8 and s.dtype == np.float32 and np.abs(q).max() <= 127
    np.testing.assert_allclose(s, np.abs(f).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(q.astype(np.float64) * s[:, None] - f)
    assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()  # |f - q·s| <= s/2 = max|row| / 254
    assert back.dtype == np.float16 and back.shape == f.shape
    assert (np.abs(back.astype(np.float64) - f) <= s[:, None] / 2 + np.abs(f) * 2.0**-10 + 1e-7).all()


def test_projected_rows_are_the_pca_of_the_features(codec_store):
    f = reference(codec_store)
    with open_(codec_store, "project") as c:
        mean, components = c.projection()
        rows = c.read_all()[FEATURES]
        m = c.manifest
        assert c.num_features == N and m.teacher.num_features == f.shape[1] and m.feature_dim == N
    assert mean.shape == (f.shape[1],) and components.shape == (N, f.shape[1])
    np.testing.assert_allclose(components @ components.T, np.eye(N), atol=1e-5)  # orthonormal rows
    want = (f - mean) @ components.T
    assert rows.dtype == np.float16 and rows.shape == (len(f), N)
    np.testing.assert_allclose(rows.astype(np.float32), want, rtol=2.0**-10, atol=1e-4)
    # The components are the principal axes: the projected rows' variances come in decreasing order.
    assert (np.diff(want.var(axis=0)) <= 1e-6).all()
    p = m.projection
    assert (p.file, p.dim, p.source_dim, p.sample, p.seed) == (PROJECTION_FILE, N, f.shape[1], SYN["num_train"], 0)
    with open_(codec_store, "project-int8") as c:  # projected, then quantised
        np.testing.assert_allclose(c.read_all()[FEATURES].astype(np.float32), want,
                                   atol=float(np.abs(want).max()) / 127)


def test_keys_differ_and_old_keys_stay(codec_store, tmp_path):
    _, keys = codec_store
    assert len(set(keys.values())) == 5
    plain = plan_extract(cfg(tmp_path)).identity
    assert "feature_codec" not in plain and "projection" not in plain  # used only when asked for: old keys stay
    assert plan_extract(cfg(tmp_path, dtype="int8")).identity["feature_codec"] == "int8-row-absmax"
    assert plan_extract(cfg(tmp_path, project=N)).identity["projection"] == {"method": "pca", "dim": N,
                                                                            "sample": SYN["num_train"], "seed": 0}
    assert plan_extract(cfg(tmp_path, project=8)).key != keys["project"]
    # Reused, not recomputed: the projection is part of the finished cache.
    assert extract(cfg(codec_store[0], project=N)).reused


def test_flags_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="--project"):
        plan_extract(cfg(tmp_path, project=0))
    with pytest.raises(ConfigError, match="--project 49: .* 48 rows"):
        plan_extract(cfg(tmp_path, project=49))
    with pytest.raises(ConfigError, match="--blocks with --dtype int8"):
        plan_extract(cfg(tmp_path, dtype="int8", blocks=["features"]))
    with pytest.raises(ConfigError, match="--logits-dtype"):
        plan_extract(cfg(tmp_path, logits_dtype="int8"))


def test_cache_info_shows_the_codec_and_the_projection(codec_store):
    root, keys = codec_store
    r = runner.invoke(app, ["cache", "info", keys["project-int8"], "--cache-dir", str(root)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "int8-row-absmax" in text and "pca" in text and f"→ {N} dims" in text and PROJECTION_FILE in text
    r = runner.invoke(app, ["cache", "verify", keys["project-int8"], "--cache-dir", str(root)])
    assert r.exit_code == 0 and "4 shard(s) verified" in r.output, r.output  # 3 shards and the projection file


# -- read back as float rows ---------------------------------------------------------------------------------------


def _loader_rows(loader):
    loader.set_epoch(0)
    batches = list(loader)
    loader.close()
    index = torch.cat([b.index for b in batches]).numpy()
    return index, torch.cat([b.features[0] for b in batches])


@pytest.mark.parametrize("name", ["int8", "project-int8"])
def test_loaders_give_float_rows(codec_store, name):
    """RAM and out-of-core tables, the resident loader and RowJoin: every one hands out float16 [B, N] rows equal to
    the reader's, from int8 rows and scales that stayed int8 up to split_rows."""
    cache = open_(codec_store, name)
    want = cache.read_all()[FEATURES]
    ds = get_dataset("synthetic", split="train", **SYN)
    spec = cache.manifest.transform
    ds.with_transform(Geometry(spec))
    args = dict(batch_size=16, workers=0, seed=1, transform=spec)
    for mode in ("ram", "disk"):
        loader = JoinedLoader(ds, [cache], mode=mode, block_rows=8, window_blocks=1, **args)
        assert loader.fields[0][-1] == FEATURE_SCALE
        index, rows = _loader_rows(loader)
        assert rows.dtype == torch.float16 and rows.shape == (len(want), cache.num_features), mode
        assert torch.equal(rows, torch.from_numpy(want[index])), mode
    index, rows = _loader_rows(ResidentLoader(ds, [cache], **args))
    assert rows.dtype == torch.float16 and torch.equal(rows, torch.from_numpy(want[index]))
    join = RowJoin([cache], check=False)
    got = join.join([5, 0, 5])[0]
    assert got[FEATURES].dtype == torch.float16 and torch.equal(got[FEATURES], torch.from_numpy(want[[5, 0, 5]]))
    assert set(got) == {FEATURES, "logits"}
    assert torch.equal(torch.from_numpy(cache.gather([5, 0, 5])[FEATURES]), got[FEATURES])


@pytest.mark.parametrize("name,method", [("int8", "ts"), ("int8", "kd"), ("project", "ts"), ("project", "kd"),
                                         ("project-int8", "ts")])
def test_distill_trains_from_compressed_caches(codec_store, tmp_path, name, method):
    root, keys = codec_store
    summary = distill(DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN),
                                    teachers=[keys[name]], method=method, epochs=1, batch_size=16, workers=0,
                                    cache_dir=root, run_dir=tmp_path / "run", device="cpu"))
    assert 0.0 <= summary.best_acc <= 1.0
    info = json.loads((tmp_path / "run" / CONFIG).read_text())
    width = N if name.startswith("project") else 128
    assert info["teachers"][0]["num_features"] == width
    if method == "ts":  # ts widens the student's feature layer to the rows it regresses
        assert info["student_kwargs"]["feature_dim"] == width


def test_online_rows_go_through_the_caches_codec(codec_store, tmp_path):
    """distill --online projects and quantises the live teacher's features as the cache stored them."""
    root, keys = codec_store
    with open_(codec_store, "project-int8") as c:
        from featcache.cache.codec import RowEncoder

        enc = RowEncoder(c.manifest, c.projection(), "cpu")
        with open_(codec_store, "float32") as ref:
            f = torch.from_numpy(ref.read_all()[FEATURES])
        assert torch.equal(enc.roundtrip(f), torch.from_numpy(c.read_all()[FEATURES]))
    summary = distill(DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN),
                                    teachers=[keys["project-int8"]], epochs=1, batch_size=16, workers=0,
                                    cache_dir=root, run_dir=tmp_path / "run", device="cpu", online=True))
    assert summary.online


# -- damaged and inconsistent ---------------------------------------------------------------------------------------


def copy_cache(codec_store, name, tmp_path):
    import shutil

    root, keys = codec_store
    shutil.copytree(root / keys[name], tmp_path / keys[name])
    return tmp_path / keys[name]


def rewrite_shard(directory, edit):
    """Apply ``edit(h5file)`` to the first shard and record its new size and sha256, so that only the layout is
    wrong (a store someone else wrote)."""
    m = Manifest.load(directory)
    shard = m.shards[0]
    path = directory / shard.file
    with h5py.File(path, "r+") as f:
        edit(f)
    shard.bytes, shard.sha256 = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    m.save(directory)
    return shard


def test_flipped_byte_in_the_projection_file_is_one_line_naming_it_and_the_repair(codec_store, tmp_path, monkeypatch):
    directory = copy_cache(codec_store, "project", tmp_path)
    path = directory / PROJECTION_FILE
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=rf"projection file {PROJECTION_FILE} is corrupt.*featcache extract"):
        FeatureCache(directory)
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path))
    one_line_error(runner.invoke(app, ["distill", "--teacher", directory.name, "--student", "lenet5", "--dataset",
                                       "synthetic", "-o", "num_train=48", "-o", "num_test=16", "--workers", "0",
                                       "--epochs", "1", "--run-dir", str(tmp_path / "run")]),
                   PROJECTION_FILE, "corrupt", "featcache extract")
    report = CacheStore(tmp_path).verify(directory.name)
    assert [(c.file, c.status) for c in report.bad] == [(PROJECTION_FILE, "corrupt")]
    path.unlink()
    with pytest.raises(CacheError, match=f"projection file {PROJECTION_FILE} is missing"):
        FeatureCache(directory)
    # The repair the message names: the same extract redoes the cache (a new fit, every shard).
    again = extract(cfg(tmp_path, project=N))
    assert not again.reused and again.key == directory.name and CacheStore(tmp_path).verify(again.key).ok


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["projection"].update(dim=8), "projection"),
    (lambda d: d["projection"].update(file="../projection.h5"), "projection"),
    (lambda d: d.update(projection=None), "projection"),
    (lambda d: d["projection"].update(source_dim=3), "projection"),
    (lambda d: d.update(feature_codec="int4"), "feature_codec"),
    (lambda d: d.update(dtype="float16"), "feature_codec"),
])
def test_inconsistent_records_are_refused_by_the_manifest_check(codec_store, tmp_path, edit, needle):
    directory = copy_cache(codec_store, "project-int8", tmp_path)
    d = json.loads((directory / MANIFEST).read_text())
    edit(d)
    (directory / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(CacheError, match=f"unreadable .*{needle}"):
        Manifest.load(directory)


def test_scales_of_the_wrong_shape_are_refused_by_verify_and_readers(codec_store, tmp_path):
    directory = copy_cache(codec_store, "int8", tmp_path)

    def wrong_shape(f):
        n = f[FEATURE_SCALE].shape[0]
        del f[FEATURE_SCALE]
        f.create_dataset(FEATURE_SCALE, shape=(n, 2), dtype="float32")

    shard = rewrite_shard(directory, wrong_shape)
    report = CacheStore(tmp_path).verify(directory.name)
    assert [(c.file, c.status) for c in report.bad] == [(shard.file, "unreadable")]
    assert "feature_scale has shape" in report.bad[0].detail
    with pytest.raises(CacheError, match=f"shard {shard.file} is not laid out .*feature_scale"):
        FeatureCache(directory).gather([0])
    rewrite_shard(directory, lambda f: f.__delitem__(FEATURE_SCALE))
    with pytest.raises(CacheError, match="'feature_scale' missing"):
        FeatureCache(directory).read_all()


def test_first_nonfinite_reads_int8_rows_as_floats(codec_store, tmp_path):
    directory = copy_cache(codec_store, "int8", tmp_path)
    assert FeatureCache(directory).first_nonfinite() is None

    def huge_scale(f):
        f[FEATURE_SCALE][3] = np.float32(1e6)  # 127e6 is beyond float16, which int8 rows are read back in

    rewrite_shard(directory, huge_scale)
    assert FeatureCache(directory).first_nonfinite() == (FEATURES, 3)


def test_export_import_carries_the_projection_file(codec_store, tmp_path):
    from featcache.cache.archive import export_cache, import_archive

    root, keys = codec_store
    key = keys["project-int8"]
    moved = export_cache(CacheStore(root), key, tmp_path / "c.tar")
    (tmp_path / "to").mkdir()
    imported = import_archive(moved.path, tmp_path / "to")
    assert (imported.path / PROJECTION_FILE).is_file() and CacheStore(tmp_path / "to").verify(key).ok
    with FeatureCache(imported.path) as c, open_(codec_store, "project-int8") as ref:
        assert np.array_equal(c.read_all()[FEATURES], ref.read_all()[FEATURES])


def test_dequant_bench_runs_and_reports_both_dtypes(tmp_path):
    from featcache.bench.codec import bench_dequant

    out = bench_dequant(rows=600, dim=16, batch_size=64, rounds=1, block_rows=64, window_blocks=2, directory=tmp_path)
    assert out["feature_bytes_per_row"] == {"float16": 32, "int8": 20}
    assert all(r.get("rows_per_s", 1) > 0 for r in out["results"].values())
    assert {"ram float16", "ram int8", "disk int8", "ram int8 / float16"} <= set(out["results"])
