"""torchrun on CPU (gloo, 2 processes): extract and distill give what one process gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.cache import CacheStore, FeatureCache
from featcache.distill.trainer import DistillConfig, distill
from featcache.extract import ExtractConfig, extract

ROOT = Path(__file__).resolve().parents[1]
DATA = ["-o", "num_train=96", "-o", "num_test=16", "--workers", "0"]


def torchrun(tmp_path, *args, port_offset=0):
    env = {**os.environ, "FEATCACHE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(29600 + port_offset + os.getpid() % 200), "-m", "featcache", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_torchrun_extract_equals_one_process(tmp_path):
    args = ["extract", "--teacher", "resnet18", "--weights", "random", *DATA, "--image-size", "32",
            "--shard-rows", "16", "--noise", "8", "--batch-size", "16"]
    r = torchrun(tmp_path, *args)
    assert r.stdout.count("cache ") == 1  # only rank 0 speaks
    [entry] = CacheStore(tmp_path / "home").entries()
    single = extract(ExtractConfig(teacher="resnet18", weights="random",
                                   dataset_options={"num_train": 96, "num_test": 16},
                                   image_size=32, shard_rows=16, noise=8, batch_size=16, workers=0,
                                   cache_dir=tmp_path / "single"))
    assert entry.key == single.key and entry.manifest.complete and entry.manifest.timing.ranks == 2
    assert not list((tmp_path / "home" / entry.key).glob("shards-rank*"))  # sidecars merged away
    a, b = FeatureCache(tmp_path / "home" / entry.key), FeatureCache(single.directory)
    for part in ("data", "noise"):
        ra, rb = a.read_all(part), b.read_all(part)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])
    assert entry.manifest.teacher_accuracy == single.manifest.teacher_accuracy


@pytest.mark.slow
def test_torchrun_distill_matches_one_process_with_the_global_batch(tmp_path):
    """DDP with batch B on each of 2 ranks takes the same steps as one process with batch 2B (mean losses)."""
    extract(ExtractConfig(teacher="resnet18", weights="random", dataset_options={"num_train": 96, "num_test": 16},
                          image_size=32, workers=0, cache_dir=tmp_path / "home"))
    torchrun(tmp_path, "distill", "--student", "lenet5", "--teacher", "resnet18", "--method", "ts", *DATA,
             "--epochs", "2", "--batch-size", "16", "--shuffle", "full", "--run-dir", str(tmp_path / "ddp"),
             port_offset=300)
    records = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[0]["ranks"] == 2
    distill(DistillConfig(student="lenet5", dataset_options={"num_train": 96, "num_test": 16}, teachers=["resnet18"],
                          method="ts", epochs=2, batch_size=32, shuffle="full", workers=0,
                          cache_dir=tmp_path / "home", run_dir=tmp_path / "one"))
    a = torch.load(tmp_path / "ddp" / "checkpoint-last.pt", weights_only=False)["student"]
    b = torch.load(tmp_path / "one" / "checkpoint-last.pt", weights_only=False)["student"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_rank_sidecar_cannot_add_a_shard_outside_the_cache(syn_cache, tmp_path):
    """torchrun ranks record their shards in sidecars that rank 0 folds into the manifest: the same rules apply."""
    from featcache.cache.format import Manifest
    from featcache.extract.ranks import merge_rank_shards, rank_file

    m = Manifest.load(syn_cache)
    shard = m.shards.pop(0)  # as if rank 1 had written it: only its sidecar records it
    outside = tmp_path / "x.h5"
    outside.write_bytes((syn_cache / shard.file).read_bytes())
    record = {**shard.__dict__, "file": os.path.relpath(outside, syn_cache)}
    rank_file(syn_cache, 1).write_text(json.dumps([record]))
    merge_rank_shards(syn_cache, m)
    assert [s.file for s in m.shards] == ["data-00001.h5"] and not rank_file(syn_cache, 1).exists()
    rank_file(syn_cache, 1).write_text(json.dumps([shard.__dict__]))  # the honest record is taken
    merge_rank_shards(syn_cache, m)
    assert sorted(s.file for s in m.shards) == ["data-00000.h5", "data-00001.h5"]
