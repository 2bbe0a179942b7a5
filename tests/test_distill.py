"""Stage 2 end to end: cached rows are lossless, no teacher is built, runs train, resume and evaluate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featcache.cache import FeatureCache, Manifest
from featcache.cli import app
from featcache.datasets import get_dataset
from featcache.distill.loader import JoinedLoader
from featcache.distill.methods import MethodParams, TeacherRows, get_method
from featcache.distill.trainer import CONFIG, LAST, METRICS, SUMMARY, DistillConfig, distill, evaluate_run, setup
from featcache.errors import CacheError, ConfigError
from featcache.extract import ExtractConfig, extract
from featcache.models import create_teacher
from featcache.models.students import create_student
from featcache.transforms import Geometry, Normalizer
from featcache.util.progress import Reporter
from helpers import FOLDER_DISTILL, SYN, folder_extract_key, invoke, one_line_error


def extract_cfg(two_caches, teacher="resnet18", **kw):
    base = dict(
        teacher=teacher, weights="random", dataset="synthetic", dataset_options=dict(SYN), image_size=32,
        batch_size=32, workers=0, cache_dir=two_caches, noise=8,
    )
    base.update(kw)
    return ExtractConfig(**base)


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """resnet18 (with 8 noise rows) and mobilenet_v3_small, random, on SYN at 32 px."""
    root = tmp_path_factory.mktemp("store")
    extract(extract_cfg(root))
    extract(extract_cfg(root, teacher="mobilenet_v3_small"))
    return root


def run_cfg(two_caches, tmp_path, **kw):
    base = dict(
        student="lenet5", dataset="synthetic", dataset_options=dict(SYN), teachers=["resnet18"], method="ts",
        epochs=1, batch_size=16, workers=0, cache_dir=two_caches, run_dir=tmp_path / "run",
    )
    base.update(kw)
    return DistillConfig(**base)


# -- the cache is lossless ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ts", "ts-translator", "kd", "fitnets"])
def test_loss_from_cached_rows_equals_loss_with_the_live_teacher(two_caches, method):
    """The same batch, the same student; rows from the cache vs the teacher run now."""
    cfg = extract_cfg(two_caches)
    cache = FeatureCache(extract(cfg).directory)  # reused, not re-extracted
    spec = cache.manifest.transform
    ds = get_dataset("synthetic", split="train", **SYN).with_transform(Geometry(spec))
    loader = JoinedLoader(ds, [cache], batch_size=32, workers=0, seed=1, transform=spec)
    batch = next(iter(loader))
    loader.close()
    x = Normalizer(spec)(batch.images, channels_last=False)

    teacher = create_teacher(cfg.teacher, weights=cfg.weights, num_classes=ds.num_classes, seed=cfg.seed)
    with torch.inference_mode():
        live_features, live_logits = teacher.model.eval()(x)

    torch.manual_seed(0)
    cls = get_method(method)
    params = MethodParams()
    student = create_student("lenet5", num_classes=10, image_size=32, **cls.student_options([512], params))
    m = cls(student, [512], 10, params)
    m.total_epochs(2)
    student.eval()  # no dropout: the two losses see the same function
    cached, _, _ = m.loss(student, x, batch.labels, TeacherRows(batch.features, batch.logits), 0)
    online, _, _ = m.loss(student, x, batch.labels, TeacherRows([live_features.clone()], [live_logits.clone()]), 0)
    # Features are stored as float16: agreement to fp16 precision.
    assert torch.allclose(cached, online, rtol=2e-3, atol=1e-4), (cached.item(), online.item())


# -- no teacher in the distill process ---------------------------------------------------------------------------


@pytest.fixture()
def no_teachers(monkeypatch):
    """Make building any teacher network an error for the duration of a test."""
    from featcache.models import ntsnet, teachers

    def forbidden(*a, **k):
        raise AssertionError("a teacher network was constructed during distill")

    monkeypatch.setattr(teachers, "create_teacher", forbidden)
    monkeypatch.setattr(teachers.TorchvisionFeatureModel, "__init__", forbidden)
    monkeypatch.setattr(ntsnet.NTSNet, "__init__", forbidden)
    monkeypatch.setattr(ntsnet, "build_ntsnet", forbidden)


@pytest.mark.parametrize(
    "method,teachers,extra",
    [
        ("ts", ["resnet18"], {}),
        ("kd", ["resnet18"], {}),
        ("fitnets", ["resnet18"], {"hint_epochs": 1}),
        ("ts-translator", ["resnet18"], {}),
        ("multi", ["resnet18", "mobilenet_v3_small"], {}),
        ("ts", ["resnet18"], {"noise_per_batch": 4}),
        ("ts", ["resnet18"], {"cache_mode": "disk"}),
        ("ce", [], {}),
    ],
)
def test_every_method_trains_without_building_a_teacher(two_caches, tmp_path, no_teachers, method, teachers, extra):
    summary = distill(run_cfg(two_caches, tmp_path, method=method, teachers=teachers, **extra))
    assert 0.0 <= summary.best_acc <= 1.0 and summary.images_per_s > 0
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert len(records) == summary.epochs and all(r["train_loss"] == r["train_loss"] for r in records)
    info = json.loads((tmp_path / "run" / CONFIG).read_text())
    assert [t["key"] for t in info["teachers"]] == summary.teachers
    if extra.get("noise_per_batch"):
        assert records[0]["noise_images"] == 4 * -(-SYN["num_train"] // 16)
    if method == "fitnets":
        assert [r["stage"] for r in records] == ["hint", "xent"]


# -- learning, resume, eval ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_extract_then_distill_beats_chance(tmp_path, monkeypatch):
    """A tiny real run through the CLI: 10 synthetic classes, so chance is 10%."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    data = ["--dataset", "synthetic", "-o", "num_train=2000", "-o", "num_test=200", "--workers", "0"]
    r = runner.invoke(app, ["extract", "--teacher", "resnet18", "--weights", "random", *data, "--image-size", "32"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--student", "lenet5", "--teacher", "resnet18", "--method", "ts", *data,
                            "--epochs", "8", "--batch-size", "32", "--lr", "2e-3", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["best_acc"] >= 0.2, summary
    assert "best test acc" in r.output and "img/s" in r.output
    ev = runner.invoke(app, ["eval", str(run), "--json", "--workers", "0"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["acc"] == pytest.approx(summary["best_acc"])


class StopAfterFirstEpoch(Reporter):
    def message(self, text: str) -> None:
        if text.startswith("epoch 1/"):
            raise KeyboardInterrupt


def test_resume_continues_to_the_same_result(two_caches, tmp_path):
    full = distill(run_cfg(two_caches, tmp_path / "a", epochs=2, run_dir=tmp_path / "a"))
    cfg = run_cfg(two_caches, tmp_path, epochs=2, run_dir=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, reporter=StopAfterFirstEpoch())
    assert len((tmp_path / "b" / METRICS).read_text().splitlines()) == 1
    resumed = distill(run_cfg(two_caches, tmp_path, epochs=2, run_dir=tmp_path / "b", resume=True))
    assert resumed.last_acc == full.last_acc
    a = torch.load(tmp_path / "a" / LAST, weights_only=False)["student"]
    b = torch.load(tmp_path / "b" / LAST, weights_only=False)["student"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    lines = (tmp_path / "b" / METRICS).read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_run_dir_rules(two_caches, tmp_path):
    distill(run_cfg(two_caches, tmp_path))
    with pytest.raises(ConfigError, match="--resume"):
        distill(run_cfg(two_caches, tmp_path))
    with pytest.raises(ConfigError, match="--resume"):
        distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "empty", resume=True))
    r = evaluate_run(tmp_path / "run", checkpoint="last", workers=0)
    assert r.n == SYN["num_test"] and r.epoch == 1
    with pytest.raises(ConfigError, match="not a featcache distill run"):
        evaluate_run(tmp_path, workers=0)


# -- refusals -------------------------------------------------------------------------------------------------------


def test_augmentation_needs_the_fixed_teacher_flag(two_caches, tmp_path):
    with pytest.raises(ConfigError, match="--allow-inconsistent"):
        setup(run_cfg(two_caches, tmp_path, augment="pad-crop-flip"))
    summary = distill(run_cfg(two_caches, tmp_path, augment="pad-crop-flip", allow_inconsistent=True))
    assert summary.epochs == 1
    # Without a teacher there is nothing to be inconsistent with.
    setup(run_cfg(two_caches, tmp_path, teachers=[], method="ce", augment="flip"))


def test_the_default_augmentation_is_random_crops_alone_and_none_with_cached_teachers(two_caches, tmp_path):
    """--augment auto: a single-view cache's run is not refused by the default; explicit augmentation still is."""
    assert DistillConfig().augment == "auto"
    assert DistillConfig().resolved().augment == "pad-crop-flip"
    assert DistillConfig(teachers=["resnet18"]).resolved().augment == "none"
    assert DistillConfig(augment="flip").resolved().augment == "flip"  # what a user gives is kept
    assert setup(run_cfg(two_caches, tmp_path, augment="auto")).config.augment == "none"
    assert setup(run_cfg(two_caches, tmp_path, augment="auto", teachers=[], method="ce")).config.augment == \
        "pad-crop-flip"
    with pytest.raises(ConfigError, match="--allow-inconsistent"):
        setup(run_cfg(two_caches, tmp_path, augment="pad-crop-flip"))
    with pytest.raises(ConfigError, match="--augment 'rotate': choose one of auto, none, flip, pad-crop-flip"):
        distill(run_cfg(two_caches, tmp_path, augment="rotate"))


def _recipe_of(c: DistillConfig) -> tuple:
    return c.epochs, c.optimizer, c.lr, c.weight_decay, c.warmup_epochs, c.zero_init_residual


def test_options_left_unset_are_the_students_recipe_alone_and_the_papers_with_teachers(monkeypatch):
    from dataclasses import astuple, replace

    from featcache.config.distill import DEFAULT_EPOCHS
    from featcache.models import registry
    from featcache.models.registry import PAPERS_RECIPE, AloneRecipe, get_entry

    def as_recipe(r: AloneRecipe) -> tuple:
        return r.epochs, r.optimizer, r.lr, r.weight_decay, r.warmup_epochs, r.zero_init_residual

    assert _recipe_of(DistillConfig()) == (None, "auto", None, None, None, None)
    papers = (DEFAULT_EPOCHS, "adam", 1e-3, 0.0, 0, False)
    assert as_recipe(PAPERS_RECIPE) == papers
    from featcache.config.distill import RECIPE_DEFAULTS

    assert all(RECIPE_DEFAULTS[k] == getattr(PAPERS_RECIPE, k) for k in RECIPE_DEFAULTS if k != "augment")  # one truth
    assert _recipe_of(DistillConfig(student="convnet_small").resolved()) == papers
    mine = get_entry("student", "mobilenetv3").alone
    assert mine != PAPERS_RECIPE and len(astuple(mine)) == 7
    assert _recipe_of(DistillConfig(student="mobilenetv3").resolved()) == as_recipe(mine)
    assert _recipe_of(DistillConfig(student="mobilenetv3", teachers=["resnet18"]).resolved()) == papers
    given = dict(epochs=3, optimizer="sgd", lr=0.5, weight_decay=0.0, warmup_epochs=0, zero_init_residual=False)
    assert _recipe_of(DistillConfig(student="mobilenetv3", **given).resolved()) == tuple(given.values())
    assert DistillConfig(student="mobilenetv3", lr=0.5).resolved().optimizer == mine.optimizer  # field by field
    entry = get_entry("student", "lenet5")
    monkeypatch.setitem(registry._REGISTRY, ("student", entry.name), replace(entry, alone=AloneRecipe(epochs=12)))
    assert DistillConfig(student="lenet5").resolved().epochs == 12
    assert _recipe_of(DistillConfig(student="python:Mine").resolved()) == papers  # an nn.Module given in Python


def test_warmup_raises_the_rate_over_the_first_epochs_and_leaves_the_schedule_alone(tmp_path):
    import json

    base = dict(student="lenet5", dataset="synthetic", dataset_options={**SYN, "num_train": 64}, batch_size=16,
                workers=0, bn_recalibrate=0, optimizer="adam", lr=1e-2, epochs=3, weight_decay=0.0,
                zero_init_residual=False)
    rates = {}
    for w in (0, 1):
        distill(DistillConfig(**base, warmup_epochs=w, run_dir=tmp_path / f"w{w}"))
        rates[w] = [json.loads(line)["lr"] for line in (tmp_path / f"w{w}" / "metrics.jsonl").read_text().splitlines()
                    if '"lr"' in line]
    assert rates[0] == rates[1] and len(rates[1]) == 3  # after each epoch: the cosine schedule's own rates
    from featcache.distill.optim import Warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    w = Warmup([opt, None], epochs=2, steps_per_epoch=4)
    seen = []
    for epoch in range(3):
        for step in range(4):
            w.step(epoch, step)
            seen.append(opt.param_groups[0]["lr"])
        w.end_epoch()
        assert opt.param_groups[0]["lr"] == 0.4
    assert seen == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4] + [0.4] * 4)


def test_a_run_records_its_resolved_defaults(tmp_path):
    """config.json holds what the run did (pad-crop-flip, the student's epochs), not 'auto'."""
    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options={**SYN, "num_train": 16}, batch_size=16,
                        workers=0, run_dir=tmp_path / "run", bn_recalibrate=0)
    assert distill(cfg).epochs == 30
    recorded = json.loads((tmp_path / "run" / CONFIG).read_text())["config"]
    assert (recorded["augment"], recorded["epochs"]) == ("pad-crop-flip", 30)
    assert (recorded["optimizer"], recorded["lr"], recorded["weight_decay"], recorded["warmup_epochs"],
            recorded["zero_init_residual"]) == ("adam", 1e-3, 0.0, 0, False)


