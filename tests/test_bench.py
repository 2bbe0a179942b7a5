"""`featcache bench` runs at tiny sizes on CPU and reports sane fields (no timing assertions)."""

import json

import pytest
from rich.markup import render
from typer.testing import CliRunner

from featcache.bench.extract import bench_extract
from featcache.cli import app
from featcache.extract import ExtractConfig
from helpers import shows_whole


@pytest.mark.slow
def test_bench_extract_reports_both_rates_and_their_ratio(tmp_path):
    cfg = ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic",
                        dataset_options={"num_train": 64, "num_test": 8}, image_size=32, batch_size=16, workers=0,
                        cache_dir=tmp_path / "untouched")
    r = bench_extract(cfg, iters=2, warmup=1, rounds=2, min_seconds=0)
    assert r["forward_images_per_s"] > 0 and r["extract_images_per_s"] > 0
    assert len(r["rounds_ratio"]) == 2 and len(r["load_1min"]) == 3
    per_round = [e / f for e, f in zip(r["rounds_extract_images_per_s"], r["rounds_forward_images_per_s"], strict=True)]
    assert r["ratio"] == sum(per_round) / 2  # the median of two rounds
    assert r["images"] == 64 and r["device"] == "cpu" and r["precision"] == "fp32" and r["cache_bytes"] > 0
    assert r["decode_images_per_s"] > 0 and r["ratio_to_decode"] == r["extract_images_per_s"] / r["decode_images_per_s"]
    serial = [e * (1 / f + 1 / d) for e, f, d in zip(r["rounds_extract_images_per_s"], r["rounds_forward_images_per_s"],
                                                   r["rounds_decode_images_per_s"], strict=True)]
    assert r["rounds_ratio_to_serial"] == serial and r["ratio_to_serial"] == sum(serial) / 2  # forward ∘ decode
    assert not (tmp_path / "untouched").exists()  # benches write to a scratch store


@pytest.mark.slow
def test_bench_extract_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "extract", "--teacher", "resnet18", "-o", "num_train=32",
                                      "--image-size", "32", "--batch-size", "16", "--workers", "0", "--iters", "1",
                                      "--rounds", "1", "--min-seconds", "0", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    assert "resnet18@32" in result.output and "decode" in result.output
    assert json.loads(out.read_text())["benchmark"] == "extract"


@pytest.mark.slow
def test_bench_distill_times_every_setting(tmp_path):
    from featcache.bench.distill import bench_distill
    from featcache.distill.trainer import DistillConfig

    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options={"num_train": 48, "num_test": 8},
                        image_size=32, batch_size=16, workers=0, cache_dir=tmp_path / "untouched")
    r = bench_distill(cfg, teachers=["resnet18", "mobilenet_v3_small"], steps=4, warmup=1, rounds=1)
    assert list(r["results"]) == ["bare-student", "student", "bare-cached-1", "cached-1", "online-1", "bare-cached-2",
                                  "cached-2", "online-2"]
    assert r["methods"] == {"cached-1": "ts", "online-1": "ts", "cached-2": "multi", "online-2": "multi"}
    for x in r["results"].values():
        assert x["images_per_s"] > 0 and x["peak_memory_bytes"] is None  # CPU: no allocator statistics
        assert x["memory_vs_student"] is None and x["peak_rss_bytes"] > 0
    res = r["results"]
    c = res["cached-1"]
    assert c["speed_vs_student"] == c["images_per_s"] / res["student"]["images_per_s"]
    assert c["speed_vs_bare"] == c["images_per_s"] / res["bare-cached-1"]["images_per_s"]  # its own student's limit
    assert res["online-1"]["limit"] == "bare-cached-1" and res["student"]["limit"] == "bare-student"
    assert res["student"]["resident"] is True  # CPU default: the split fits
    assert r["image_size"] == 32 and not (tmp_path / "untouched").exists()


@pytest.mark.slow
def test_bench_distill_cli(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "distill", "--student", "lenet5", "--teacher", "resnet18",
                                      "-o", "num_train=32", "--image-size", "32", "--batch-size", "16",
                                      "--workers", "0", "--steps", "2", "--warmup", "0", "--resident",
                                      "--rounds", "1", "--e2e-epochs", "1", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    assert "+ resnet18 cached (ts)" in result.output and "resident" in result.output
    assert "distill, 1 epochs: wall" in result.output
    assert json.loads(out.read_text())["benchmark"] == "distill"
    bad = CliRunner().invoke(app, ["bench", "distill", "--student", "lenet5", "--steps", "0", "-o", "num_train=8"])
    assert bad.exit_code == 2 and "--steps" in bad.output


@pytest.mark.slow
def test_bench_distill_end_to_end_runs_the_real_distill(tmp_path):
    from featcache.bench.distill import bench_distill
    from featcache.distill.trainer import DistillConfig

    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options={"num_train": 32, "num_test": 8},
                        image_size=32, batch_size=16, workers=0, cache_dir=tmp_path / "untouched")
    r = bench_distill(cfg, teachers=[], steps=2, warmup=0, rounds=1, e2e_epochs=1)
    assert list(r["results"]) == ["bare-student", "student"] and r["e2e_epochs"] == 1
    e = r["end_to_end"]
    assert e["epochs"] == 1 and e["images_per_epoch"] == 32 and len(e["epochs_images_per_s"]) == 1
    for key in ("train_images_per_s", "wall_images_per_s", "train_vs_bare", "wall_vs_bare", "train_vs_student",
                "wall_vs_student"):
        assert e[key] > 0, key
    assert e["epochs_images_per_s"][0] > 0 and len(e["epochs_vs_bare"]) == 1 and len(e["rounds"]) == 1
    assert e["wall_images_per_s"] < e["train_images_per_s"]  # the whole call includes set-up, eval, checkpoints
    assert bench_distill(cfg, teachers=[], steps=1, warmup=0, rounds=1, e2e_epochs=0)["end_to_end"] is None
    assert not (tmp_path / "untouched").exists()


