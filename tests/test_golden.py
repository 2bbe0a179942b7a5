"""Golden fixtures: a small cache written by the code of 2026-12-03 is committed under tests/golden/, so that "old
keys stay valid" and "old manifests still load" are tests rather than promises. If a change to the key or the
format is intended, bump FORMAT_VERSION / the key scheme on purpose and regenerate the fixture with the command in
this module's GOLDEN_CONFIG comment."""

import json
import shutil
from pathlib import Path

import numpy as np

from featcache.cache import CacheStore, FeatureCache
from featcache.extract import ExtractConfig, extract, plan_extract

GOLDEN = Path(__file__).parent / "golden"
KEY = "resnet18-synthetic-train-bae82c00140b"
# featcache extract --teacher resnet18 --weights random --dataset synthetic -o num_train=16 -o num_test=8
#   --image-size 32 --batch-size 8 --workers 0 --shard-rows 8 --cache-dir tests/golden
GOLDEN_CONFIG = dict(teacher="resnet18", weights="random", dataset="synthetic",
                     dataset_options={"num_train": 16, "num_test": 8}, image_size=32, batch_size=8, workers=0,
                     shard_rows=8)


def test_todays_code_derives_the_golden_key(tmp_path):
    assert plan_extract(ExtractConfig(**GOLDEN_CONFIG, cache_dir=tmp_path)).key == KEY


def test_golden_cache_loads_verifies_and_is_reused(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(GOLDEN, store)
    assert CacheStore(store).verify(KEY).ok
    with FeatureCache(store / KEY) as cache:
        rows = cache.read_all()
        assert cache.manifest.complete and cache.num_rows("data") == 16
    # The same request finds the golden cache: nothing is recomputed, nothing rewritten.
    before = (store / KEY / "manifest.json").read_text()
    result = extract(ExtractConfig(**GOLDEN_CONFIG, cache_dir=store))
    assert result.reused and result.key == KEY
    assert json.loads((store / KEY / "manifest.json").read_text())["shards"] == json.loads(before)["shards"]
    # And a fresh extract today gives the same rows (to float16 rounding).
    fresh = extract(ExtractConfig(**GOLDEN_CONFIG, cache_dir=tmp_path / "fresh"))
    with FeatureCache(fresh.directory) as cache:
        again = cache.read_all()
    np.testing.assert_allclose(again["features"].astype(np.float32), rows["features"].astype(np.float32),
                               rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(again["logits"], rows["logits"], rtol=1e-3, atol=1e-4)