@pytest.mark.slow
def test_missing_and_ambiguous_teacher_caches(two_caches, tmp_path):
    with pytest.raises(CacheError, match="featcache extract --teacher alexnet --dataset synthetic"):
        setup(run_cfg(two_caches, tmp_path, teachers=["alexnet"]))
    other = run_cfg(two_caches, tmp_path, dataset_options={"num_train": 65, "num_test": 32})
    with pytest.raises(CacheError, match="exist for other data"):
        setup(other)
    extract(extract_cfg(two_caches, image_size=36))
    try:
        with pytest.raises(CacheError, match="ambiguous"):
            setup(run_cfg(two_caches, tmp_path))
        key = next(e.key for e in __import__("featcache").cache.CacheStore(two_caches).entries()
                   if e.manifest.transform.image_size == 36)
        s = setup(run_cfg(two_caches, tmp_path, teachers=[f"resnet18:{key}"]))
        assert s.transform.image_size == 36
        with pytest.raises(CacheError, match="not 'alexnet'"):
            setup(run_cfg(two_caches, tmp_path, teachers=[f"alexnet:{key}"]))
        # Teachers that saw different views cannot share one student input.
        mixed = run_cfg(two_caches, tmp_path, method="multi", teachers=[f"resnet18:{key}", "mobilenet_v3_small"])
        with pytest.raises(ConfigError, match="different transforms"):
            setup(mixed)
    finally:
        from featcache.cache import CacheStore

        CacheStore(two_caches).remove(key)


