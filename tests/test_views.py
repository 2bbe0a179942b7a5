"""Replayable augmented views: extract caches K views with their parameters; distill replays the exact pixels."""

import time

import numpy as np
import pytest
import torch

from featcache.cache import FeatureCache
from featcache.datasets import get_dataset
from featcache.errors import ConfigError
from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.models import create_teacher
from featcache.transforms import Geometry, Normalizer, TransformSpec
from featcache.views import AUG_FIELD, ViewSpec, apply_view, view_params
from helpers import SYN_EXTRACT, invoke, one_line_error

SYN = {"num_train": 48, "num_test": 16}


def cfg(tmp_path, **kw):
    base = dict(teacher="resnet18", weights="random", dataset_options=dict(SYN), image_size=32, batch_size=16,
                workers=0, cache_dir=tmp_path / "store", shard_rows=20, views=3)
    base.update(kw)
    return ExtractConfig(**base)


@pytest.fixture(scope="module")
def view_cache(tmp_path_factory):
    c = cfg(tmp_path_factory.mktemp("v"))
    return c, extract(c)


@pytest.mark.slow
def test_extract_caches_k_views_with_their_parameters(view_cache):
    c, result = view_cache
    m = result.manifest
    assert m.views == ViewSpec(count=3, policy="pad-crop-flip", seed=0)  # small pre-centred images: the CIFAR policy
    assert set(m.rows) == {"data", "view1", "view2"} and m.rows["view2"] == 48
    ds = get_dataset("synthetic", split="train", **SYN)
    spec = m.views
    with FeatureCache(result.directory) as cache:
        aug = cache.read_all("view2", fields=(AUG_FIELD,))[AUG_FIELD]
    for i in (0, 7, 47):
        raw = ds.read_image(i)
        np.testing.assert_array_equal(aug[i], view_params(spec, 2, i, raw.shape[-2], raw.shape[-1], 32))
    assert (aug[:, 4] == 1).any() and (aug[:, 4] == 0).any()  # some flipped, some not


def test_cached_view_rows_are_the_teachers_output_on_the_replayed_pixels(view_cache):
    """Bit-exact replay: the view rebuilt from the stored parameters is the image the teacher saw."""
    c, result = view_cache
    m = result.manifest
    ds = get_dataset("synthetic", split="train", **SYN)
    spec, transform = m.views, m.transform
    with FeatureCache(result.directory) as cache:
        rows = cache.read_all("view1", fields=("features", "logits", AUG_FIELD))
    images = torch.stack([apply_view(ds.read_image(i), rows[AUG_FIELD][i], spec, transform) for i in range(16)])
    plan = plan_extract(c)
    teacher = create_teacher("resnet18", weights="random", num_classes=plan.num_classes, seed=0).model.eval()
    with torch.inference_mode():
        feats, _ = teacher(Normalizer(transform)(images, channels_last=False))
    np.testing.assert_allclose(rows["features"][:16].astype(np.float32), feats.numpy(), rtol=2e-3, atol=2e-3)
    # and the views differ from the evaluation view
    with FeatureCache(result.directory) as cache:
        base = cache.read_all("data")["features"][:16]
    assert not np.allclose(base, rows["features"][:16])


def test_rrc_policy_and_errors(tmp_path):
    spec = ViewSpec(2, "rrc-flip", seed=3)
    p = view_params(spec, 1, 5, 100, 60, 32)
    top, left, h, w, flip = p
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 60 and flip in (0, 1)
    out = apply_view(torch.zeros(3, 100, 60, dtype=torch.uint8), p, spec, TransformSpec(image_size=32, resize=32))
    assert out.shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="--views"):
        ViewSpec(1, "rrc-flip")
    with pytest.raises(ConfigError, match="--view-policy"):
        ViewSpec(2, "mixup")
    assert plan_extract(cfg(tmp_path)).key != plan_extract(cfg(tmp_path, views=1)).key


def test_distill_replays_one_cached_view_per_sample_per_epoch(view_cache):
    from featcache.distill.loader import JoinedLoader

    c, result = view_cache
    m = result.manifest
    spec, transform = m.views, m.transform
    ds = get_dataset("synthetic", split="train", **SYN).with_transform(Geometry(transform))
    cache = FeatureCache(result.directory)
    tables = {p: cache.read_all(p, fields=("features", "logits", AUG_FIELD) if p != "data" else ("features", "logits"))
              for p in ("data", "view1", "view2")}
    loader = JoinedLoader(ds, [cache], batch_size=16, workers=0, seed=1, transform=transform, views=True)
    seen_views = set()
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        choice = np.random.default_rng([1, epoch, 3]).integers(0, 3, size=48)
        for batch in loader:
            for j, i in enumerate(batch.index.tolist()):
                v = int(choice[i])
                seen_views.add(v)
                part = "data" if v == 0 else f"view{v}"
                assert torch.equal(batch.features[0][j], torch.from_numpy(tables[part]["features"][i]))
                raw = ds.read_image(i)
                expected = (Geometry(transform)(raw) if v == 0
                            else apply_view(raw, tables[part][AUG_FIELD][i], spec, transform))
                assert torch.equal(batch.images[j], expected)  # the student sees the teacher's pixels
    loader.close()
    assert seen_views == {0, 1, 2}
    # --no-views: the evaluation view only
    plain = JoinedLoader(ds, [cache], batch_size=16, workers=0, seed=1, transform=transform, views=False)
    b = next(iter(plain))
    assert torch.equal(b.features[0], torch.from_numpy(tables["data"]["features"][b.index.numpy()]))
    plain.close()


