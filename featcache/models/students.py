"""Students: a convolutional body, a stack of fully-connected layers [l_T, ..., l_1] and a classifier l_0.

    >>> from featcache.models.students import create_student
    >>> student = create_student("mobilenetv3", num_classes=10, feature_dim=2048, image_size=32)
    >>> g = student.forward_features(images)          # [B, 2048]: the TS-Learning "modified layer"
    >>> logits = student.forward_head(g)               # [B, 10]

docs/students.md specifies the layout (which layer each paper's method reads, widths, dropout, small-input stems)
and the registered architectures.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from featcache.errors import ConfigError, ModelError
from featcache.models.base import small_vgg_body
from featcache.models.registry import AloneRecipe, get_entry, list_models, register_model, unknown_model_error
from featcache.models.student_net import Arch, FCLayer, Student  # noqa: F401 - re-exported

KIND = "student"
SMALL_INPUT_MAX = 64  # small_input=None means image_size <= SMALL_INPUT_MAX
INCEPTION_MIN = 75


# -- factory -----------------------------------------------------------------------------------------------------


def create_student(
    name: str,
    num_classes: int,
    *,
    feature_dim: int | None = None,
    levels: int | None = None,
    small_input: bool | None = None,
    image_size: int = 224,
    dropout: float | None = None,
    zero_init_residual: bool = False,
) -> Student:
    """Build student ``name`` (random init, train mode). Options as in the module docstring."""
    entry = get_entry(KIND, name)
    if entry is None:
        raise unknown_model_error(KIND, name)
    if num_classes < 1:
        raise ModelError(f"student {name}: num_classes must be >= 1, got {num_classes}")
    if feature_dim is not None and feature_dim < 1:
        raise ModelError(f"--feature-dim must be >= 1, got {feature_dim}")
    if levels is not None and levels < 0:
        raise ModelError(f"student {name}: levels must be >= 0, got {levels}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ModelError(f"student {name}: dropout must be in [0, 1), got {dropout}")
    if entry.own_stem:
        if small_input:
            raise ModelError(f"--small-input: student {name} keeps its own stem; drop --small-input, or use a "
                             "featcache student for CIFAR-style stems")
        small = False
    else:
        small = image_size <= SMALL_INPUT_MAX if small_input is None else bool(small_input)
    arch: Arch = entry.builder(small=small, image_size=image_size, entry=entry)
    if zero_init_residual:
        zero_residual_branches(arch.body)
    layers = [FCLayer(i, o, arch.act, p) for i, o, p in _fc_specs(arch, feature_dim, levels, dropout)]
    head_dropout = arch.head_dropout if dropout is None else dropout
    return Student(
        entry.name,
        arch.body,
        arch.body_dim,
        layers,
        num_classes,
        head_dropout,
        small_input=small,
        upsample_to=arch.upsample_to,
        variant=arch.variant,
        default_image_size=entry.default_image_size,
        min_image_size=entry.min_image_size,
    )


def _fc_specs(arch: Arch, feature_dim: int | None, levels: int | None, dropout: float | None) -> list[list[Any]]:
    """The FC stack [l_T, ..., l_1] as (in, out, dropout) triples: the architecture's native layers, l_1 widened or
    narrowed to ``feature_dim`` (the TS-Learning "modified layer"), identity-width layers prepended up to
    ``levels``."""
    specs: list[list[Any]] = []
    prev = arch.body_dim
    for out, p in arch.native_layers:
        specs.append([prev, out, p if dropout is None else dropout])
        prev = out
    if feature_dim is not None and feature_dim != prev:
        if specs:
            specs[-1][1] = feature_dim
        else:
            specs.append([arch.body_dim, feature_dim, 0.0])
    if levels is not None and levels > len(specs):
        w = arch.body_dim
        specs = [[w, w, 0.0] for _ in range(levels - len(specs))] + specs
    return specs


def zero_residual_branches(body: nn.Module) -> int:
    """Zero the scale of the last batch norm on every residual branch (torchvision's ResNet blocks, the MobileNets'
    inverted residuals that add their input), so that each such block starts as the identity: Goyal et al., "Accurate,
    Large Minibatch SGD" (2017), §5.1, torchvision's ``zero_init_residual``. Returns how many were zeroed (0 for a
    network without residual blocks)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    zeroed = 0
    for block in body.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            branch: nn.Module | None = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        elif getattr(block, "use_res_connect", False):  # torchvision's MobileNetV2/V3 InvertedResidual
            branch = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        else:
            continue
        assert isinstance(branch, nn.BatchNorm2d)
        nn.init.zeros_(branch.weight)
        zeroed += 1
    return zeroed