def test_kd_needs_logits_over_the_dataset_classes(tmp_path):
    extract(extract_cfg(tmp_path, num_classes=7))
    with pytest.raises(ConfigError, match="--method kd needs teacher logits"):
        setup(run_cfg(tmp_path, tmp_path, method="kd"))


def test_flag_errors(two_caches, tmp_path):
    with pytest.raises(ConfigError, match="--optimizer"):
        distill(run_cfg(two_caches, tmp_path, optimizer="lion"))
    with pytest.raises(ConfigError, match="--epochs"):
        distill(run_cfg(two_caches, tmp_path, epochs=0))
    with pytest.raises(ConfigError, match="drop --teacher"):
        setup(run_cfg(two_caches, tmp_path, method="ce"))
    with pytest.raises(ConfigError, match="--image-size 40 differs"):
        setup(run_cfg(two_caches, tmp_path, image_size=40))
    with pytest.raises(ConfigError, match="--feature-dim"):
        setup(run_cfg(two_caches, tmp_path, feature_dim=64))


def test_cli_distill_errors_are_one_line(two_caches, tmp_path):
    r = CliRunner().invoke(app, ["distill", "--teacher", "alexnet", "--dataset", "synthetic", "-o", "num_train=64",
                                 "-o", "num_test=32", "--cache-dir", str(two_caches), "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.slow
def test_resident_and_compiled_runs(two_caches, tmp_path, monkeypatch, no_teachers):
    """--resident trains from device-resident tensors; --compile wraps the loss in torch.compile (eager backend here:
    the compiler itself is torch's, exercised on GPUs)."""
    monkeypatch.setenv("FEATCACHE_COMPILE_BACKEND", "eager")
    host = distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "host", shuffle="full", epochs=2, resident=False))
    resident = distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "res", resident=True, epochs=2))
    assert resident.last_acc == host.last_acc  # same batches, same student: the same run
    # Unset, --resident is chosen on the CPU (the split fits) and the choice is recorded; streaming flags keep
    # streaming.
    auto = distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "auto", epochs=2))
    assert auto.last_acc == host.last_acc
    assert json.loads((tmp_path / "auto" / CONFIG).read_text())["loader"].startswith("resident")
    streamed = distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "w1", epochs=1, workers=1))
    assert json.loads((tmp_path / "w1" / CONFIG).read_text())["loader"].startswith("shuffle")
    assert streamed.epochs == 1
    compiled = distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "c", compile="default", method="multi",
                               teachers=["resnet18", "mobilenet_v3_small"]))
    assert compiled.epochs == 1
    info = json.loads((tmp_path / "res" / CONFIG).read_text())
    assert info["config"]["resident"] is True and [t["mode"] for t in info["teachers"]] == ["resident"]
    with pytest.raises(ConfigError, match="--compile"):
        distill(run_cfg(two_caches, tmp_path, run_dir=tmp_path / "x", compile="fast"))


