"""Adaptive knowledge amalgamation: class-subset teachers, selective learning, the FA regulariser, no labels."""

import json

import pytest
import torch
from typer.testing import CliRunner

from featcache.cache import FeatureCache
from featcache.cli import app
from featcache.datasets import get_dataset
from featcache.datasets.base import ClassSubset, split_classes
from featcache.distill.methods import MethodParams, TeacherRows
from featcache.distill.methods.aka import AdaptiveAmalgamation, AKAFound
from featcache.distill.trainer import DistillConfig, distill, setup
from featcache.errors import ConfigError, DatasetError
from featcache.extract import ExtractConfig, extract
from featcache.losses import aka_regulariser, prediction_entropy, select_teachers
from featcache.models.students import create_student
from featcache.teach import TeacherConfig, train_teacher
from featcache.transforms import Geometry, Normalizer

SYN = {"num_train": 64, "num_test": 32, "num_classes": 4}


def test_entropy_selection_picks_the_most_confident_teacher_per_sample():
    confident = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 0.0]])
    unsure = torch.tensor([[1.0, 1.0, 1.0], [0.0, 8.0, 0.0], [0.0, 0.0, 9.0]])
    assert select_teachers([confident, unsure]).tolist() == [0, 1, 1]
    assert prediction_entropy(torch.zeros(1, 4)).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_selection_routes_each_samples_loss_to_its_selected_teacher():
    torch.manual_seed(0)
    student = create_student("lenet5", num_classes=3, image_size=32).eval()
    params = MethodParams(found=AKAFound([([0, 1, 2], [0, 1, 2]), ([0, 1, 2], [0, 1, 2])]))
    m = AdaptiveAmalgamation(student, [8, 8], 3, params)
    x = torch.randn(2, 3, 32, 32)
    feats = [torch.randn(2, 8), torch.randn(2, 8)]
    sharp, flat = torch.tensor([[20.0, 0, 0], [0.0, 0, 0]]), torch.tensor([[0.0, 0, 0], [0.0, 20, 0]])
    loss, parts, _ = m.loss(student, x, None, TeacherRows(feats, [sharp, flat]), 0)
    # By hand: sample 0 follows teacher 0, sample 1 teacher 1.
    f_s = student.forward_features(x)
    logits = student.forward_head(f_s)
    expected = 0.0
    for n, t in ((0, 0), (1, 1)):
        a_s, a_t = m.fa_student[t](f_s[n]), m.fa_teacher[t](feats[t][n])
        expected += ((a_s - a_t).pow(2).mean() + aka_regulariser(m.fa_student[t].weight)
                     + aka_regulariser(m.fa_teacher[t].weight))
        expected += (logits[n] - [sharp, flat][t][n]).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    assert set(parts) == {"transfer", "reg", "soft"}



def test_aka_loss_is_the_featcache_losses_composition():
    """The method and a user's own loop compute one loss: two tasks, one of them covered by two teachers."""
    from featcache import losses

    torch.manual_seed(0)
    student = create_student("lenet5", num_classes=4, image_size=32).eval()
    columns = [([0, 1], [0, 1]), ([0, 1], [1, 2]), ([2, 3], [0, 1])]
    m = AdaptiveAmalgamation(student, [8, 6, 8], 4, MethodParams(found=AKAFound(columns)))
    with torch.no_grad():
        m.scale_holder.value.copy_(torch.tensor([0.5, 1.5, 2.0]))
    x = torch.randn(3, 3, 32, 32)
    rows = TeacherRows([torch.randn(3, 8).half(), torch.randn(3, 6), torch.randn(3, 8)],
                       [torch.randn(3, 2) * 5, torch.randn(3, 3) * 5, torch.randn(3, 2)])
    loss, parts, _ = m.loss(student, x, None, rows, 0)
    f_s = student.forward_features(x)
    z = student.forward_head(f_s).float()
    t_logits = [rows.logits[0], rows.logits[1][:, 1:], rows.logits[2]]
    transfer = [losses.aka_transfer(m.fa_student[t](f_s), m.fa_teacher[t](rows.features[t].float())) for t in range(3)]
    reg = [losses.aka_regulariser(m.fa_student[t].weight) + losses.aka_regulariser(m.fa_teacher[t].weight)
           for t in range(3)]
    soft = [losses.aka_soft(z[:, columns[t][0]], t_logits[t], m.scale_holder.value[t]) for t in range(3)]
    terms = {}
    assert m.tasks == [[0, 1], [2]]
    assert torch.equal(loss, losses.aka(transfer, reg, soft, t_logits, [[0, 1], [2]], terms=terms))
    assert all(torch.equal(parts[k], terms[k]) for k in ("transfer", "reg", "soft"))