def test_distill_run_with_views(view_cache, tmp_path):
    from featcache.distill.trainer import DistillConfig, distill

    c, result = view_cache
    base = dict(student="lenet5", dataset_options=dict(SYN), teachers=[result.key], method="ts", epochs=1,
                batch_size=16, workers=0, cache_dir=c.cache_dir)
    s = distill(DistillConfig(**base, run_dir=tmp_path / "v"))
    assert s.epochs == 1
    import json

    assert json.loads((tmp_path / "v" / "config.json").read_text())["views"]["count"] == 3
    with pytest.raises(ConfigError, match="in RAM"):
        distill(DistillConfig(**base, run_dir=tmp_path / "d", cache_mode="disk"))
    with pytest.raises(ConfigError, match="--no-views"):
        distill(DistillConfig(**base, run_dir=tmp_path / "r", resident=True))


@pytest.mark.slow
def test_topk_logits_are_stored_compactly_and_joined_densely(tmp_path):
    from featcache.cache.format import LOGITS_INDEX, dense_logits
    from featcache.distill.loader import JoinedLoader

    full = extract(cfg(tmp_path, views=1))
    top = extract(cfg(tmp_path, views=1, topk_logits=3))
    assert top.key != full.key and top.manifest.topk_logits == 3
    assert top.manifest.teacher_accuracy == full.manifest.teacher_accuracy
    with FeatureCache(full.directory) as a, FeatureCache(top.directory) as b:
        dense = a.read_all(fields=("logits",))["logits"]
        kept = b.read_all(fields=("logits", LOGITS_INDEX))
        assert kept["logits"].shape == (48, 3) and kept[LOGITS_INDEX].dtype == np.int32
        np.testing.assert_array_equal(kept[LOGITS_INDEX][:, 0], dense.argmax(1))
        rebuilt = dense_logits(torch.from_numpy(kept["logits"]), torch.from_numpy(kept[LOGITS_INDEX]), 10)
        order = np.argsort(-dense, axis=1)[:, :3]
        np.testing.assert_allclose(np.take_along_axis(rebuilt.numpy(), order, 1), np.take_along_axis(dense, order, 1))
        assert (rebuilt.numpy() >= kept["logits"].min(1, keepdims=True) - 1e-6).all()
        assert b.row_bytes(("logits",)) == 12
        ds = get_dataset("synthetic", split="train", **SYN)
        spec = b.manifest.transform
        ds.with_transform(Geometry(spec))
        loader = JoinedLoader(ds, [b], batch_size=16, workers=0, transform=spec)
        batch = next(iter(loader))
        loader.close()
        assert batch.logits[0].shape == (16, 10)
        assert torch.equal(batch.logits[0].argmax(1),
                           torch.from_numpy(kept[LOGITS_INDEX][batch.index.numpy(), 0]).long())
    with pytest.raises(ConfigError, match="--topk-logits"):
        extract(cfg(tmp_path, views=1, topk_logits=11))


# -- 7. many views: bounded, announced, and the manifest is not rewritten per shard ----------------------------------
def test_views_are_bounded_and_the_extract_says_what_it_will_write(home, monkeypatch):
    from featcache.cache.format import Manifest
    from featcache.extract.sweep import MANIFEST_EVERY

    one_line_error(invoke("extract", *SYN_EXTRACT, "--views", "10000"), "--views 10000", "at most 1024")
    assert not any(home.iterdir()) if home.exists() else True
    saves = []
    real = Manifest.save
    monkeypatch.setattr(Manifest, "save", lambda self, d: saves.append(len(self.shards)) or real(self, d))
    start = time.monotonic()
    r = invoke("extract", *SYN_EXTRACT, "--views", "40", "--shard-rows", "8")
    elapsed = time.monotonic() - start
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "960 rows to write (24 data + 936 in 39 view(s)) in 120 shard(s)" in said, said
    m = Manifest.load(next(p for p in home.iterdir() if (p / "manifest.json").is_file()))
    assert m.complete and len(m.shards) == 120
    # Not one save per shard (120): at most once a second and at the end, so bounded by the time taken (a loaded
    # machine takes longer over the 120 shards and may save more often than an idle one, never once per shard).
    assert len(saves) <= elapsed / MANIFEST_EVERY + 5 and len(saves) < 60, (saves, elapsed)
