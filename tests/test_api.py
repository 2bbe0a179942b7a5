"""featcache as a library (featcache.api): a user's module and Dataset give the registry path's rows; the rows in a
user's loop are the distill loader's; the docs' example trains; timm models as teachers and students."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import Dataset, TensorDataset

from featcache.transforms import Geometry
from featcache import api
from featcache.cache import open_cache
from featcache.config import ExtractConfig
from featcache.datasets import get_dataset
from featcache.errors import CacheMismatchError, ConfigError, DatasetError
from featcache.extract import extract
from featcache.models.teachers import create_teacher

ROOT = Path(__file__).resolve().parents[1]
SYN = {"num_train": 24, "num_test": 8, "num_classes": 4}


class PlainImages(Dataset):
    """A user's dataset: PIL images and int labels, nothing featcache-specific (the synthetic set's images)."""

    def __init__(self, kind: str = "pil") -> None:
        self.base = get_dataset("synthetic", None, "train", **SYN)
        self.kind = kind

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        from PIL import Image

        chw = self.base.read_image(i)
        image = {"pil": lambda: Image.fromarray(chw.permute(1, 2, 0).numpy()), "hwc": lambda: chw.permute(1, 2, 0),
                 "float": lambda: chw.float() / 255}[self.kind]()
        return image, int(self.base.targets[i])


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "store"))
    return tmp_path / "store"


def registry_cache(store):
    return extract(ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic", dataset_options=dict(SYN),
                                 image_size=32, workers=0, batch_size=8, cache_dir=store))


@pytest.mark.slow
def test_a_users_module_and_dataset_give_the_rows_of_the_registry_path(store):
    reg = registry_cache(store)
    # The same network and weights as a plain torchvision model, features read at its avgpool.
    same = create_teacher("resnet18", weights="random", num_classes=SYN["num_classes"], seed=0)
    net = torchvision.models.resnet18(num_classes=SYN["num_classes"])
    net.load_state_dict(same.model.torchvision_state_dict())
    users = PlainImages("pil")
    transform = reg.manifest.transform
    mine = api.extract_from(net, users, name="my-r18", dataset_name="mine", ids=users.base.sample_ids,
                            feature_layer="avgpool", transform=transform, workers=0, batch_size=8)
    assert not mine.reused and mine.key.startswith("my-r18-mine-train-")
    a, b = open_cache(reg.key).read_all(), open_cache(mine.key).read_all()
    np.testing.assert_array_equal(a["features"], b["features"])
    np.testing.assert_array_equal(a["logits"], b["logits"])
    m = open_cache(mine.key).manifest
    assert m.teacher.weights.source == "module" and m.teacher.feature_layer == "output of avgpool"
    assert m.command.startswith("python: featcache.api.extract_from(ResNet")
    # The same call again finds it; other weights make another cache; HWC uint8 tensors are the same images.
    assert api.extract_from(net, PlainImages("hwc"), name="my-r18", dataset_name="mine", ids=users.base.sample_ids,
                            feature_layer="avgpool", transform=transform, workers=0, batch_size=8).key == mine.key
    with torch.no_grad():
        net.fc.bias.add_(1.0)
    other = api.extract_from(net, users, name="my-r18", dataset_name="mine", ids=users.base.sample_ids,
                             feature_layer="avgpool", transform=transform, workers=0)
    assert other.key != mine.key


def test_user_mistakes_are_one_line_errors(store):
    net = torchvision.models.resnet18(num_classes=4)
    with pytest.raises(DatasetError, match="float32 tensor.*PIL images or uint8"):
        api.extract_from(net, PlainImages("float"), name="r", dataset_name="d", feature_layer="avgpool",
                         image_size=32, workers=0)
    with pytest.raises(ConfigError, match="feature_layer 'pool5'.*top-level modules are: conv1"):
        api.extract_from(net, PlainImages(), name="r", dataset_name="d", feature_layer="pool5", image_size=32)
    with pytest.raises(ConfigError, match="no forward_features/forward_head"):
        api.extract_from(net, PlainImages(), name="r", dataset_name="d", image_size=32)
    with pytest.raises(ConfigError, match="dataset_name"):
        api.extract_from(net, PlainImages(), name="r", feature_layer="avgpool", image_size=32)
    with pytest.raises(ConfigError, match="unknown option 'batchsize'"):
        api.extract_from(net, PlainImages(), name="r", dataset_name="d", feature_layer="avgpool", batchsize=4)


def test_changed_images_change_the_key_and_the_join_refuses_other_data(store):
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(20) % 4
    net = torchvision.models.resnet18(num_classes=4)
    first = api.extract_from(net, TensorDataset(images, labels), name="r", dataset_name="toy",
                             feature_layer="avgpool", image_size=16, workers=0)
    changed = images.clone()
    changed[3, 0, 0, 0] ^= 1  # one pixel of one image
    second = api.extract_from(net, TensorDataset(changed, labels), name="r", dataset_name="toy",
                              feature_layer="avgpool", image_size=16, workers=0)
    assert second.key != first.key
    api.RowJoin([first.key], TensorDataset(images, labels), dataset_name="toy")  # its own data: accepted
    with pytest.raises(ConfigError, match="pass the dataset the rows are joined to"):
        api.RowJoin([first.key])  # rows by index for data nobody checked: refused unless asked for
    assert len(api.RowJoin([first.key], check=False)) == 20
    with pytest.raises(CacheMismatchError, match="labels"):
        api.RowJoin([first.key], TensorDataset(images, (labels + 1) % 4), dataset_name="toy")
    with pytest.raises(CacheMismatchError):
        api.CachedRows(TensorDataset(changed, labels), [first.key], dataset_name="toy")


def test_the_wrappers_rows_are_the_distill_loaders_rows(store):
    from featcache.cache.reader import FeatureCache
    from featcache.distill.loader import JoinedLoader

    reg = registry_cache(store)
    cache = FeatureCache(reg.directory)
    ds = get_dataset("synthetic", None, "train", **SYN)
    spec = cache.manifest.transform
    loader = JoinedLoader(ds.with_transform(Geometry(spec)), [cache], batch_size=8, workers=0, seed=3,
                          transform=spec)
    join = api.RowJoin([reg.key], get_dataset("synthetic", None, "train", **SYN))
    seen = 0
    for batch in loader:
        got = join.join(batch.index)[0]
        assert torch.equal(got["features"], batch.features[0].cpu())
        assert torch.equal(got["logits"], batch.logits[0].cpu())
        seen += len(batch)
    assert seen == len(ds)
    # Per sample, through the Dataset wrapper: the same rows, appended to the user's own sample.
    wrapped = api.CachedRows(get_dataset("synthetic", None, "train", **SYN), [reg.key])
    image, label, index, teacher_rows = wrapped[5]
    assert index == 5 and torch.equal(teacher_rows[0]["features"], join.join([5])[0]["features"][0])
    with pytest.raises(IndexError):
        join.join([len(ds)])


@pytest.mark.slow
def test_the_python_api_doc_example_trains(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "python-api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 12 <= len(code.strip().splitlines()) <= 35  # "about 20 lines"
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and scope["result"].rows == 64
    assert scope["teacher_rows"][0]["features"].shape[1] == 512


# -- timm -------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_timm_teacher_and_student_run_extract_distill_eval(store, tmp_path):
    timm = pytest.importorskip("timm")  # the [timm] extra; .ci/run installs it
    from typer.testing import CliRunner

    from featcache.cli import app

    def run(*args):
        r = CliRunner().invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r

    syn = ["-o", "num_train=32", "-o", "num_test=16", "-o", "num_classes=4"]
    for split in ("train", "test"):
        run("extract", "-t", "timm:test_efficientnet", "-w", "random", *syn, "--image-size", "32", "--workers", "0",
            "--split", split)
    m = next(open_cache(p.name).manifest for p in store.iterdir() if p.name.endswith(tuple("0123456789abcdef"))
             and "-train-" in p.name)
    cfg = timm.models.get_pretrained_cfg("test_efficientnet")
    assert m.transform.interpolation == cfg.interpolation and tuple(m.transform.mean) == tuple(cfg.mean)
    assert m.teacher.num_features == timm.create_model("test_efficientnet").num_features
    run("distill", "-s", "timm:mobilenetv4_conv_small", "-t", "timm:test_efficientnet", *syn, "--epochs", "1",
        "-b", "16", "--workers", "0", "--run-dir", tmp_path / "run")
    r = run("eval", tmp_path / "run", "--workers", "0", "--json")
    assert '"n": 16' in r.output
    bad = CliRunner().invoke(app, ["distill", "-s", "timm:test_convnext", "--small-input", *syn, "--epochs", "1"])
    assert bad.exit_code == 2 and "keeps its own stem" in bad.output
    nodl = CliRunner().invoke(app, ["extract", "-t", "timm:test_efficientnet", *syn])
    assert nodl.exit_code == 2 and "not in the local Hugging Face cache" in nodl.output
    # a timm model's checkpoint (as a lab would have it) is a weights file
    net = timm.create_model("test_efficientnet", num_classes=4)
    torch.save(net.state_dict(), tmp_path / "ft.pt")
    run("extract", "-t", "timm:test_efficientnet", "-w", tmp_path / "ft.pt", *syn, "--image-size", "32",
        "--workers", "0")


def test_timm_names_are_a_clear_error_when_timm_is_missing(monkeypatch):
    import builtins

    from featcache.errors import ModelError
    from featcache.models.registry import get_entry

    real = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("no timm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ModelError, match=r"pip install 'featcache\[timm\]'"):
        get_entry("teacher", "timm:resnet18")


@pytest.mark.slow
def test_a_callable_feature_layer_and_a_timm_style_module(store):
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(12) % 3)
    net = torchvision.models.resnet18(num_classes=3).eval()

    def pooled_and_logits(model, x):
        h = model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x)))))))))
        h = torch.flatten(h, 1)
        return h, model.fc(h)

    by_fn = api.extract_from(net, data, name="fn", dataset_name="toy", feature_layer=pooled_and_logits,
                             image_size=16, workers=0)
    by_name = api.extract_from(net, data, name="fn", dataset_name="toy", feature_layer="avgpool", image_size=16,
                               workers=0)
    assert by_fn.key != by_name.key  # the feature layer is part of the key
    np.testing.assert_array_equal(open_cache(by_fn.key).read_all()["features"],
                                  open_cache(by_name.key).read_all()["features"])
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_efficientnet", num_classes=3)
    r = api.extract_from(model, data, name="tiny-effnet", dataset_name="toy", image_size=16, workers=0)
    m = open_cache(r.key).manifest
    assert m.teacher.num_features == model.num_features and m.teacher.num_classes == 3
    assert m.teacher.feature_layer.startswith("pre-logits")


def test_timm_teacher_weights_come_from_the_local_hugging_face_cache(store, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from featcache.cli import app

    cfg = timm.models.get_pretrained_cfg("test_efficientnet")
    hub = tmp_path / "hf"
    snapshot = hub / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (hub / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "refs").mkdir()
    (hub / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "refs" / "main").write_text("abc123")
    net = timm.create_model("test_efficientnet")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(app, ["extract", "-t", "timm:test_efficientnet", "-o", "num_train=16", "-o", "num_test=8",
                                 "--image-size", "32", "--workers", "0"])
    assert r.exit_code == 0, r.output
    key = r.output.split("cache ")[1].split(":")[0].strip()
    m = open_cache(key).manifest
    assert m.teacher.weights.source == "file" and m.teacher.weights.ref.endswith("model.safetensors")
    assert m.teacher.num_classes == net.num_classes