@pytest.mark.slow
def test_online_teacher_arm_matches_the_cached_one(tmp_path):
    """--online runs the cache's teacher on every batch (the losslessness check's other arm): float32 rows of the same
    teacher on the same images, so the run ends where the cached run ends, and it records its peak memory."""
    cache_dir = tmp_path / "store32"
    ext = ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic", dataset_options=dict(SYN),
                        image_size=32, batch_size=16, workers=0, cache_dir=cache_dir, dtype="float32")
    key = extract(ext).key
    cached = distill(run_cfg(cache_dir, tmp_path, run_dir=tmp_path / "cached", teachers=[key], epochs=2))
    online = distill(run_cfg(cache_dir, tmp_path, run_dir=tmp_path / "online", teachers=[key], epochs=2, online=True))
    assert online.online and not cached.online and online.peak_rss_bytes > 0
    assert abs(online.last_acc - cached.last_acc) <= 0.1, (online.last_acc, cached.last_acc)
    summary = json.loads((tmp_path / "online" / "summary.json").read_text())
    assert summary["online"] is True and summary["peak_rss_bytes"] == online.peak_rss_bytes
    # The record names the teachers it ran, so --resume (which compares them) and the report see what it was.
    info = json.loads((tmp_path / "online" / "config.json").read_text())
    assert [(t["key"], t["mode"]) for t in info["teachers"]] == [(key, "online")]
    again = distill(run_cfg(cache_dir, tmp_path, run_dir=tmp_path / "online", teachers=[key], epochs=2, online=True,
                            resume=True))
    assert again.last_acc == online.last_acc  # finished: nothing retrained, nothing refused
    with pytest.raises(ConfigError, match="--online"):
        distill(run_cfg(cache_dir, tmp_path, run_dir=tmp_path / "x", teachers=[key], online=True, noise_per_batch=2))


