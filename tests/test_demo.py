"""The demo's wiring at a tiny scale (the full-size demo is `featcache demo`, a few minutes on a CPU)."""

from typer.testing import CliRunner

from featcache.cli import app
from featcache.demo import demo_recipe
from featcache.pipeline import run_pipeline


def test_demo_pipeline_runs_end_to_end_at_tiny_scale(tmp_path):
    p = demo_recipe(tmp_path / "demo", scale=0.05, seeds=(0,))
    result = run_pipeline(p, cache_dir=tmp_path / "demo" / "cache", device="cpu", workers=0, log=lambda m: None)
    md = result["markdown"].read_text()
    assert "| lenet5 | ce | — | synthetic | 1 |" in md and "| lenet5 | ts | convnet | synthetic | 1 |" in md
    assert result["plot"].read_bytes()[:4] == b"\x89PNG"
    # The teacher was trained on its own (larger) set of the same classes, then extracted on the student's data.
    t = p.teachers[0]
    assert t.train["dataset_options"]["num_train"] > p.dataset_options["num_train"]


def test_demo_cli_plan_and_seed_errors(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--runs-dir", str(tmp_path / "d"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "plan for demo" in r.output and "lenet5-ts-convnet-s2" in r.output
    bad = CliRunner().invoke(app, ["demo", "--seeds", "a,b"])
    assert bad.exit_code == 2 and "--seeds" in bad.output
