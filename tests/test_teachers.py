"""Teacher registry contract (timm's test_models pattern) and weights loading."""

import pytest
import torch

from featcache.errors import ModelError, WeightsError
from featcache.models import create_teacher, list_teachers, resolve_weights
from featcache.models.teachers import TorchvisionFeatureModel

# Small inputs keep the CPU cost down; nts-net gets its own file (tests/test_ntsnet.py).
CONTRACT = [("resnet50", 32, 2048), ("inceptionv3", 75, 2048), ("resnet18", 32, 512), ("mobilenet_v3_small", 32, 1024)]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,dim", CONTRACT)
def test_forward_features_width_matches_num_features(name, size, dim):
    teacher = create_teacher(name, weights="random", num_classes=7)
    model = teacher.model
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        features, logits = model(x)
        assert features.shape == (2, model.num_features) == (2, dim)
        assert logits.shape == (2, 7) == (2, model.num_classes)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)


def test_registered_teachers_are_listed():
    names = list_teachers()
    assert {"resnet50", "inceptionv3", "nts-net"} <= set(names)
    assert "efficientnet_b0" in list_teachers(include_torchvision=True)


def test_features_are_the_classifier_input():
    teacher = create_teacher("resnet18", weights="random", num_classes=5)
    net = teacher.model.net
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        # Reference: torchvision's own forward up to avgpool + flatten.
        ref = net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))))
        torch.testing.assert_close(teacher.model.forward_features(x), torch.flatten(ref, 1))


@pytest.mark.slow
def test_random_init_is_seeded():
    a = create_teacher("resnet18", weights="random", num_classes=3, seed=1).model.head.weight
    b = create_teacher("resnet18", weights="random", num_classes=3, seed=1).model.head.weight
    c = create_teacher("resnet18", weights="random", num_classes=3, seed=2).model.head.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def _save_resnet18(path, num_classes=4, layout="plain"):
    teacher = create_teacher("resnet18", weights="random", num_classes=num_classes, seed=3)
    state = teacher.model.torchvision_state_dict()
    if layout == "plain":
        obj = state
    elif layout == "module":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    else:
        obj = {layout: state}
    torch.save(obj, path)
    return teacher


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["plain", "module", "model", "net_state_dict"])
def test_checkpoint_layouts_load_and_infer_num_classes(tmp_path, layout):
    path = tmp_path / "ckpt.pt"
    source = _save_resnet18(path, num_classes=4, layout=layout)
    info = resolve_weights("resnet18", str(path))
    assert info.source == "file" and len(info.sha256) == 64
    loaded = create_teacher("resnet18", weights=str(path))
    assert loaded.num_classes == 4  # inferred from the checkpoint head
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        for a, b in zip(source.model.eval()(x), loaded.model(x), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_inception_checkpoint_with_aux_head_loads(tmp_path):
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=6)
    torch.save(net.state_dict(), tmp_path / "inc.pth")
    teacher = create_teacher("inceptionv3", weights=str(tmp_path / "inc.pth"))
    assert teacher.num_classes == 6 and teacher.num_features == 2048


@pytest.mark.slow
def test_mismatched_checkpoint_names_keys(tmp_path):
    path = tmp_path / "r18.pt"
    _save_resnet18(path, num_classes=4)
    with pytest.raises(WeightsError, match="does not fit the model"):
        create_teacher("resnet50", weights=str(path))
    with pytest.raises(WeightsError, match="shape mismatch"):
        create_teacher("resnet18", weights=str(path), num_classes=9)


def test_unreadable_checkpoint_is_a_weights_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        create_teacher("resnet18", weights=str(bad))
    with pytest.raises(WeightsError, match="file not found"):
        resolve_weights("resnet18", str(tmp_path / "missing.pt"))


def test_unknown_teacher_and_weights_names():
    with pytest.raises(ModelError, match="unknown teacher 'nope'"):
        create_teacher("nope", weights="random")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        resolve_weights("resnet50", "IMAGENET9K")
    with pytest.raises(WeightsError, match="needs --weights"):
        resolve_weights("nts-net", None)


def test_torchvision_weights_resolve_without_download():
    info = resolve_weights("resnet50", "IMAGENET1K_V2")
    assert info.source == "torchvision" and info.url.endswith(".pth") and len(info.classes) == 1000


def test_pretrained_weights_with_other_head_are_refused():
    with pytest.raises(WeightsError, match="random head"):
        create_teacher("resnet18", weights="DEFAULT", num_classes=10)


def test_models_without_linear_head_are_refused():
    with pytest.raises(ModelError, match="no nn.Linear classifier"):
        create_teacher("squeezenet1_0", weights="random")


def test_state_dict_round_trip_in_torchvision_layout():
    teacher = create_teacher("resnet18", weights="random", num_classes=3)
    assert isinstance(teacher.model, TorchvisionFeatureModel)
    assert "fc.weight" in teacher.model.torchvision_state_dict()


def test_the_suite_is_offline():
    """The autouse guard in conftest.py: no weights can be fetched (empty hub cache, FEATCACHE_OFFLINE) and no socket
    leaves the machine."""
    import socket

    with pytest.raises(WeightsError, match="FEATCACHE_OFFLINE"):
        create_teacher("resnet18", weights="DEFAULT")
    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("203.0.113.1", 443), timeout=1)


def test_a_featcache_checkpoints_recorded_view_is_read_and_a_bad_one_named(tmp_path):
    from featcache.models.teachers import recorded_view, teacher_entry
    from featcache.specs import TransformSpec

    view = TransformSpec(image_size=24, resize=28, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": {}, "featcache": {"teacher": "convnet", "transform": view.to_dict()}}, path)
    entry = teacher_entry("convnet")
    assert recorded_view(entry, resolve_weights("convnet", str(path))) == view
    torch.save({"state_dict": {}}, path)  # anyone's checkpoint: no view recorded
    assert recorded_view(entry, resolve_weights("convnet", str(path))) is None
    assert recorded_view(entry, resolve_weights("convnet", "random")) is None
    torch.save({"state_dict": {}, "featcache": {"transform": {**view.to_dict(), "resize": 8}}}, path)
    with pytest.raises(WeightsError, match="recorded view is not a transform"):
        recorded_view(entry, resolve_weights("convnet", str(path)))


def test_a_run_teachers_recorded_view_is_the_one_its_run_evaluated_on(finished_run):
    import json

    from featcache.models.teachers import recorded_view, teacher_entry
    from featcache.specs import TransformSpec

    evaluated = TransformSpec.from_dict(json.loads((finished_run / "config.json").read_text())["transform"])
    assert recorded_view(teacher_entry("run"), resolve_weights("run", str(finished_run))) == evaluated