def list_students() -> list[str]:
    return list_models(KIND)


# -- the students ------------------------------------------------------------------------------------------------


def _check_size(name: str, image_size: int, min_size: int, small: bool) -> None:
    """Refuse, before building, an input size the chosen variant cannot take."""
    if image_size < min_size:
        hint = "" if small else " (without the small-input variant, which takes inputs down to 32 px)"
        raise ModelError(f"--image-size {image_size} is below the {min_size} px that student {name}{hint} accepts")


def _strip(net: nn.Module, *attrs: str) -> nn.Module:
    for attr in attrs:
        setattr(net, attr, nn.Identity())
    return net


def _stem_stride_1(net: nn.Module) -> None:
    """MobileNets' small-input change: the first conv (features.0.0) gets stride 1."""
    conv = net.features[0][0]  # type: ignore[index]  # a torchvision MobileNet's Sequential
    assert isinstance(conv, nn.Conv2d)
    conv.stride = (1, 1)


# MobileNetV3-Large alone on a small set, e.g. the synthetic set's 2,000 images (docs/students.md, measured): with the
# papers' Adam 1e-3 it barely moves for its first epochs and needs 30 to pass 30 %; its residual branches started at
# zero (no warm-up needed then), AdamW 3e-3 with decoupled weight decay 0.05 and batches of 64 get there in 10.
MOBILENET_ALONE = AloneRecipe(epochs=10, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.05,
                              warmup_epochs=0, zero_init_residual=True)


@register_model(
    KIND,
    "mobilenetv3",
    default_image_size=224,
    description="MobileNetV3-Large: body 960 → [1280] hardswish → classifier (dropout 0.2)",
    aliases=("mobilenetv3_large",),
    alone=MOBILENET_ALONE,
)
def _mobilenetv3(small: bool, image_size: int, **_: Any) -> Arch:
    import torchvision

    net = torchvision.models.mobilenet_v3_large(weights=None)
    if small:
        _stem_stride_1(net)
    variant = "small-input" if small else ""
    return Arch(_strip(net, "classifier"), 960, [(1280, 0.0)], nn.Hardswish, 0.2, variant=variant)


@register_model(
    KIND,
    "mobilenetv3_small",
    default_image_size=224,
    description="MobileNetV3-Small: body 576 → [1024] hardswish → classifier (dropout 0.2)",
)
def _mobilenetv3_small(small: bool, image_size: int, **_: Any) -> Arch:
    import torchvision

    net = torchvision.models.mobilenet_v3_small(weights=None)
    if small:
        _stem_stride_1(net)
    variant = "small-input" if small else ""
    return Arch(_strip(net, "classifier"), 576, [(1024, 0.0)], nn.Hardswish, 0.2, variant=variant)


@register_model(
    KIND, "mobilenetv2", default_image_size=224,
    description="MobileNetV2: body 1280 → classifier (dropout 0.2)",
    alone=MOBILENET_ALONE,
)
def _mobilenetv2(small: bool, image_size: int, **_: Any) -> Arch:
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None)
    if small:
        _stem_stride_1(net)
    return Arch(_strip(net, "classifier"), 1280, [], nn.ReLU, 0.2, variant="small-input" if small else "")


@register_model(
    KIND,
    "lenet5",
    default_image_size=32,
    min_image_size=16,
    description="LeNet-5 (CIFAR): body 400 → [120, 84] relu → classifier",
)
def _lenet5(small: bool, image_size: int, **_: Any) -> Arch:
    _check_size("lenet5", image_size, 16, small=True)
    body = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 6, 5),
            relu1=nn.ReLU(inplace=True),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            relu2=nn.ReLU(inplace=True),
            pool2=nn.MaxPool2d(2),
            avgpool=nn.AdaptiveAvgPool2d(5),  # identity at 32 px
            flatten=nn.Flatten(1),
        )
    )
    return Arch(body, 400, [(120, 0.0), (84, 0.0)], nn.ReLU, 0.0)