def test_bench_join_reports_every_method(tmp_path):
    from featcache.bench.join import bench_join

    r = bench_join(rows=600, dim=16, classes=3, batch_size=32, pt_files=64, limit_s=5, directory=tmp_path, cold=True)
    assert set(r["results"]) == {"h5py_fancy", "pt_per_sample", "ram", "library", "disk", "np_take", "sequential_read"}
    for name, x in r["results"].items():
        assert x["rows"] > 0 and x["rows_per_s"] > 0, name
    assert r["results"]["h5py_fancy"]["vs_h5py_fancy"] == 1.0
    res = r["results"]
    assert res["ram"]["vs_limit"] == res["ram"]["rows_per_s"] / res["np_take"]["rows_per_s"]
    assert res["disk"]["vs_limit"] == res["disk"]["rows_per_s"] / res["sequential_read"]["rows_per_s"]
    assert r["cold"] is True and len(r["load_1min"]) == 2
    assert r["results"]["disk"]["rows"] == 600 // 32 * 32  # a whole epoch of full batches
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_random_cache_is_a_valid_cache(tmp_path):
    from featcache.bench.join import write_random_cache
    from featcache.cache import FeatureCache
    from featcache.cache.store import verify_directory

    key = write_random_cache(tmp_path / "c", rows=50, dim=4, classes=2, shard_rows=16).key
    with FeatureCache(tmp_path / key) as cache:
        assert cache.num_rows() == 50 and cache.read_all()["features"].shape == (50, 4)
    assert verify_directory(tmp_path / key).ok


def test_bench_join_cli(tmp_path):
    out = tmp_path / "j.json"
    r = CliRunner().invoke(app, ["bench", "join", "--rows", "256", "--dim", "8", "--pt-files", "64",
                                 "--batch-size", "32", "--scratch", str(tmp_path), "--json-out", str(out)])
    assert r.exit_code == 0, r.output
    assert "one .pt file per sample" in r.output and json.loads(out.read_text())["benchmark"] == "join"
    bad = CliRunner().invoke(app, ["bench", "join", "--rows", "10", "--batch-size", "32"])
    assert bad.exit_code == 2 and "--rows" in bad.output