def test_regulariser_keeps_alignment_weights_off_the_zero_solution():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(256, 16), torch.randn(256, 32)

    def fit(with_reg: bool) -> float:
        fa_s, fa_t = torch.nn.Linear(16, 8, bias=False), torch.nn.Linear(32, 8, bias=False)
        opt = torch.optim.Adam([*fa_s.parameters(), *fa_t.parameters()], lr=0.05)
        for _ in range(300):
            loss = (fa_s(f_s) - fa_t(f_t)).pow(2).mean()
            if with_reg:
                loss = loss + aka_regulariser(fa_s.weight) + aka_regulariser(fa_t.weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return fa_s.weight.pow(2).sum(1).mean().item()

    assert fit(False) < 0.05  # the transfer loss alone collapses the aligned features to zero (the trivial solution)
    assert fit(True) > 0.5  # Eq. 4 holds the rows near unit norm against the pull of the transfer loss


def test_class_subsets_and_split():
    ds = get_dataset("synthetic", split="train", **SYN)
    parts = split_classes(ds.classes, 2, seed=0)
    assert sorted(parts[0] + parts[1]) == sorted(ds.classes) and len(parts[0]) == 2
    sub = ClassSubset(ds, parts[1])
    assert len(sub) == 32 and set(sub.targets.tolist()) == {0, 1} and sub.classes == parts[1]
    assert torch.equal(sub[0][0], ds[int(sub.rows[0])][0])
    assert sub.identity()["params"]["class_subset"] == parts[1]
    with pytest.raises(DatasetError, match="not in the dataset"):
        ClassSubset(ds, ["unicorn"])
    with pytest.raises(DatasetError, match="--parts"):
        split_classes(ds.classes, 9)


@pytest.fixture(scope="module")
def part_teachers(tmp_path_factory):
    """Two convnet teachers, one per half of the classes, extracted on the whole (unlabelled) training split."""
    root = tmp_path_factory.mktemp("aka")
    r = CliRunner().invoke(app, ["split-classes", "-o", "num_train=64", "-o", "num_test=32", "-o", "num_classes=4",
                                 "--parts", "2", "--out", str(root)])
    assert r.exit_code == 0, r.output
    keys = []
    for k in (1, 2):
        _, path = train_teacher(TeacherConfig(teacher="convnet", dataset_options=dict(SYN), init="random",
                                              image_size=32, epochs=1, batch_size=32, workers=0,
                                              run_dir=root / f"t{k}", classes=root / f"part{k}.txt"))
        result = extract(ExtractConfig(teacher="convnet", weights=str(path), dataset_options=dict(SYN), image_size=32,
                                       workers=0, cache_dir=root / "store"))
        assert result.manifest.teacher.classes_source == "weights" and result.manifest.teacher.num_classes == 2
        keys.append(result.key)
    return root, keys


@pytest.mark.slow
def test_aka_trains_a_student_without_reading_labels(part_teachers, tmp_path, monkeypatch):
    root, keys = part_teachers

    def cfg(run):
        return DistillConfig(student="lenet5", dataset_options=dict(SYN), teachers=keys, method="aka", epochs=2,
                             batch_size=16, workers=0, cache_dir=root / "store", run_dir=tmp_path / run)

    a = distill(cfg("a"))
    # Scramble every training label the dataset hands out: the run must not change at all.
    from featcache.datasets.base import ImageDataset

    real = ImageDataset.__getitem__

    def scrambled(self, i):
        image, label, index = real(self, i)
        return image, (label * 7 + 3) % 4 if self.split == "train" else label, index

    monkeypatch.setattr(ImageDataset, "__getitem__", scrambled)
    b = distill(cfg("b"))
    assert a.last_acc == b.last_acc
    sa = torch.load(tmp_path / "a" / "checkpoint-last.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoint-last.pt", weights_only=False)
    for k in sa["student"]:
        torch.testing.assert_close(sa["student"][k], sb["student"][k])
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["train_acc"] is None and {"train_transfer", "train_reg", "train_soft"} <= set(records[0])
    # The teacher run of a class subset evaluates on its own classes.
    from featcache.distill.trainer import evaluate_run

    assert evaluate_run(root / "t1", workers=0).n == 16


def test_aka_and_unlabeled_refusals(part_teachers, tmp_path):
    root, keys = part_teachers
    base = dict(student="lenet5", dataset_options=dict(SYN), batch_size=16, workers=0, cache_dir=root / "store",
                run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="--unlabeled"):
        setup(DistillConfig(teachers=keys[:1], method="ts", unlabeled=True, **base))
    store = tmp_path / "s"
    extract(ExtractConfig(teacher="resnet18", weights="random", num_classes=3, dataset_options=dict(SYN),
                          image_size=32, workers=0, cache_dir=store))
    with pytest.raises(ConfigError, match="does not say which"):
        setup(DistillConfig(teachers=["resnet18"], method="aka", **{**base, "cache_dir": store}))


def test_per_part_accuracy_of_teachers_and_student(part_teachers, tmp_path):
    root, keys = part_teachers
    distill(DistillConfig(student="lenet5", dataset_options=dict(SYN), teachers=keys, method="aka", epochs=1,
                          batch_size=16, workers=0, cache_dir=root / "store", run_dir=tmp_path / "s"))
    files = [root / "part1.txt", root / "part2.txt"]
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "s"), "--workers", "0", "--json",
                                 "--classes", str(files[0]), "--classes", str(files[1])])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(res["parts"]) == {"part1", "part2"} and all(v["n"] == 16 for v in res["parts"].values())
    # A teacher of part 1: its per-part accuracy on part 1 is its plain accuracy (its head is that part).
    t1 = CliRunner().invoke(app, ["eval", str(root / "t1"), "--workers", "0", "--json", "--classes", str(files[0])])
    t1 = json.loads(t1.output)
    assert t1["parts"]["part1"]["acc"] == t1["acc"]
    bad = CliRunner().invoke(app, ["eval", str(root / "t1"), "--workers", "0", "--classes", str(files[1])])
    assert bad.exit_code == 2 and "not covered" in bad.output