def test_cpu_threads_follow_the_workers_and_the_environment(monkeypatch):
    from featcache.util.runtime import cpu_cores, default_workers, use_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("FEATCACHE_THREADS", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert use_cpu_threads(torch.device("cpu"), 0) == cpu_cores()
        assert use_cpu_threads(torch.device("cpu"), cpu_cores()) == 1  # never zero threads
        monkeypatch.setenv("FEATCACHE_THREADS", "1")
        assert use_cpu_threads(torch.device("cpu"), 0) == 1
        monkeypatch.setenv("FEATCACHE_THREADS", "two")
        with pytest.raises(ConfigError, match="FEATCACHE_THREADS"):
            use_cpu_threads(torch.device("cpu"), 0)
        # Workers: none on small CPU boxes, min(8, cores) when a GPU computes.
        assert default_workers("cpu") == (0 if cpu_cores() < 4 else min(8, cpu_cores() // 4))
        assert default_workers() == min(8, cpu_cores())
    finally:
        torch.set_num_threads(before)


# -- 4. NaN never ends with exit 0 -----------------------------------------------------------------------------------
def _poison_row(directory: Path, row: int) -> None:
    """Write NaN into one cached feature row and re-record the shard's checksum, as a bug or a hand edit would."""
    import h5py

    from featcache.util.hashing import file_sha256

    m = Manifest.load(directory)
    shard = next(s for s in m.shards if s.part == "data" and s.start <= row < s.stop)
    with h5py.File(directory / shard.file, "r+") as f:
        f["features"][row - shard.start, 3] = np.nan
    shard.bytes, shard.sha256 = (directory / shard.file).stat().st_size, file_sha256(directory / shard.file)
    m.save(directory)


def test_nan_in_a_cached_row_stops_the_run(home, folder_tree, tmp_path):
    key = folder_extract_key("--data-root", folder_tree / "train")
    _poison_row(home / key, 9)
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--method", "ts",
               "--run-dir", tmp_path / "run")
    one_line_error(r, "NaN or inf", key, "row 9")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "checkpoint-last.pt").exists()


@pytest.mark.parametrize("flags, needle", [
    (("--temperature", "0"), "--temperature"),
    (("--temperature", "nan"), "--temperature"),
    (("--lambda-mse", "-1"), "--lambda-mse"),
    (("--lr", "0"), "--lr"),
    (("--momentum", "1.5"), "--momentum"),
    (("--image-size", "0"), "--image-size"),
    (("--content-check", "some"), "--content-check"),
])
def test_method_and_optimiser_flags_are_validated(home, folder_tree, tmp_path, flags, needle):
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--method", "ce", *flags,
               "--run-dir", tmp_path / "run")
    one_line_error(r, needle)
    assert not (tmp_path / "run").exists()  # a refused run leaves no directory behind


def test_diverging_loss_is_an_error_not_a_summary(home, folder_tree, tmp_path):
    key = folder_extract_key("--data-root", folder_tree / "train")
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--method", "ts",
               "--lr", "1e30", "--lambda-mse", "1e30", "--run-dir", tmp_path / "run")
    one_line_error(r, "NaN or inf")
    assert not (tmp_path / "run" / "summary.json").exists()
