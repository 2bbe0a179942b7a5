"""train-teacher: a fine-tuned teacher that `extract --weights` takes, NTS-Net's losses, --init."""


import pytest
import torch
from typer.testing import CliRunner

from featcache.cache import FeatureCache
from featcache.cli import app
from featcache.distill.trainer import evaluate_run
from featcache.errors import ConfigError
from featcache.extract import ExtractConfig, extract
from featcache.teach import TeacherConfig, TeacherLoss, build_classifier, ranking_loss, resolve_init, train_teacher

SYN = {"num_train": 96, "num_test": 32}


@pytest.mark.slow
def test_train_teacher_then_extract_with_its_weights(tmp_path):
    tc = TeacherConfig(teacher="resnet18", dataset_options=dict(SYN), init="random", image_size=32, epochs=2,
                       batch_size=32, workers=0, run_dir=tmp_path / "t")
    summary, path = train_teacher(tc)
    assert path.is_file() and summary.epochs == 2
    record = torch.load(path, weights_only=True)["featcache"]
    assert record["num_classes"] == 10 and record["init"] == "random" and record["test_acc"] == summary.best_acc
    # The run is evaluable like a distill run, and agrees with its best epoch.
    assert evaluate_run(tmp_path / "t", workers=0).acc == pytest.approx(summary.best_acc)
    # extract takes the file; logits range over the dataset's classes, so kd can use them.
    result = extract(ExtractConfig(teacher="resnet18", weights=str(path), dataset="synthetic",
                                   dataset_options=dict(SYN), split="test", image_size=32, workers=0,
                                   cache_dir=tmp_path / "store"))
    m = result.manifest
    assert m.teacher.classes_source == "weights" and m.teacher.num_classes == 10  # teacher.pt names its classes
    from featcache.datasets import get_dataset as _get

    assert m.teacher.classes == _get("synthetic", split="test", **SYN).classes
    rows = FeatureCache(result.directory).read_all()
    from featcache.datasets import get_dataset

    targets = get_dataset("synthetic", split="test", **SYN).targets
    acc = (rows["logits"].argmax(1) == targets).mean()
    assert acc == pytest.approx(summary.best_acc)  # the cached logits reproduce the teacher's test accuracy


@pytest.mark.slow
def test_train_teacher_cli_and_resume(tmp_path):
    runner = CliRunner()
    args = ["train-teacher", "--teacher", "mobilenet_v3_small", "-o", "num_train=64", "-o", "num_test=16",
            "--init", "random", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--workers", "0",
            "--run-dir", str(tmp_path / "r")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "teacher weights:" in r.output and (tmp_path / "r" / "teacher.pt").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    bad = runner.invoke(app, ["train-teacher", "--teacher", "resnet18", "--init", "nowhere.pt"])
    assert bad.exit_code == 2 and "--init" in bad.output


def test_init_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    assert resolve_init("resnet18", "auto") == "random"
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"")
    assert resolve_init("resnet18", "auto") == "imagenet"
    with pytest.raises(ConfigError, match="--init"):
        resolve_init("resnet18", "best")


