"""A run says what it will do before its first step, and its progress bar gives the run's ETA."""

import json
import logging
from types import SimpleNamespace

import pytest

from featcache.distill.trainer import DistillConfig, distill
from featcache.extract import ExtractConfig, extract
from featcache.util.progress import Reporter, RunEtaColumn

SYN = {"num_train": 48, "num_test": 16}


class Messages(Reporter):
    def __init__(self):
        self.lines, self.starts = [], []

    def message(self, text):
        self.lines.append(text)

    def start(self, total, description, unit="img", run=None):
        self.starts.append((description, run))


def _run(tmp_path, **kw):
    reporter = Messages()
    kw.setdefault("run_dir", tmp_path / "run")
    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), epochs=2, batch_size=16,
                        workers=0, **kw)
    distill(cfg, reporter)
    return reporter


def test_a_run_without_teacher_says_so_and_what_it_trains(tmp_path):
    r = _run(tmp_path)
    block = "\n".join(r.lines)
    assert f"run       {tmp_path / 'run'}" in block
    assert "synthetic: 48 train images, all labelled; 16 test images" in block
    # the whole view, not only its size
    assert "; 32 px: whole image resized to 32x32 (bilinear; none if already 32x32), no crop, ImageNet mean/std" \
        in block
    assert "student   lenet5" in block and "method    ce" in block and "2 epochs × batch 16" in block
    assert "warning: no teacher: the student trains alone" in block
    assert "warning: the test split holds 16 images: one image is 6.25 points" in block
    # the epoch bars carry the run's remaining epochs, paced by the epochs done (none yet in the first)
    assert [run for _, run in r.starts] == [(1, None), (0, r.starts[1][1][1])] and r.starts[1][1][1] > 0


def test_a_library_run_without_a_reporter_sends_its_lines_and_warnings_to_logging(tmp_path, caplog):
    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), epochs=1, batch_size=16,
                        workers=0, run_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="featcache"):
        distill(cfg)
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("featcache.distill.loop", logging.INFO, f"run       {tmp_path / 'run'}") in got
    assert any(r[:2] == ("featcache.distill.loop", logging.WARNING) and r[2].startswith("no teacher: the student")
               for r in got)  # a warning's level says it: its "warning: " prefix is the terminal's
    assert all(r.pathname.endswith("loop.py") for r in caplog.records if r.name == "featcache.distill.loop")


def test_a_run_without_teacher_names_the_stores_caches_and_the_command_to_use_one(syn_cache, tmp_path):
    block = "\n".join(_run(tmp_path).lines)
    (line,) = [ln for ln in block.splitlines() if ln.startswith("warning: no teacher")]
    assert f"the stores hold convnet on synthetic ({syn_cache.name})" in line
    assert line.endswith(f"`featcache distill --student lenet5 --teacher convnet:{syn_cache.name}`")


def test_a_run_names_its_teachers_caches_and_labels(tmp_path):
    store = tmp_path / "store"
    key = extract(ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic", dataset_options=dict(SYN),
                                image_size=32, workers=0, cache_dir=store)).key
    r = _run(tmp_path, teachers=["resnet18"], method="kd", cache_dir=store, labels="2/class")
    block = "\n".join(r.lines)
    assert f"method    kd; teachers {key} ({store})" in block and "no teacher" not in block
    assert "48 train images: 20 labelled (2/class), 28 unlabelled" in block
    assert "--allow-inconsistent" not in block
    r = _run(tmp_path, teachers=["resnet18"], method="kd", cache_dir=store, augment="pad-crop-flip",
             allow_inconsistent=True, run_dir=tmp_path / "augmented")
    block = "\n".join(r.lines)
    assert "warning: --allow-inconsistent: --augment pad-crop-flip changes the student's images" in block


def test_the_run_eta_column_adds_the_epochs_still_to_come():
    col = RunEtaColumn()

    def task(run, elapsed, remaining):  # the attributes of a rich Task the column reads
        return SimpleNamespace(fields={"run": run} if run else {}, elapsed=elapsed, time_remaining=remaining)

    assert col.render(task(None, 5.0, 5.0)).plain == ""  # a bar that is not an epoch of a run
    assert col.render(task((2, 60.0), 1.0, None)).plain == ""  # no pace yet
    assert col.render(task((2, 60.0), 50.0, 10.0)).plain == "run ETA 0:02:10"  # 10 s + 2 epochs of 60 s
    assert col.render(task((3, None), 30.0, 30.0)).plain == "run ETA 0:03:30"  # first epoch: 30 s + 3 x its 60 s


def test_a_student_far_larger_than_its_training_images_is_warned_about(tmp_path):
    from featcache.distill.preflight import preflight_warnings
    from featcache.distill.trainer import setup

    def warnings(student, augment="none", **options):
        cfg = DistillConfig(student=student, dataset="synthetic", dataset_options={**SYN, **options}, workers=0,
                            run_dir=tmp_path / "run", image_size=32, augment=augment)
        return [w for w in preflight_warnings(setup(cfg)) if "by heart" in w]

    (big,) = warnings("mobilenetv3_small")
    assert big.startswith("mobilenetv3_small has 1.") and "for 48 training images" in big
    assert warnings("mobilenetv3_small", augment="flip") == warnings("mobilenetv3_small")  # a flip is no remedy
    assert warnings("convnet_small", num_train=2000) == []  # the default first run: ~50 parameters per image


def test_a_large_student_alone_is_not_warned_about_memorising_under_its_default_random_crops(tmp_path):
    """Alone, --augment auto is pad-crop-flip, under which mobilenetv3 trains and tests alike on 2,000 images."""
    from featcache.distill.preflight import preflight_warnings
    from featcache.distill.trainer import setup

    cfg = DistillConfig(student="mobilenetv3_small", dataset="synthetic", dataset_options=dict(SYN), workers=0,
                        run_dir=tmp_path / "run")
    s = setup(cfg)
    assert s.config.augment == "pad-crop-flip"
    assert not [w for w in preflight_warnings(s) if "by heart" in w]


@pytest.mark.slow
def test_the_default_first_run_learns_the_synthetic_set(tmp_path):
    """`featcache distill` with no flag (3 epochs here, 30 by default: about 50 s on 2 idle cores): the default
    student learns the shapes in eval mode, where mobilenetv3 sat at exactly 10 % (issue 27)."""
    from typer.testing import CliRunner

    from featcache.cli import app

    result = CliRunner().invoke(app, ["distill", "--epochs", "3", "--run-dir", str(tmp_path / "run"),
                                      "--cache-dir", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["student"] == "convnet_small"
    assert summary["best_acc"] >= 0.15  # chance is 0.10 on 500 test images (10 classes); 3 epochs reach ~0.19