CONVNET_SMALL_WIDTH = 16  # half the convnet teacher's width: a quarter of its convolution cost


@register_model(
    KIND,
    "convnet_small",
    default_image_size=32,
    min_image_size=8,
    description="small VGG-style CNN, widths 16/32/64 (the convnet teacher at half width): body 64 → classifier",
)
def _convnet_small(small: bool, image_size: int, **_: Any) -> Arch:
    _check_size("convnet_small", image_size, 8, small=True)
    body = nn.Sequential(small_vgg_body(CONVNET_SMALL_WIDTH), nn.AdaptiveAvgPool2d(1))
    return Arch(body, 4 * CONVNET_SMALL_WIDTH, [], nn.ReLU, 0.0)


def _small_alexnet() -> nn.Module:
    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

    features = nn.Sequential(
        *conv(3, 64), nn.MaxPool2d(2),
        *conv(64, 192), nn.MaxPool2d(2),
        *conv(192, 384), *conv(384, 256), *conv(256, 256), nn.MaxPool2d(2),
    )  # fmt: skip
    return nn.Sequential(OrderedDict(features=features, avgpool=nn.AdaptiveAvgPool2d(4), flatten=nn.Flatten(1)))


@register_model(
    KIND,
    "alexnet",
    default_image_size=224,
    min_image_size=32,
    description="AlexNet: body 9216 (small-input: 4096) → [4096, 4096] relu, dropout 0.5 before each → classifier",
)
def _alexnet(small: bool, image_size: int, **_: Any) -> Arch:
    if small:
        _check_size("alexnet", image_size, 8, small=True)
        return Arch(_small_alexnet(), 4096, [(4096, 0.5), (4096, 0.5)], nn.ReLU, 0.0, variant="small-input")
    _check_size("alexnet", image_size, 63, small=False)  # conv 11x11/4 and three 3x3/2 max-pools
    import torchvision

    net = _strip(torchvision.models.alexnet(weights=None), "classifier")
    return Arch(net, 9216, [(4096, 0.5), (4096, 0.5)], nn.ReLU, 0.0)


@register_model(
    KIND, "resnet18", default_image_size=224,
    description="ResNet-18: body 512 → classifier (small-input: CIFAR stem)",
)
def _resnet18(small: bool, image_size: int, **_: Any) -> Arch:
    import torchvision

    net = _strip(torchvision.models.resnet18(weights=None), "fc")
    if small:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
        net.maxpool = nn.Identity()
    return Arch(net, 512, [], nn.ReLU, 0.0, variant="small-input" if small else "")


@register_model(
    KIND,
    "inceptionv3",
    default_image_size=299,
    description="Inception-v3 (no aux head): body 2048 → classifier (dropout 0.5); inputs < 75 px upsampled",
    aliases=("inception_v3",),
)
def _inceptionv3(small: bool, image_size: int, **_: Any) -> Arch:
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net = _strip(net, "fc", "dropout")
    upsampled = image_size < INCEPTION_MIN
    variant = f"upsampled to {INCEPTION_MIN} px" if upsampled else ""
    return Arch(net, 2048, [], nn.ReLU, 0.5, upsample_to=INCEPTION_MIN, variant=variant)


def student_block_module(student: nn.Module, name: str) -> nn.Module:
    """A named module of the student's body (e.g. layer2 of resnet18, conv2 of lenet5): a block AKA bridges."""
    body = getattr(student, "body", student)
    try:
        return body.get_submodule(name)
    except AttributeError:
        names = ", ".join(n for n, _ in body.named_children())
        raise ConfigError(f"--student-blocks {name}: the student's body has no such module; it has: {names}") from None


def student_block_channels(student: nn.Module, names: list[str], image_size: int) -> list[int]:
    """Channels of the student's named body modules, from one forward pass on a blank image."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [student_block_module(student, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
             for n in names]
    try:
        was = student.training
        student.eval()
        with torch.no_grad():
            student(torch.zeros(1, 3, image_size, image_size))
        student.train(was)
    finally:
        for h in hooks:
            h.remove()
    for n in names:
        if seen[n].dim() != 4:
            raise ConfigError(f"--student-blocks {n}: its output is not a [B, C, H, W] feature map")
    return [int(seen[n].shape[1]) for n in names]