@pytest.mark.slow
def test_dual_stage_amalgamation_end_to_end_without_labels(part_teachers, tmp_path, monkeypatch):
    """Source teachers (one per class part) → one component net per part → a target net over all classes."""
    from featcache.datasets.base import ImageDataset, read_class_list
    from featcache.distill.amalgamate import AmalgamateConfig, amalgamate

    root, keys = part_teachers
    parts = {f"part{k}": read_class_list(root / f"part{k}.txt") for k in (1, 2)}

    def run(out, scramble=False):
        if scramble:
            real = ImageDataset.__getitem__

            def scrambled(self, i):
                image, label, index = real(self, i)
                return image, (label + 1) % 2 if self.split == "train" else label, index

            monkeypatch.setattr(ImageDataset, "__getitem__", scrambled)
        cfg = AmalgamateConfig(teachers=keys, parts=parts, student="lenet5", dataset_options=dict(SYN), epochs=1,
                               batch_size=16, cache_dir=tmp_path / f"store-{out}", run_dir=tmp_path / out,
                               workers=0)
        # The source caches live in the fixture's store; copy their keys' directories into this run's store.
        import shutil

        for k in keys:
            shutil.copytree(root / "store" / k, tmp_path / f"store-{out}" / k)
        return amalgamate(cfg, log=lambda m: None)

    a = run("a")
    assert set(a.components) == {"part1", "part2"} and (a.target / "summary.json").is_file()
    rows = {r.task: r for r in a.table}
    assert set(rows) == {"part1", "part2"}
    for row in rows.values():
        assert len(row.sources) == 1  # the teacher trained on that part, found through its teacher.pt
        assert 0 <= row.component <= 1 and 0 <= row.target <= 1
    # The component caches record the component's classes, so the target maps them onto its head.
    store = FeatureCache(tmp_path / "store-a" / a.component_keys["part1"])
    assert store.manifest.teacher.classes == parts["part1"] and store.manifest.teacher.name == "run"
    # Scrambled training labels change nothing: no stage read them.
    b = run("b", scramble=True)
    sa = torch.load(a.target / "checkpoint-last.pt", weights_only=False)["student"]
    sb = torch.load(b.target / "checkpoint-last.pt", weights_only=False)["student"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])
    # Re-running skips every stage.
    logs = []
    from featcache.distill.amalgamate import amalgamate as again

    again(AmalgamateConfig(teachers=keys, parts=parts, student="lenet5", dataset_options=dict(SYN), epochs=1,
                           batch_size=16, cache_dir=tmp_path / "store-a", run_dir=tmp_path / "a",
                           workers=0), log=logs.append)
    assert all(m.endswith("done") or "reused" in m for m in logs), logs