@pytest.mark.slow
def test_classifier_from_a_checkpoint_with_another_head(tmp_path):
    model = build_classifier("resnet18", num_classes=7, image_size=32)
    ckpt = tmp_path / "w.pt"
    torch.save(model.weights_state_dict(), ckpt)
    again = build_classifier("resnet18", num_classes=7, init=str(ckpt))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    swapped = build_classifier("resnet18", num_classes=3, init=str(ckpt))
    assert swapped.num_classes == 3 and swapped(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_ranking_loss_matches_the_pairwise_definition():
    torch.manual_seed(0)
    scores, part_loss = torch.randn(3, 4), torch.rand(3, 4)
    expected = 0.0
    for b in range(3):
        for i in range(4):
            for j in range(4):
                if part_loss[b, i] > part_loss[b, j]:  # j is the more informative part: it should score higher
                    expected += max(0.0, 1 - scores[b, j].item() + scores[b, i].item())
    assert ranking_loss(scores, part_loss).item() == pytest.approx(expected / 3, rel=1e-5)


@pytest.mark.slow
def test_nts_net_trains_with_its_four_losses():
    from featcache.distill.methods.base import MethodParams
    from featcache.models.ntsnet import NTSNet
    from featcache.teach import Classifier

    torch.manual_seed(0)
    net = NTSNet(num_classes=5, top_n=3, cat_num=2, image_size=64, part_size=16)
    clf = Classifier(net).train()
    method = TeacherLoss(clf, [], 5, MethodParams())
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])
    loss, parts, logits = method.loss(clf, x, y, None, 0)
    assert set(parts) == {"raw", "concat", "parts", "rank"} and logits.shape == (2, 5)
    assert loss.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-5)
    loss.backward()
    assert net.proposal_net.tidy1.weight.grad is not None and net.concat_net.weight.grad.abs().sum() > 0


def test_a_train_teacher_run_given_as_a_run_teacher_says_to_use_its_teacher_pt(tmp_path):
    import json

    from featcache.errors import WeightsError
    from featcache.models.teachers import create_teacher

    run = tmp_path / "teacher-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"student": "convnet"}, "kind": "teacher",
                                                 "student_kwargs": {"teacher": "convnet", "num_classes": 4}}))
    (run / "checkpoint-best.pt").write_bytes(b"not read")
    with pytest.raises(WeightsError,
                       match=r"train-teacher run: extract it with --teacher convnet --weights .*teacher\.pt"):
        create_teacher("run", weights=str(run))


def test_extract_gives_a_trained_teacher_the_view_it_was_trained_on(folder_tree, tmp_path):
    tc = TeacherConfig(teacher="convnet", dataset="folder", data_root=folder_tree, init="random", image_size=24,
                       epochs=1, batch_size=8, workers=0, device="cpu", run_dir=tmp_path / "t")
    _, path = train_teacher(tc)
    trained = torch.load(path, weights_only=True)["featcache"]["transform"]
    assert trained["image_size"] == 24
    result = extract(ExtractConfig(teacher="convnet", weights=str(path), dataset="folder", data_root=folder_tree,
                                   split="test", workers=0, cache_dir=tmp_path / "store"))  # no view flags
    assert result.manifest.transform.to_dict() == trained  # not convnet's 32 px recipe


def test_two_teacher_trainings_with_one_seed_and_thread_count_are_bit_identical_and_record_their_draw(tmp_path):
    """A teacher is a draw: its seed, thread count, versions and device give its bits, and teacher.pt says which."""
    import torchvision

    def trained(name: str, seed: int = 0) -> dict:
        tc = TeacherConfig(teacher="convnet", dataset_options={"num_train": 32, "num_test": 16, "num_classes": 4},
                           init="random", image_size=32, epochs=1, batch_size=16, workers=0, seed=seed, threads=1,
                           run_dir=tmp_path / name, device="cpu")
        return torch.load(train_teacher(tc)[1], weights_only=True)

    threads = torch.get_num_threads()
    a, b = trained("a"), trained("b")
    assert torch.get_num_threads() == threads  # the pin holds for the training only
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    draw = a["featcache"]["draw"]
    assert draw["seed"] == 0 and draw["threads"] == 1
    assert draw["torch"] == torch.__version__ and draw["torchvision"] == torchvision.__version__
    assert draw["device"] == "cpu" and draw["cpu"] and draw["deterministic_algorithms"] in (True, False)
    other = trained("c", seed=1)["state_dict"]
    assert not all(torch.equal(a["state_dict"][k], other[k]) for k in other)  # another seed: another teacher


def test_train_teacher_threads_must_be_positive():
    from featcache.teach import validate

    with pytest.raises(ConfigError, match="--threads must be >= 1"):
        validate(TeacherConfig(teacher="convnet", threads=0))
