"""--bn-recalibrate: batch-norm statistics re-estimated over a fixed sample of training images before each
evaluation (precise BN), saved with the checkpoint; training itself unchanged."""

import json

import pytest
import torch

from featcache.config import DistillConfig
from featcache.datasets import get_dataset
from featcache.distill.evaluation import evaluate_run, load_run
from featcache.distill.trainer import LAST, METRICS, distill
from featcache.errors import ConfigError
from featcache.transforms import Normalizer
from featcache.util.progress import Reporter

SYN = {"num_train": 48, "num_test": 24}


def _cfg(tmp_path, name, **kw):
    base = dict(student="convnet_small", dataset="synthetic", dataset_options=dict(SYN), method="ce", epochs=2,
                batch_size=48, workers=0, cache_dir=tmp_path / "store", run_dir=tmp_path / name, image_size=32)
    return DistillConfig(**{**base, **kw})


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]


def _first_bn_input_mean(student, transform):
    """The first batch norm's input over the whole training split, averaged per channel (computed here, apart from
    featcache's recalibration)."""
    train = get_dataset("synthetic", split="train", **SYN)
    images = torch.stack([train.read_image(i) for i in range(len(train))])
    x = Normalizer(transform, torch.device("cpu"))(images, channels_last=False)
    conv = next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        return conv(x).mean(dim=(0, 2, 3))


def test_statistics_are_the_training_sample_average_and_training_is_unchanged(tmp_path):
    off = distill(_cfg(tmp_path, "off", bn_recalibrate=0))
    on = distill(_cfg(tmp_path, "on", bn_recalibrate=10_000))  # more than the split: all 48 images, one batch
    # Train mode never reads the running statistics: every training number is the same bits.
    for a, b in zip(_metrics(tmp_path / "off"), _metrics(tmp_path / "on"), strict=True):
        assert a["train_loss"] == b["train_loss"] and a["train_acc"] == b["train_acc"]
    student, _, transform, *_ = load_run(tmp_path / "on", checkpoint="last", device="cpu")
    bn = next(m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(bn.running_mean, _first_bn_input_mean(student, transform), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1  # restored after the cumulative average
    off_student, *_ = load_run(tmp_path / "off", checkpoint="last", device="cpu")
    off_bn = next(m for m in off_student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(off_bn.running_mean, bn.running_mean)  # the running averages lag: not the same
    # The statistics are in the checkpoint: featcache eval gives the accuracy the run printed.
    assert evaluate_run(tmp_path / "on", checkpoint="last", device="cpu", workers=0).acc == on.last_acc
    assert off.last_acc >= 0


class StopAfterFirstEpoch(Reporter):
    def message(self, text: str) -> None:
        if text.startswith("epoch 1/"):
            raise KeyboardInterrupt


def test_the_sample_is_fixed_so_a_resumed_run_ends_identical(tmp_path):
    whole = distill(_cfg(tmp_path, "whole", bn_recalibrate=24, batch_size=16))
    with pytest.raises(KeyboardInterrupt):
        distill(_cfg(tmp_path, "part", bn_recalibrate=24, batch_size=16), reporter=StopAfterFirstEpoch())
    resumed = distill(_cfg(tmp_path, "part", bn_recalibrate=24, batch_size=16, resume=True))
    assert resumed.last_acc == whole.last_acc
    a = torch.load(tmp_path / "whole" / LAST, weights_only=True)["student"]
    b = torch.load(tmp_path / "part" / LAST, weights_only=True)["student"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_runs_recorded_before_the_flag_read_as_not_recalibrated(tmp_path):
    recorded = {k: v for k, v in _cfg(tmp_path, "old").to_dict().items() if k != "bn_recalibrate"}
    assert DistillConfig.from_dict(json.loads(json.dumps(recorded, default=str))).bn_recalibrate == 0
    with pytest.raises(ConfigError, match="--bn-recalibrate"):
        distill(_cfg(tmp_path, "neg", bn_recalibrate=-1))
    with pytest.raises(ConfigError, match="at most 65,536 images"):
        distill(_cfg(tmp_path, "huge", bn_recalibrate=10**9))


def test_a_run_recorded_before_bn_recalibrate_is_the_same_arm_in_the_report(tmp_path, monkeypatch):
    """The seed-0 nets of an amalgamation recorded before --bn-recalibrate existed stood in a row of their own, next
    to seeds 1-2 run later with bn_recalibrate = 0: the report must group them (mean ± std over the three)."""
    from featcache.config import DistillConfig
    from featcache.distill.trainer import distill
    from featcache.runs.report import build_rows, load_record

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"s{seed}"
        distill(DistillConfig(student="lenet5", dataset="synthetic", epochs=1, batch_size=16, seed=seed, workers=0,
                              bn_recalibrate=0, run_dir=run,
                              dataset_options={"num_train": 32, "num_test": 16, "num_classes": 4}))
        runs.append(run)
    record = json.loads((runs[0] / "config.json").read_text())
    del record["config"]["bn_recalibrate"]  # as featcache wrote it before the flag
    (runs[0] / "config.json").write_text(json.dumps(record))
    rows = build_rows([load_record(r) for r in runs])
    assert len(rows) == 1 and rows[0].cells()["seeds"] == "2"
    record["config"]["bn_recalibrate"] = 1024  # a run that did recalibrate is another arm
    (runs[0] / "config.json").write_text(json.dumps(record))
    assert len(build_rows([load_record(r) for r in runs])) == 2


def test_the_sample_comes_from_the_resident_split_without_decoding_it_again(monkeypatch):
    from featcache.distill.bn import calibration_images
    from featcache.transforms import Geometry, default_transform

    train = get_dataset("synthetic", split="train", **SYN)
    spec = default_transform(32)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh = calibration_images(student, train, spec, 20, seed=3, workers=0, device=torch.device("cpu"))
    whole = torch.stack([Geometry(spec)(train.read_image(i)) for i in range(len(train))])
    monkeypatch.setattr(type(train), "read_image", lambda *a: pytest.fail("decoded a second time"))
    taken = calibration_images(student, train, spec, 20, seed=3, workers=0, device=torch.device("cpu"),
                               decoded=whole)
    assert taken is not None and fresh is not None and len(taken) == 20 and torch.equal(taken, fresh)
