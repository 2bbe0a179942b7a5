"""featcache as a library (featcache.api): a user's module and Dataset give the registry path's rows; the rows in a
user's loop are the distill loader's; the docs' example trains; timm models as teachers and students."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import Dataset, TensorDataset

from featcache import api
from featcache.cache import open_cache
from featcache.config import ExtractConfig
from featcache.datasets import get_dataset
from featcache.errors import CacheMismatchError, ConfigError, DatasetError
from featcache.extract import extract
from featcache.models.teachers import create_teacher
from featcache.transforms import Geometry

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


def registry_cache(home):
    return extract(ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic", dataset_options=dict(SYN),
                                 image_size=32, workers=0, batch_size=8, cache_dir=home))


@pytest.mark.slow
def test_a_users_module_and_dataset_give_the_rows_of_the_registry_path(home):
    reg = registry_cache(home)
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


def test_user_mistakes_are_one_line_errors(home):
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


def test_changed_images_change_the_key_and_the_join_refuses_other_data(home):
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


def test_the_wrappers_rows_are_the_distill_loaders_rows(home):
    from featcache.cache.reader import FeatureCache
    from featcache.distill.loader import JoinedLoader

    reg = registry_cache(home)
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


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_registries")
def test_the_python_api_doc_examples_run_as_written(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks("python-api.md")
    own_loop = blocks[1]
    code_lines = [line for line in own_loop.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "fc.open_cache(" in own_loop and "fc.losses.kd(" in own_loop and len(code_lines) <= 25
    torch.manual_seed(0)
    scope: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/python-api.md, python block {i + 1}", "exec"), scope)
        if i == 1:  # the student of one's own, trained with KD from the cache
            assert torch.isfinite(scope["loss"]) and scope["cache"].teacher.name == "my-r18"
    # the K-views loop proved its rows match each image's view; the views it drew were not all the evaluation view
    assert scope["augmented"].caches[0].views == 4 and scope["rows"]["my-r18"].view.shape == scope["y"].shape
    assert scope["summary"].method == "soft-only" and (tmp_path / "runs" / "small-ts" / "summary.json").is_file()
    # The module student's run is evaluated where its class is registered; elsewhere the error says how.
    from featcache.distill.evaluation import evaluate_run

    assert evaluate_run(tmp_path / "runs" / "small-ts", device="cpu", workers=0).n == 8
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "featcache", "eval", "runs/small-ts", "--workers", "0"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "fc.register_student('python-smallnet', build" in " ".join(r.stderr.split())


def test_the_api_reference_is_current():
    """docs/api.md is generated from the docstrings of fc.__all__ and fc.losses; regenerate it with
    `python -m featcache.util.apidoc`."""
    from featcache.util import apidoc

    assert (ROOT / "docs" / "api.md").read_text() == apidoc.render()


# -- import featcache as fc -------------------------------------------------------------------------------------------


def test_import_featcache_loads_no_torch_and_changes_no_environment_variable():
    import os
    import subprocess
    import sys

    code = ("import os, sys; before = dict(os.environ); import featcache as fc; "
            "print(dict(os.environ) == before, 'torch' in sys.modules, fc.__version__); "
            "fc.open_cache; print('torch' in sys.modules, dict(os.environ) == before)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "0.1.0", "True", "True"]


def test_the_public_names_are_the_chosen_ones_and_each_resolves():
    import featcache as fc

    chosen = {"extract", "extract_from", "open_cache", "Cache", "CachedRows", "RowJoin", "distill", "losses",
              "register_student", "register_method", "list_teachers", "list_students", "list_methods",
              "ExtractConfig", "DistillConfig", "__version__"}
    assert chosen <= set(fc.__all__)
    for name in fc.__all__:
        assert getattr(fc, name) is not None
    assert callable(fc.extract) and callable(fc.distill) and fc.losses.kd is not None
    import featcache.distill.trainer as trainer  # importing a stage's module leaves fc.distill callable

    assert callable(fc.distill) and trainer.distill is not fc.distill
    with pytest.raises(AttributeError):
        fc.not_a_name  # noqa: B018


def test_extract_and_distill_by_keywords_refuse_an_unknown_option_in_one_line():
    import featcache as fc

    with pytest.raises(ConfigError, match="extract: unknown option 'teachr'; the options are ExtractConfig's"):
        fc.extract(teachr="resnet18")
    with pytest.raises(ConfigError, match="distill: unknown option 'epoch'"):
        fc.distill(epoch=1)
    with pytest.raises(ConfigError, match="pass a ExtractConfig or keyword options, not both"):
        fc.extract(ExtractConfig(teacher="resnet18"), dataset="synthetic")


# -- the cache as the student sees it ---------------------------------------------------------------------------------


def views_cache(home, views: int = 3):
    """A tiny dataset of uint8 images, a resnet18 over it and a cache of its avgpool rows with ``views`` views."""
    images = torch.randint(0, 256, (20, 3, 24, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(images, torch.arange(20) % 4)
    net = torchvision.models.resnet18(num_classes=4)
    result = api.extract_from(net, data, name="r", dataset_name="toy", feature_layer="avgpool", image_size=16,
                              workers=0, views=views, view_policy="rrc-flip")
    return data, net, result


def test_the_caches_student_view_gives_the_pixels_the_teacher_saw(home):
    import featcache as fc
    from featcache.transforms import Geometry, Normalizer

    data, _, result = views_cache(home)
    cache = fc.open_cache(result.key)
    assert isinstance(cache, fc.Cache) and cache.teacher.name == "r" and cache.dataset["name"] == "toy"
    assert cache.manifest.key == cache.key and len(cache) == 20 and cache.views == 3
    image = data[7][0]
    want = Normalizer(cache.transform)(Geometry(cache.transform)(image)[None], channels_last=False)[0]
    got = cache.view(image)
    assert got.shape == want.shape == (3, 16, 16) and torch.allclose(got, want, atol=1e-5)
    from PIL import Image

    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    assert torch.allclose(cache.view(pil), want, atol=1e-5)  # a PIL image gives the same view
    assert torch.equal(cache.view_image(image, 7, 0), want)


def test_a_caches_rows_of_each_view_are_its_view_parts_and_its_view_images_give_them(home):
    import featcache as fc

    data, net, result = views_cache(home)
    cache = fc.open_cache(result.key)
    reader = cache.reader
    rows = cache.rows([4, 2, 4, 9], view=[0, 1, 2, 0])
    assert rows["view"].tolist() == [0, 1, 2, 0]
    assert torch.equal(rows["features"][1], torch.from_numpy(reader.gather([2], "view1")["features"][0]))
    assert torch.equal(rows["features"][2], torch.from_numpy(reader.gather([4], "view2")["features"][0]))
    assert torch.equal(rows["features"][0], torch.from_numpy(reader.gather([4])["features"][0]))
    body = torch.nn.Sequential(*list(net.children())[:-1], torch.nn.Flatten()).eval()
    with torch.no_grad():
        for v in range(3):
            seen = body(cache.view_image(data[4][0], 4, v)[None])[0]
            assert torch.allclose(seen, cache.rows([4], view=v)["features"][0].float(), rtol=1e-2, atol=1e-2)
    assert cache.view_params([4], 1).shape == (1, 5)
    with pytest.raises(ConfigError, match="holds views 0..2, got 3"):
        cache.rows([0], view=3)


def test_cached_rows_are_keyed_by_teacher_name_and_give_the_image_in_its_rows_view(home):
    from torch.utils.data import DataLoader

    data, net, result = views_cache(home)
    plain = api.CachedRows(data, [result.key])
    image, label, rows = plain[3]
    assert torch.equal(image, data[3][0]) and list(rows) == ["r"] and rows[0] is rows["r"]
    assert rows["r"].features.shape == (512,) and rows["r"]["logits"].shape == (4,) and rows["r"].view is None
    cached = api.CachedRows(data, [result.key], view="cached")
    torch.manual_seed(1)
    x, y, batch = next(iter(DataLoader(cached, batch_size=20)))
    assert x.shape == (20, 3, 16, 16) and set(batch["r"].view.tolist()) == {0, 1, 2}
    body = torch.nn.Sequential(*list(net.children())[:-1], torch.nn.Flatten()).eval()
    with torch.no_grad():
        assert torch.allclose(body(x), batch["r"].features.float(), rtol=1e-2, atol=1e-2)
    one_view = api.extract_from(net, data, name="r", dataset_name="toy", feature_layer="avgpool", image_size=16,
                                workers=0)
    with pytest.raises(ConfigError, match="view='cached': every cache needs the same cached views"):
        api.CachedRows(data, [one_view.key], view="cached")
    with pytest.raises(ConfigError, match="view 'random': choose None"):
        api.CachedRows(data, [one_view.key], view="random")


def test_row_join_places_tables_as_distill_does_and_streams_them_beyond_the_budget(home):
    from featcache.cache.leases import live_readers

    def readers(directory):
        return live_readers(directory.parent, directory.name)

    data, _, result = views_cache(home, views=2)
    ram = api.RowJoin([result.key], data)
    assert ram.modes == ["ram"] and readers(ram.caches[0].directory) == []  # in RAM: no lease held
    small = api.RowJoin([result.key], data, cache_ram=1024)  # a budget of 1 KiB: the table stays on disk
    assert small.modes == ["disk"] and len(readers(small.caches[0].directory)) == 1
    idx = [7, 0, 7, 19]
    for got, want in zip(small.join(idx)[0].values(), ram.join(idx)[0].values(), strict=True):
        assert torch.equal(got, want)
    small.close()
    assert readers(small.caches[0].directory) == []
    with api.RowJoin([result.key], data, mode="disk") as disk:
        assert disk.modes == ["disk"] and torch.equal(disk.join([3])["r"].logits, ram.join([3])["r"].logits)
        copy = pickle.loads(pickle.dumps(disk))  # as a spawned DataLoader worker gets it: under the parent's lease
        assert torch.equal(copy.join([3])["r"].logits, ram.join([3])["r"].logits)
        assert len(readers(disk.caches[0].directory)) == 1
    net = torchvision.models.resnet18(num_classes=4)
    int8 = api.extract_from(net, data, name="q", dataset_name="toy", feature_layer="avgpool", image_size=16,
                            workers=0, dtype="int8")
    with api.RowJoin([int8.key], data, mode="disk") as disk:
        got = disk.join([5, 2, 5, 6])["q"]
        want = api.RowJoin([int8.key], data).join([5, 2, 5, 6])["q"]
        assert got.features.dtype == torch.float16 and set(got) == {"features", "logits"}
        assert torch.equal(got.features, want.features) and torch.equal(got.logits, want.logits)


# -- registries --------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_registries")
def test_register_method_takes_a_method_subclass_by_a_free_name_only():
    import featcache as fc

    class Mine(fc.Method):
        name = "mine-for-test"

        def loss(self, student, x, y, rows, epoch):
            logits = student(x)
            return fc.losses.xent(logits, y), {}, logits

    assert fc.register_method(Mine) is Mine and "mine-for-test" in fc.list_methods()
    assert fc.register_method(Mine) is Mine  # the same class again: nothing changes

    class Clash(fc.Method):
        name = "kd"

    with pytest.raises(ConfigError, match="method 'kd' exists already"):
        fc.register_method(Clash)
    with pytest.raises(ConfigError, match="not a subclass of featcache.Method"):
        fc.register_method(torch.nn.Linear)
    with pytest.raises(ConfigError, match="set a name"):
        fc.register_method(type("Nameless", (fc.Method,), {}))


@pytest.mark.usefixtures("restore_registries")
def test_register_student_names_a_module_builder_and_refuses_a_taken_name():
    import featcache as fc
    from featcache.errors import ModelError
    from featcache.models.students import create_student

    @fc.register_student("tiny-for-test", feature_layer="0", default_image_size=16)
    def tiny(image_size):
        return torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1)),
                                   torch.nn.Flatten(), torch.nn.Linear(6, 2))

    assert "tiny-for-test" in fc.list_students()
    student = create_student("tiny-for-test", num_classes=5, image_size=16, feature_dim=7)
    assert student.body_dim == 6 and student(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    assert student.forward_features(torch.zeros(2, 3, 16, 16)).shape == (2, 7)
    with pytest.raises(ModelError, match="student 'tiny-for-test' exists already"):
        fc.register_student("tiny-for-test", tiny)
    with pytest.raises(ModelError, match="student 'convnet_small' exists already"):
        fc.register_student("convnet_small", tiny)
    with pytest.raises(ConfigError, match="lowercase letters"):
        fc.register_student("Bad Name", tiny)
    assert {"resnet50", "convnet"} <= set(fc.list_teachers())


@pytest.mark.usefixtures("restore_registries")  # a module student is registered under its class name
def test_a_student_module_without_a_feature_split_is_a_one_line_error():
    import featcache as fc

    with pytest.raises(ConfigError, match="no forward_features/forward_head"):
        fc.distill(student=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), dataset="synthetic", epochs=1)
    with pytest.raises(ConfigError, match="feature_layer 'pool'.*top-level modules are: 0"):
        fc.distill(student=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), feature_layer="pool",
                   dataset="synthetic", epochs=1)


# -- timm -------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_timm_teacher_and_student_run_extract_distill_eval(home, tmp_path):
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
    m = next(open_cache(p.name).manifest for p in home.iterdir() if p.name.endswith(tuple("0123456789abcdef"))
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
def test_a_callable_feature_layer_and_a_timm_style_module(home):
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


def test_timm_teacher_weights_come_from_the_local_hugging_face_cache(home, tmp_path, monkeypatch):
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


# -- the Python API rejects what it cannot mean -------------------------------------------------------------------
@pytest.mark.parametrize("indices, needle", [
    (np.array([0.0, 1.9]), "integers"),
    (torch.tensor([0.5]), "integers"),
    (np.zeros(24, dtype=bool), "boolean mask"),
    (torch.ones(24, dtype=torch.bool), "boolean mask"),
    ([0, 24], "[0, 24)"),
    ([-1], "[0, 24)"),
    (np.array([[0, 1]]), "1-D"),
])
def test_row_join_refuses_indices_it_cannot_mean(syn_cache, indices, needle):
    from featcache import api
    from featcache.errors import FeatcacheError

    join = api.RowJoin([syn_cache.name], check=False)
    with pytest.raises(api.RowIndexError, match=re.escape(needle)) as info:
        join.join(indices)
    assert isinstance(info.value, IndexError) and isinstance(info.value, FeatcacheError)
    # What it can mean still works: any integer dtype, repeats, any order, empty.
    rows = join.join(np.array([5, 0, 5], dtype=np.int32))[0]
    assert np.array_equal(rows["features"][0], rows["features"][2])
    assert len(join.join([])[0]["logits"]) == 0 and len(join.join(torch.tensor([23]))[0]["logits"]) == 1


def test_extract_from_refuses_a_head_narrower_than_the_dataset(home):
    import torchvision
    from torch.utils.data import TensorDataset

    from featcache import api
    from featcache.errors import ConfigError

    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(12) % 4)
    model = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ConfigError, match="2 logits but the dataset has 4 classes"):
        api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool", image_size=32,
                         workers=0)
    with pytest.raises(ConfigError, match="logit_classes"):
        api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool", image_size=32,
                         workers=0, logit_classes=["0", "1", "2"])
    # Saying which classes the head covers (a teacher of some classes) is accepted, and recorded.
    result = api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool",
                              image_size=32, workers=0, logit_classes=["1", "3"])
    assert result.manifest.teacher.classes == ["1", "3"] and result.manifest.teacher.num_classes == 2


def test_a_users_module_sees_images_of_one_square_size_as_they_are(home, folder_tree):
    net = torchvision.models.resnet18(num_classes=3)
    data = get_dataset("folder", folder_tree / "train", "train")  # 32 x 32 PNGs
    result = api.extract_from(net, data, name="mine", feature_layer="avgpool", workers=0)  # no image_size
    spec = result.manifest.transform
    assert (spec.image_size, spec.resize, spec.resize_mode) == (32, 32, "square")  # not zoomed to 224
