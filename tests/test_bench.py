"""`featcache bench` runs at tiny sizes on CPU and reports sane fields (no timing assertions)."""

import json

from typer.testing import CliRunner

from featcache.bench import bench_extract
from featcache.cli import app
from featcache.extract import ExtractConfig


def test_bench_extract_reports_both_rates_and_their_ratio(tmp_path):
    cfg = ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic",
                        dataset_options={"num_train": 64, "num_test": 8}, image_size=32, batch_size=16, workers=0,
                        cache_dir=tmp_path / "untouched")
    r = bench_extract(cfg, iters=2, warmup=1)
    assert r["forward_images_per_s"] > 0 and r["extract_images_per_s"] > 0
    assert r["ratio"] == r["extract_images_per_s"] / r["forward_images_per_s"]
    assert r["images"] == 64 and r["device"] == "cpu" and r["precision"] == "fp32" and r["cache_bytes"] > 0
    assert not (tmp_path / "untouched").exists()  # benches write to a scratch store


def test_bench_extract_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "extract", "--teacher", "resnet18", "-o", "num_train=32",
                                      "--image-size", "32", "--batch-size", "16", "--workers", "0", "--iters", "1",
                                      "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ratio to forward" in result.output
    assert json.loads(out.read_text())["benchmark"] == "extract"