@pytest.mark.slow
def test_amalgamate_cli_prints_the_per_task_table(part_teachers, tmp_path):
    root, keys = part_teachers
    args = ["amalgamate", "--student", "lenet5", "-o", "num_train=64", "-o", "num_test=32", "-o", "num_classes=4",
            "--epochs", "1", "--batch-size", "16", "--workers", "0", "--cache-dir", str(root / "store"),
            "--run-dir", str(tmp_path / "am")]
    for k in keys:
        args += ["--teacher", k]
    for k in (1, 2):
        args += ["--classes", str(root / f"part{k}.txt")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "per-task test accuracy" in r.output and "part2" in r.output
    bad = CliRunner().invoke(app, ["amalgamate", "--teacher", keys[0], "--classes", str(tmp_path / "none.txt")])
    assert bad.exit_code == 2 and "not found" in bad.output


@pytest.mark.slow
def test_aka_with_block_features(tmp_path):
    """Teachers cached with intermediate blocks; the student's body modules are bridged to them block by block."""
    store = tmp_path / "store"
    keys = []
    for k, classes in enumerate((["circle", "square"], ["triangle", "cross"])):
        _, path = train_teacher(TeacherConfig(teacher="convnet", dataset_options=dict(SYN), init="random",
                                              image_size=32, epochs=1, batch_size=32, workers=0,
                                              run_dir=tmp_path / f"t{k}", classes=classes))
        r = extract(ExtractConfig(teacher="convnet", weights=str(path), dataset_options=dict(SYN), image_size=32,
                                  workers=0, cache_dir=store, blocks=["body.5", "body.12"], pool=2))
        assert [b.channels for b in r.manifest.blocks] == [32, 64]
        keys.append(r.key)
    cfg = DistillConfig(student="lenet5", dataset_options=dict(SYN), teachers=keys, method="aka", epochs=1,
                        batch_size=16, workers=0, cache_dir=store, run_dir=tmp_path / "s",
                        student_blocks=["conv1", "conv2"])
    s = setup(cfg)
    assert s.method.params.found.student_block_channels == [6, 16] and len(s.method.fa_teacher_blocks) == 2
    # One batch by hand: the loss holds the block terms.
    from featcache.distill.loader import JoinedLoader

    s.train.with_transform(Geometry(s.transform))
    loader = JoinedLoader(s.train, s.caches, batch_size=8, workers=0, transform=s.transform, blocks=True)
    batch = next(iter(loader))
    loader.close()
    assert [t.shape for t in batch.blocks[0]] == [(8, 32 * 4), (8, 64 * 4)]
    x = Normalizer(s.transform)(batch.images, channels_last=False)
    with_blocks, parts, _ = s.method.loss(s.model, x, None,
                                          TeacherRows(batch.features, batch.logits, batch.blocks), 0)
    with_blocks.backward()
    assert s.method.fa_student_blocks[0][0].weight.grad is not None
    assert s.model.body.conv1.weight.grad.abs().sum() > 0
    summary = distill(cfg)  # and a whole run, out of core as well
    assert summary.epochs == 1
    distill(DistillConfig(**{**cfg.__dict__, "run_dir": tmp_path / "d", "cache_mode": "disk"}))
    bad = DistillConfig(**{**cfg.__dict__, "student_blocks": ["conv1"], "run_dir": tmp_path / "x"})
    with pytest.raises(ConfigError, match="--student-blocks names 1 blocks"):
        setup(bad)
    with pytest.raises(ConfigError, match="no such module"):
        setup(DistillConfig(**{**cfg.__dict__, "student_blocks": ["conv1", "conv9"]}))
