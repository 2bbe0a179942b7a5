"""Student contract (timm's test_models pattern), the TS-Learning / multi-teacher options, and translators.

CPU only, batch 2, 32-px inputs for the small-input variants and 64/75 px for the others.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featcache.errors import ConfigError, ModelError
from featcache.models.students import FCLayer, Student, create_student, list_students
from featcache.models.translators import LinearTranslator, UpsampleTranslator, make_translator

STUDENTS = ["alexnet", "convnet_small", "inceptionv3", "lenet5", "mobilenetv2", "mobilenetv3", "mobilenetv3_small",
            "resnet18"]
C = 10

# name -> (body_dim, native layer widths) of the small-input variant (32 px) and of the full one (at FULL_SIZE).
NATIVE = {
    "alexnet": ((4096, [4096, 4096]), (9216, [4096, 4096])),
    "convnet_small": ((64, []), (64, [])),
    "inceptionv3": ((2048, []), (2048, [])),
    "lenet5": ((400, [120, 84]), (400, [120, 84])),
    "mobilenetv2": ((1280, []), (1280, [])),
    "mobilenetv3": ((960, [1280]), (960, [1280])),
    "mobilenetv3_small": ((576, [1024]), (576, [1024])),
    "resnet18": ((512, []), (512, [])),
}
FULL_SIZE = {"inceptionv3": 75}  # others: 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tensors are tiny, and with 2 cores shared with other processes OpenMP's
    spin-waiting made this file ~10x slower (134 s vs 14 s) on the dev machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _manual_head(student: Student, level: int, f: torch.Tensor) -> torch.Tensor:
    """l0∘l1∘…∘l_{level−1}(f) written out from the stored [l_T, ..., l_1] without the helper."""
    T = student.num_levels
    for i in range(level - 1, 0, -1):  # l_{level-1}, ..., l_1
        layer = student.layers[T - i]
        f = layer.act(layer.fc(f))
    return student.classifier(f)


def test_registered_students_are_listed():
    assert set(STUDENTS) <= set(list_students())
    assert set(NATIVE) >= set(list_students())  # a new student needs a row in NATIVE


# -- contract ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_contract_small_input(name):
    student = create_student(name, C, image_size=32).eval()
    body_dim, dims = NATIVE[name][0]
    assert student.small_input
    assert (student.body_dim, student.layer_dims, student.num_levels) == (body_dim, dims, len(dims))
    assert student.num_features == (dims[-1] if dims else body_dim) == student.level_dim(1)
    x = _x()
    with torch.no_grad():
        body = student.forward_body(x)
        f = student.forward_features(x)
        logits = student(x)
        outs, logits_all = student.forward_all(x)
        layer_outs = student.forward_layers(x)
    assert body.shape == (2, body_dim)
    assert f.shape == (2, student.num_features)
    assert logits.shape == (2, C) and student.num_classes == C
    assert [o.shape[-1] for o in outs] == [o.shape[-1] for o in layer_outs] == dims
    torch.testing.assert_close(logits_all, logits)
    torch.testing.assert_close(student.forward_head(f), logits)
    if dims:
        torch.testing.assert_close(outs[-1], f)
        for a, b in zip(outs, layer_outs, strict=True):
            torch.testing.assert_close(a, b)
    else:
        torch.testing.assert_close(f, body)
    for pname, _ in student.named_parameters():
        assert pname.split(".")[0] in ("body", "layers", "classifier"), pname
    line = student.describe()
    assert name in line and f"{C} classes" in line and "params" in line and "\n" not in line


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_full_size_variant(name):
    size = FULL_SIZE.get(name, 64)
    student = create_student(name, C, image_size=size, small_input=False).eval()
    body_dim, dims = NATIVE[name][1]
    assert not student.small_input
    assert (student.body_dim, student.layer_dims) == (body_dim, dims)
    with torch.no_grad():
        f = student.forward_features(_x(size))
        logits = student.forward_head(f)
    assert f.shape == (2, student.num_features) and logits.shape == (2, C)


@pytest.mark.slow
def test_small_input_auto_threshold():
    assert create_student("lenet5", C, image_size=64).small_input
    assert not create_student("resnet18", C, image_size=65).small_input
    assert not create_student("resnet18", C, image_size=32, small_input=False).small_input
    assert create_student("resnet18", C, image_size=224, small_input=True).small_input


def _map_size(student: Student, module: nn.Module, size: int = 32) -> tuple[int, int]:
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        student.eval().forward_body(_x(size))
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    "name,path,small,full",
    [
        ("resnet18", "layer4", (4, 4), (1, 1)),
        ("mobilenetv2", "features", (2, 2), (1, 1)),
        ("mobilenetv3", "features", (2, 2), (1, 1)),
        ("mobilenetv3_small", "features", (2, 2), (1, 1)),
        ("alexnet", "features", (4, 4), None),
        ("lenet5", "pool2", (5, 5), (5, 5)),
    ],
)
def test_small_input_final_maps_at_32px(name, path, small, full):
    s = create_student(name, C, image_size=32)
    assert _map_size(s, s.body.get_submodule(path)) == small
    if full is not None:
        f = create_student(name, C, image_size=32, small_input=False)
        assert _map_size(f, f.body.get_submodule(path)) == full


@pytest.mark.slow
def test_small_variant_changes():
    r = create_student("resnet18", C, image_size=32)
    assert (r.body.conv1.kernel_size, r.body.conv1.stride, r.body.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(r.body.maxpool, nn.Identity)
    for name in ("mobilenetv2", "mobilenetv3", "mobilenetv3_small"):
        assert create_student(name, C, image_size=32).body.features[0][0].stride == (1, 1)
        assert create_student(name, C, image_size=224).body.features[0][0].stride == (2, 2)
    a = create_student("alexnet", C, image_size=32)
    convs = [m for m in a.body.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in a.body.features) == 3


def test_inception_upsamples_small_inputs():
    s = create_student("inceptionv3", C, image_size=32).eval()
    seen = []
    s.body.Conv2d_1a_3x3.register_forward_pre_hook(lambda m, i: seen.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        assert s(_x(32)).shape == (2, C)
        s(_x(75))
    assert seen == [(75, 75), (75, 75)]


def test_convnet_small_is_the_convnet_teacher_body_at_half_width():
    from featcache.models.teachers import ConvNet

    s = create_student("convnet_small", C, image_size=32)
    convs = [m for m in s.body.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64]
    teacher = ConvNet(C, width=16)  # same layout, so the same parameter shapes, in the same order
    assert [p.shape for p in s.body.parameters()] == [p.shape for p in teacher.body.parameters()]
    with torch.no_grad():
        assert s.eval().forward_body(_x(16)).shape == (2, 64)  # global pooling: any side >= 8 px works
    with pytest.raises(ModelError, match="--image-size 4"):
        create_student("convnet_small", C, image_size=4)


def test_lenet5_other_sizes_pool_to_5x5():
    s = create_student("lenet5", C, image_size=48).eval()
    with torch.no_grad():
        assert s.forward_body(_x(48)).shape == (2, 400)
        assert s.forward_body(_x(16)).shape == (2, 400)


@pytest.mark.slow
def test_dropout_placement_and_override():
    m = create_student("mobilenetv3", C, image_size=32)
    assert isinstance(m.head_drop, nn.Dropout) and m.head_drop.p == 0.2 and not m.head_drop.inplace
    assert all(isinstance(layer.dropout, nn.Identity) for layer in m.layers)
    a = create_student("alexnet", C, image_size=32)
    assert [layer.dropout.p for layer in a.layers] == [0.5, 0.5] and isinstance(a.head_drop, nn.Identity)
    assert create_student("inceptionv3", C, image_size=32).head_drop.p == 0.5
    assert isinstance(create_student("lenet5", C, image_size=32).head_drop, nn.Identity)
    a0 = create_student("alexnet", C, image_size=32, dropout=0.0)
    assert not any(isinstance(mod, nn.Dropout) for mod in a0.modules())
    assert create_student("resnet18", C, image_size=32, dropout=0.3).head_drop.p == 0.3


def test_alias_and_unknown_student():
    assert create_student("mobilenetv3_large", C, image_size=32).name == "mobilenetv3"
    with pytest.raises(ModelError) as err:
        create_student("vgg_nope", C)
    msg = str(err.value)
    assert "--student" in msg and "vgg_nope" in msg and "mobilenetv3" in msg and "lenet5" in msg


def test_bad_options_are_model_errors():
    with pytest.raises(ModelError, match="image-size"):
        create_student("alexnet", C, image_size=32, small_input=False)  # torchvision AlexNet needs >= 63 px
    with pytest.raises(ModelError, match="feature-dim"):
        create_student("lenet5", C, feature_dim=0)


# -- TS-Learning: the modified feature layer -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mobilenetv3", "resnet18", "lenet5"])
@pytest.mark.parametrize("D", [2048, 10240])
def test_feature_dim_adapts_the_feature_layer(name, D):
    student = create_student(name, C, feature_dim=D, image_size=32).eval()
    body_dim, native = NATIVE[name][0]
    expected = native[:-1] + [D] if native else [D]
    assert student.layer_dims == expected and student.num_features == D == student.level_dim(1)
    assert student.classifier.in_features == D
    assert student.layers[-1].fc.in_features == (native[-2] if len(native) > 1 else body_dim)
    with torch.no_grad():
        g = student.forward_features(_x())
    assert g.shape == (2, D)
    assert student.forward_head(g).shape == (2, C)


def test_feature_dim_equal_to_native_width_changes_nothing():
    assert create_student("resnet18", C, feature_dim=512, image_size=32).layer_dims == []
    assert create_student("mobilenetv3", C, feature_dim=1280, image_size=32).layer_dims == [1280]


def test_mobilenetv3_added_layers_use_hardswish():
    s = create_student("mobilenetv3", C, feature_dim=2048, levels=2, image_size=32)
    assert all(isinstance(layer.act, nn.Hardswish) for layer in s.layers)
    r = create_student("resnet18", C, feature_dim=2048, image_size=32)
    assert isinstance(r.layers[0].act, nn.ReLU)


# -- multi-teacher: levels and head_from ---------------------------------------------------------------------


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("T", [2, 3])
def test_levels_and_head_from(name, T):
    student = create_student(name, C, levels=T, image_size=32).eval()
    body_dim, native = NATIVE[name][0]
    added = max(0, T - len(native))
    assert student.num_levels == max(T, len(native))
    assert student.layer_dims == [body_dim] * added + native  # extra Linear(w, w) at the l_T side, w = body_dim
    assert [layer.in_features for layer in student.layers[:added]] == [body_dim] * added
    with torch.no_grad():
        outs, logits = student.forward_all(_x())
        for i in range(1, student.num_levels + 1):
            f = torch.randn(2, student.level_dim(i))
            torch.testing.assert_close(student.head_from(i, f), _manual_head(student, i, f))
            # Classifying the student's own level-i output through the remaining layers gives its logits.
            assert outs[len(outs) - i].shape[-1] == student.level_dim(i)
            torch.testing.assert_close(student.head_from(i, outs[len(outs) - i]), logits)
    with pytest.raises(ValueError):
        student.head_from(student.num_levels + 1, torch.randn(2, body_dim))
    with pytest.raises(ValueError):
        student.level_dim(0)


def test_levels_never_remove_native_layers_and_combine_with_feature_dim():
    assert create_student("lenet5", C, levels=1, image_size=32).layer_dims == [120, 84]
    s = create_student("resnet18", C, feature_dim=2048, levels=2, image_size=32)
    assert s.layer_dims == [512, 2048] and s.level_dim(2) == 512 and s.level_dim(1) == 2048
    m = create_student("mobilenetv3", C, feature_dim=2048, levels=3, image_size=32)
    assert m.layer_dims == [960, 960, 2048]


def test_head_from_without_layers_is_the_classifier():
    s = create_student("resnet18", C, image_size=32).eval()
    f = torch.randn(2, 512)
    assert s.num_levels == 0 and s.level_dim(1) == 512
    torch.testing.assert_close(s.head_from(1, f), s.classifier(f))
    outs, logits = s.forward_all(_x())
    assert outs == [] and logits.shape == (2, C)


# -- gradients ---------------------------------------------------------------------------------------------------


def _grads(module: nn.Module) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def test_head_from_gradients_reach_only_the_remaining_layers():
    torch.manual_seed(0)
    s = create_student("lenet5", C, levels=3, image_size=32)  # [400] + [120, 84]: l_3, l_2, l_1
    s.train()
    t = torch.randn(2, s.level_dim(2), requires_grad=True)  # a translated teacher feature at level 2
    s.head_from(2, t).square().sum().backward()
    got = _grads(s)
    for n, has in got.items():
        should = n.startswith(("classifier.", "layers.2."))  # l_0 and l_1
        assert has == should, n
    assert t.grad is not None and t.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lenet5", "mobilenetv3_small", "resnet18"])
def test_body_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    s = create_student(name, C, levels=2, feature_dim=64, image_size=32, dropout=0.0)
    s.train()
    outs, logits = s.forward_all(_x())
    (logits.square().sum() + sum(o.square().mean() for o in outs)).backward()
    missing = [n for n, p in s.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    zero = [n for n, p in s.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []


def test_multi_teacher_loss_trains_student_and_translators():
    """Eq. 5 with two teachers (10240-d and 2048-d) on lenet5: every term backpropagates where it should."""
    torch.manual_seed(0)
    s = create_student("lenet5", C, levels=2, image_size=32)
    ts = nn.ModuleList(
        [make_translator("linear", 10240, s.level_dim(1)), make_translator("upsample", 2048, s.level_dim(2))]
    )
    feats = [torch.randn(2, 10240).half(), torch.randn(2, 2048).half()]
    y = torch.tensor([1, 3])
    outs, logits = s.forward_all(_x())
    loss = nn.functional.cross_entropy(logits, y)
    for i in (1, 2):
        t_i = ts[i - 1](feats[i - 1])
        loss = loss + nn.functional.mse_loss(t_i, outs[len(outs) - i])
        loss = loss + nn.functional.cross_entropy(s.head_from(i, t_i), y)
    loss.backward()
    assert ts[0].weight.grad is not None and ts[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in s.parameters())


# -- translators -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "upsample"])
@pytest.mark.parametrize("din,dout", [(10240, 2048), (2048, 1280), (84, 2048)])
def test_translator_shapes_and_float16_input(kind, din, dout):
    t = make_translator(kind, din, dout)
    f = torch.rand(2, din).half()
    out = t(f)
    assert out.shape == (2, dout) and out.dtype == torch.float32
    assert isinstance(t, LinearTranslator if kind == "linear" else UpsampleTranslator)


def test_linear_translator_is_a_linear_layer():
    t = make_translator("linear", 6, 4)
    assert {n for n, _ in t.named_parameters()} == {"weight", "bias"}
    f = torch.randn(3, 6)
    torch.testing.assert_close(t(f), f @ t.weight.T + t.bias)
    assert t.half()(f).dtype == torch.float16  # follows its own dtype


def test_upsample_translator():
    t = make_translator("upsample", 2048, 2048)
    assert list(t.parameters()) == [] and t.state_dict() == {}
    f = torch.randn(2, 2048)
    assert torch.equal(t(f), f)  # identity
    assert torch.equal(t(f.half()), f.half().float())
    up = make_translator("upsample", 4, 8)
    ramp = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    expected = torch.nn.functional.interpolate(ramp[:, None], size=8, mode="linear", align_corners=False)[:, 0]
    torch.testing.assert_close(up(ramp), expected)
    down = make_translator("upsample", 10240, 2048)
    torch.testing.assert_close(down(torch.full((2, 10240), 3.0)), torch.full((2, 2048), 3.0))
    g = torch.randn(2, 10240, requires_grad=True)
    down(g).sum().backward()
    assert g.grad is not None
    with pytest.raises(ValueError):
        down(torch.randn(2, 100))


def test_unknown_translator():
    with pytest.raises(ConfigError) as err:
        make_translator("conv", 10, 5)
    msg = str(err.value)
    assert "--translator" in msg and "linear" in msg and "upsample" in msg


def test_fclayer_names():
    layer = FCLayer(4, 3, nn.ReLU, dropout=0.5)
    assert {n for n, _ in layer.named_parameters()} == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("name, blocks", [("mobilenetv3", 10), ("mobilenetv3_small", 6), ("mobilenetv2", 10),
                                          ("resnet18", 8), ("convnet_small", 0)])
def test_zero_init_residual_makes_every_residual_block_the_identity(name, blocks):
    from featcache.models.students import zero_residual_branches

    student = create_student(name, num_classes=3, image_size=32, zero_init_residual=True)
    assert zero_residual_branches(student.body) == blocks  # (again: the same blocks, already zero)
    plain = create_student(name, num_classes=3, image_size=32)
    assert any(m.weight.abs().sum() > 0 for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    for block in student.body.modules():
        if getattr(block, "use_res_connect", False):
            x = torch.randn(2, next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels, 8, 8)
            block.eval()
            assert torch.equal(block(x), x)  # the branch adds exactly zero