def test_bench_trust_reports_every_check_against_the_extract(tmp_path):
    out = tmp_path / "deep" / "trust.json"  # a missing directory is created, not a traceback after the run
    result = CliRunner().invoke(app, ["bench", "trust", "-o", "num_train=40", "--image-size", "32", "--workers", "0",
                                      "--repeats", "1", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"fingerprint", "content_sample", "content_full", "shard_sha256"}
    for x in r["results"].values():
        assert x["seconds"] >= 0 and x["fraction_of_extract"] == x["seconds"] / r["extract_seconds"]
    assert r["images"] == 40 and r["content_sample_rows"] == 40


@pytest.mark.slow
def test_gpu_bench_script_checks_its_prerequisites(tmp_path):
    """pipelines/gpu-bench.sh (issue 17) parses, and on a machine without CUDA stops with a one-line reason."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would measure it")
    script = Path(__file__).resolve().parents[1] / "pipelines" / "gpu-bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "no CUDA device" in r.stderr, r.stderr


# -- the result tables: each row's label and every figure at any width (the figures below are made up) ---------------
_LOAD = {"load_1min": [1.5, 1.6]}
_EXTRACT = [{"dataset": "synthetic", "images": 64, "device": "cpu", "batch_size": 16, "precision": "fp32",
             "workers": 0, "threads": 2, "rounds": 3, **_LOAD, "teacher": name, "image_size": 224,
             "forward_images_per_s": 101.0, "decode_images_per_s": 2002.0, "extract_images_per_s": 93.0,
             "ratio": 0.921, "ratio_to_decode": 0.046, "ratio_to_serial": 0.97}
            for name in ("timm:convnext_small.fb_in22k_ft_in1k_384", "timm:convnext_small.fb_in22k_ft_in1k")]
_SETTING = {"images_per_s": 1234.0, "speed_vs_bare": 0.912, "speed_vs_student": 0.873, "peak_rss_bytes": 2**30,
            "rss_vs_student": 1.052, "resident": True}
_DISTILL = {"student": "lenet5", "image_size": 32, "dataset": "synthetic", "device": "cpu", "batch_size": 128,
            "precision": "fp32", "compile": "none", "rounds": 3, **_LOAD,
            "methods": {"cached-1": "ts", "online-1": "ts"},
            "results": {"bare-student": {"images_per_s": 1500.0}, "student": _SETTING, "cached-1": _SETTING,
                        "online-1": _SETTING}}
_JOIN = {"rows": 600, "dim": 16, "classes": 3, "table_bytes": 2**20, "batch_size": 32, "cold": False, **_LOAD,
         "results": {k: {"rows_per_s": 123456.0, "vs_limit": 0.93, "vs_h5py_fancy": 41.5}
                     for k in ("ram", "np_take", "library", "disk", "sequential_read", "h5py_fancy", "pt_per_sample")}}
_TRUST = {"dataset": "synthetic", "images": 40, "teacher": "resnet18", "image_size": 32, "extract_seconds": 2.5,
          "device": "cpu", "repeats": 1, **_LOAD, "content_sample_rows": 40,
          "results": {k: {"seconds": 0.0123, "fraction_of_extract": 0.0049}
                      for k in ("fingerprint", "content_sample", "content_full", "shard_sha256")}}
_STORE = {"cache_bytes": 2**27, "shards": 4, "cpus": 2, "repeats": 3, **_LOAD,
          "results": {k: {"mb_per_s": 812.0, "seconds": 0.157, "vs_copy": 0.91, "vs_copy_fsync": 1.02}
                      for k in ("copy", "copy_fsync", "export", "import")}}
_PULL = {"bytes": 2**27, "files": 5, "server": "python -m http.server (no Range), loopback", "load_1min": [1.2, 1.3],
         "connections": 8, "pull_vs_plain": 0.83, "pull_vs_plain_fsync": 0.97,
         **{k: {"mb_per_s": 812.0, "seconds": 0.157, "all_seconds": [0.157, 0.16]}
            for k in ("plain", "plain_fsync", "pull")}}
_DISTILL_PULL = {"images": 2000, "cache_bytes": 2**20, "load_1min": [1.2, 1.3],
                 **{k: {"seconds": 8.12, "all_seconds": [8.12, 8.2]} for k in ("on_use", "pull_first", "pull")}}


def _tables() -> dict:
    from featcache.cli import bench

    return {"extract": (bench._extract_table(_EXTRACT), [r["teacher"] + "@224" for r in _EXTRACT], "0.92"),
            "distill": (bench._distill_table(_DISTILL, ["resnet18"]),
                        ["student alone (ce), resident", "+ resnet18 cached (ts), resident"], "1,234"),
            "join": (bench._join_table(_JOIN), ["featcache out-of-core table", "one .pt file per sample"], "123,456"),
            "trust": (bench._trust_table(_TRUST), ["fingerprint", "content_sample", "shard_sha256"], "0.49%"),
            "store": (bench._store_table(_STORE), ["featcache cache export (sha256 checked)",
                                                   "limit: shutil.copyfile of its files"], "812"),
            "pull": (bench._pull_table(_PULL), ["limit: urllib download of its files",
                                                 "featcache cache pull, 8 files at once (sha256 checked, fsync, "
                                                 "verified install)"], "812"),
            "distill_pull": (bench._distill_pull_table(_DISTILL_PULL), ["cache pull, then distill from the local copy"],
                             "8.12")}


@pytest.mark.parametrize("columns", [60, 80, 200])
@pytest.mark.parametrize("name", ["extract", "distill", "join", "trust", "store", "pull", "distill_pull"])
def test_a_bench_table_keeps_each_rows_label_and_every_figure_at_any_width(name, columns):
    grid, labels, figure = _tables()[name]
    text = "\n".join(render(ln).plain for ln in grid.lines(columns))
    assert shows_whole(text, labels), text
    assert text.count(figure) >= len(grid.rows) - (name == "distill"), text  # every row's figure, none cut
    assert all(len(ln) <= columns for ln in text.splitlines() if ln not in labels), text


def test_bench_distill_trains_every_setting_with_the_papers_optimizer(tmp_path):
    """The student alone would take its own recipe (mobilenetv3's AdamW, zero-initialised residuals): the benchmark
    pins the papers' setting so that it differs from the cached-teacher settings only by the rows."""
    from featcache.bench.distill import _scenarios
    from featcache.config import DistillConfig

    scenarios, _ = _scenarios(DistillConfig(student="mobilenetv3", batch_size=32), ["k" * 12], 32, tmp_path)
    for _, cfg, _ in scenarios:
        r = cfg.resolved()
        assert (r.optimizer, r.lr, r.weight_decay, r.warmup_epochs, r.zero_init_residual, r.batch_size) == \
            ("adam", 1e-3, 0.0, 0, False, 32)
