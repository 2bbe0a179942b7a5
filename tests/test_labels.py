"""Labels for a subset (issue 24): a run reads the labels it is told to, the others train through the teacher terms.

The strongest check is the first: every batch's labels are recorded where the method receives them, and no sample
outside the labelled subset ever arrives with its label.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featcache.cli import app
from featcache.config import DistillConfig, ExtractConfig
from featcache.distill import labels as L
from featcache.errors import ConfigError
from helpers import one_line_error

SYN = {"num_train": 60, "num_test": 20, "num_classes": 4}
runner = CliRunner()


@pytest.fixture(scope="module")
def _cached_store(tmp_path_factory) -> tuple[Path, str]:
    from featcache.extract import extract

    root = tmp_path_factory.mktemp("labels_store")
    key = extract(ExtractConfig(teacher="convnet", weights="random", dataset="synthetic", dataset_options=dict(SYN),
                                image_size=32, workers=0, noise=8, cache_dir=root)).key
    return root, key


@pytest.fixture()
def key(home, _cached_store) -> str:
    """The key of a convnet cache of SYN (with 8 noise rows) in the personal store: a copy of one made per module."""
    root, key = _cached_store
    shutil.copytree(root, home)
    return key


def run(tmp_path, key, monkeypatch, **kw):
    """A distill run recording, per batch, the labels the method received and the samples they belong to."""
    from featcache.distill import engine
    from featcache.distill.trainer import distill

    seen = []
    real = engine.TrainingParts.run_step

    def spy(self, batch, epoch):
        seen.append((batch.index.cpu().numpy().copy(), batch.labels.cpu().numpy().copy(), batch.num_noise))
        return real(self, batch, epoch)

    monkeypatch.setattr(engine.TrainingParts, "run_step", spy)
    cfg = DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), device="cpu", workers=0,
                        batch_size=16, epochs=2, run_dir=tmp_path / f"run-{len(list(tmp_path.iterdir()))}",
                        teachers=[key] if key else [], **kw)
    summary = distill(cfg)
    return summary, seen


@pytest.mark.parametrize("method, extra", [("ts", {}), ("kd", {}), ("ts-translator", {}), ("ts", {"resident": True}),
                                           ("ts", {"labeled_share": 0.25}), ("kd", {"noise_per_batch": 2})])
def test_no_hidden_label_reaches_the_loss(tmp_path, key, monkeypatch, method, extra):
    from featcache.datasets import get_dataset

    targets = get_dataset("synthetic", None, "train", **SYN).targets
    mask = L.select("3/class", targets, [str(i) for i in range(len(targets))], 4).mask
    summary, seen = run(tmp_path, key, monkeypatch, method=method, labels="3/class", **extra)
    visited = set()
    for index, labels, num_noise in seen:
        n = len(index) - num_noise
        idx, lab = index[:n], labels[:n]
        assert np.array_equal(lab[~mask[idx]], np.full((~mask[idx]).sum(), -1)), "a hidden label reached the loss"
        assert np.array_equal(lab[mask[idx]], targets[idx[mask[idx]]])  # the labelled ones are the real labels
        visited |= set(idx.tolist())
        if extra.get("labeled_share"):
            assert mask[idx].sum() == round(0.25 * 16) or n < 16
        if num_noise:
            assert (labels[n:] >= 0).all()  # noise images keep the teacher's label
    assert visited == set(range(len(targets)))  # the unlabelled pool is trained on
    info = json.loads((summary.run_dir / "config.json").read_text())
    assert info["labels"]["labeled"] == 12 and info["labels"]["total"] == 60


def test_ce_with_a_label_subset_trains_on_the_labelled_samples_only(tmp_path, home, monkeypatch):
    summary, seen = run(tmp_path, None, monkeypatch, method="ce", labels="0.25")
    n = sum(len(i) for i, _, _ in seen)
    assert n == 2 * 16 and all((lab >= 0).all() for _, lab, _ in seen)  # 15 of 60 per class share → 4 per class


def test_label_specs(tmp_path):
    targets = np.array([0, 1, 0, 1, 2, 0, 2, 1, 0])
    ids = [f"s{i}" for i in range(len(targets))]
    assert np.flatnonzero(L.select("2/class", targets, ids, 3).mask).tolist() == [0, 1, 2, 3, 4, 6]
    assert L.select("0.5", targets, ids, 3).count == 2 + 2 + 1  # ceil per class: 4→2, 3→2, 2→1
    f = tmp_path / "ids.txt"
    f.write_text("s8\ns1\n\n")
    assert np.flatnonzero(L.select(f"ids:{f}", targets, ids, 3).mask).tolist() == [1, 8]
    f.write_text("s8\nnope\n")
    with pytest.raises(ConfigError, match="not samples of the training split"):
        L.select(f"ids:{f}", targets, ids, 3)
    for bad in ("half", "0", "1", "1.5", "nan", "0/class", "-3/class"):
        with pytest.raises(ConfigError, match="--labels"):
            L.check_spec(bad)
    with pytest.raises(ConfigError, match="--labeled-share"):
        L.check_spec("all", 1.0)
    # N/class is CIFAR's train_per_class subset: the labelled images are the ones a run without the pool trains on.
    from featcache.datasets.cifar import first_per_class

    assert np.flatnonzero(L.select("2/class", targets, ids, 3).mask).tolist() == first_per_class(targets, 2).tolist()


def test_labeled_share_batches():
    mask = np.zeros(100, dtype=bool)
    mask[:10] = True
    order = np.random.default_rng(0).permutation(100)
    batches = L.epoch_batches(order, 10, False, L.Sampling(mask, 0.3), np.random.default_rng(1))
    assert all(mask[b].sum() == 3 for b in batches)
    unlabelled = np.concatenate([b[~mask[b]] for b in batches])
    assert sorted(unlabelled.tolist()) == list(range(10, 100))  # each unlabelled sample once per epoch


def test_xent_ignores_hidden_labels():
    from featcache.losses import xent

    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([2, -1, 0, -1])
    full = torch.nn.functional.cross_entropy(logits[[0, 2]], y[[0, 2]])
    assert torch.allclose(xent(logits, y), full)
    none = xent(logits, torch.full((4,), -1))
    none.backward()
    assert none.item() == 0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_labels_are_checked_like_flags(tmp_path, home, key):
    from featcache.pipeline import parse_pipeline

    base = ("distill", "--student", "lenet5", "--dataset", "synthetic", "-o", "num_train=60", "-o", "num_test=20",
            "-o", "num_classes=4", "--device", "cpu", "--workers", "0", "--epochs", "1", "--run-dir",
            str(tmp_path / "r"))
    for flags, needle in ((("--labels", "half"), "--labels 'half'"), (("--labels", "1.5"), "strictly between"),
                          (("--labels", "3/class", "--unlabeled"), "give one"),
                          (("--labeled-share", "0.5"), "--labels a subset"),
                          (("--labels", "3/class", "--method", "aka", "--teacher", key), "reads no label")):
        one_line_error(runner.invoke(app, [*base, *flags]), needle)
    data = {"dataset": {"name": "synthetic"}, "distill": [{"students": ["lenet5"], "methods": ["ce"],
                                                             "options": {"labels": 300}}]}
    with pytest.raises(ConfigError, match="options.labels: expected a string"):
        parse_pipeline(data)
    data["distill"][0]["options"] = {"labels": "many"}
    with pytest.raises(ConfigError, match="options.labels"):
        parse_pipeline(data)


def test_report_shows_the_labels_column_only_when_a_run_read_a_subset(tmp_path, home, monkeypatch):
    from featcache.runs.report import build_rows, load_record, markdown_table

    full, _ = run(tmp_path, None, monkeypatch, method="ce")
    part, _ = run(tmp_path, None, monkeypatch, method="ce", labels="5/class")
    assert "labels" not in markdown_table(build_rows([load_record(full.run_dir)])).splitlines()[0]
    table = markdown_table(build_rows([load_record(full.run_dir), load_record(part.run_dir)]))
    assert "| labels |" in table and "| 20 of 60 |" in table and "| all |" in table


def _ids(path: Path, numbers) -> Path:
    path.write_text("".join(f"synthetic/train/{i:06d}\n" for i in numbers))
    return path


def test_an_ids_file_that_is_not_utf8_text_or_not_a_file_is_one_line(tmp_path, home):
    bad = tmp_path / "ids.txt"
    bad.write_bytes(b"synthetic/train/000001\n\xff\xfe\n")
    r = runner.invoke(app, ["distill", "--student", "lenet5", "--dataset", "synthetic", "-o", "num_train=60", "-o",
                            "num_test=20", "-o", "num_classes=4", "--device", "cpu", "--workers", "0", "--epochs", "1",
                            "--method", "ce", "--labels", f"ids:{bad}", "--run-dir", str(tmp_path / "r")])
    one_line_error(r, f"--labels ids:{bad}", "not UTF-8")
    import os

    os.mkfifo(tmp_path / "fifo")  # reading one would block the run until someone writes to it
    for path in (tmp_path, tmp_path / "fifo"):
        with pytest.raises(ConfigError, match="not a regular file"):
            L.select(f"ids:{path}", np.zeros(3, dtype=np.int64), ["a", "b", "c"], 1)


def test_resume_refuses_an_ids_file_edited_mid_run(tmp_path, home):
    """config.json records the ids file's sha256; --resume compares it (an edit, even one that keeps the samples, is
    refused naming the file) and, for a run recorded without it, which samples are labelled. The same contents under
    another path resume."""
    from featcache.distill.trainer import distill
    from featcache.util.progress import Reporter

    class StopAfterFirstEpoch(Reporter):
        def message(self, text: str) -> None:
            if text.startswith("epoch 1/"):
                raise KeyboardInterrupt

    ids = _ids(tmp_path / "ids.txt", range(0, 60, 3))
    run_dir = tmp_path / "run"

    def cfg(spec, **kw):
        return DistillConfig(student="lenet5", dataset="synthetic", dataset_options=dict(SYN), device="cpu", workers=0,
                             batch_size=16, epochs=2, method="ce", labels=spec, run_dir=run_dir, **kw)

    with pytest.raises(KeyboardInterrupt):
        distill(cfg(f"ids:{ids}"), reporter=StopAfterFirstEpoch())
    import hashlib

    record = json.loads((run_dir / "config.json").read_text())
    assert record["labels"]["file_sha256"] == hashlib.sha256(ids.read_bytes()).hexdigest()
    _ids(ids, range(0, 60, 2))  # other samples
    with pytest.raises(ConfigError, match=f"the ids file {ids} .--labels. changed since"):
        distill(cfg(f"ids:{ids}", resume=True))
    _ids(ids, reversed(range(0, 60, 3)))  # the same samples, another file
    with pytest.raises(ConfigError, match="changed since"):
        distill(cfg(f"ids:{ids}", resume=True))
    del record["labels"]["file_sha256"]  # as a run recorded before the file's hash was
    (run_dir / "config.json").write_text(json.dumps(record))
    _ids(ids, range(0, 60, 2))
    with pytest.raises(ConfigError, match=f"the ids file {ids} now lists other samples"):
        distill(cfg(f"ids:{ids}", resume=True))
    moved = _ids(tmp_path / "moved.txt", range(0, 60, 3))  # the run's contents under another path
    assert distill(cfg(f"ids:{moved}", resume=True)).epochs == 2
