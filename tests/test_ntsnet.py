"""NTS-Net teacher: shapes, original-checkpoint compatibility, anchors, batched selection, crops, consistency.

CPU only, random weights, small inputs. Most tests shrink the part crops (part_size=64 instead of the original's
224) to stay fast; the crop and anchor tests, and one forward, use the original geometry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from featcache.errors import ModelError, WeightsError
from featcache.models.ntsnet import (
    NTSNet,
    NTSOutput,
    build_ntsnet,
    generate_anchors,
    hard_nms_topk,
    hard_nms_topk_batched_nms,
)

SIZE = 128  # input side of the cheap tests
PART = 64  # part crop side of the cheap tests


@pytest.fixture(scope="module", autouse=True)
def _no_onednn():
    """oneDNN JIT-compiles kernels for every new input shape (seconds each on 2 cores); these tests use many
    shapes once each, where the native kernels are several times faster end to end."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@pytest.fixture(scope="module")
def model() -> NTSNet:
    torch.manual_seed(0)
    return NTSNet(num_classes=10, image_size=SIZE, part_size=PART).eval()


@pytest.fixture(scope="module")
def small() -> NTSNet:
    """cat_num=2, top_n=3: cheaper for the tests that only need the structure."""
    torch.manual_seed(1)
    return NTSNet(num_classes=5, top_n=3, cat_num=2, image_size=SIZE, part_size=PART).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


# -- expected layout of the original release's checkpoint (attention_net.state_dict()) ---------------------------


def original_state_shapes(num_classes: int = 200, cat_num: int = 4) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of yangze0930/NTS-Net's ``net_state_dict``, written out from its model.py / resnet.py."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    p = "pretrained_model"
    shapes[f"{p}.conv1.weight"] = (64, 3, 7, 7)
    bn(f"{p}.bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
        for bi in range(blocks):
            q = f"{p}.layer{li}.{bi}"
            shapes[f"{q}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{q}.bn1", planes)
            shapes[f"{q}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{q}.bn2", planes)
            shapes[f"{q}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{q}.bn3", planes * 4)
            if bi == 0:
                shapes[f"{q}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{q}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes[f"{p}.fc.weight"] = (num_classes, 2048)
    shapes[f"{p}.fc.bias"] = (num_classes,)
    for name, shape in {
        "down1": (128, 2048, 3, 3),
        "down2": (128, 128, 3, 3),
        "down3": (128, 128, 3, 3),
        "tidy1": (6, 128, 1, 1),
        "tidy2": (6, 128, 1, 1),
        "tidy3": (9, 128, 1, 1),
    }.items():
        shapes[f"proposal_net.{name}.weight"] = shape
        shapes[f"proposal_net.{name}.bias"] = (shape[0],)
    shapes["concat_net.weight"] = (num_classes, 2048 * (cat_num + 1))
    shapes["concat_net.bias"] = (num_classes,)
    shapes["partcls_net.weight"] = (num_classes, 2048)
    shapes["partcls_net.bias"] = (num_classes,)
    return shapes


@pytest.mark.slow
def test_state_dict_matches_original_release():
    expected = original_state_shapes(200, 4)
    got = {k: tuple(v.shape) for k, v in NTSNet().state_dict().items()}
    assert set(got) == set(expected)
    assert got == expected
    assert len(got) == 336
    assert {k.split(".")[0] for k in got} == {"pretrained_model", "proposal_net", "concat_net", "partcls_net"}
    assert got["pretrained_model.fc.weight"] == (200, 2048)
    assert got["proposal_net.tidy3.weight"] == (9, 128, 1, 1)
    assert got["concat_net.weight"] == (200, 10240)
    assert got["partcls_net.weight"] == (200, 2048)


def _save_original_format(path, model: NTSNet, drop_num_batches_tracked: bool = False) -> None:
    state = {
        f"module.{k}": v.clone()
        for k, v in model.state_dict().items()
        if not (drop_num_batches_tracked and k.endswith("num_batches_tracked"))
    }
    torch.save(
        {"epoch": 1, "train_loss": 0.0, "test_loss": 0.0, "train_acc": 0.0, "test_acc": 0.0, "net_state_dict": state},
        path,
    )


@pytest.mark.slow
def test_checkpoint_roundtrip_infers_num_classes(tmp_path, small):
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        small.proposal_net.tidy1.bias.normal_()  # make the heads non-default so a bad load would show
        f_src, l_src = small(x)
    ckpt = tmp_path / "nts.ckpt"
    _save_original_format(ckpt, small)

    loaded = build_ntsnet(weights=ckpt, part_size=PART).eval()  # num_classes, cat_num from concat_net.weight
    assert loaded.num_classes == 5 and loaded.cat_num == 2 and loaded.num_features == 6144
    for k, v in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        f, logits = loaded(x)
    torch.testing.assert_close(f, f_src, rtol=0, atol=0)
    torch.testing.assert_close(logits, l_src, rtol=0, atol=0)

    with pytest.raises(WeightsError, match="shape mismatch"):
        build_ntsnet(num_classes=7, weights=ckpt)  # explicit class count wins, and does not fit


@pytest.mark.slow
def test_checkpoint_without_num_batches_tracked(tmp_path, small):
    ckpt = tmp_path / "old.ckpt"
    _save_original_format(ckpt, small, drop_num_batches_tracked=True)
    loaded = build_ntsnet(weights=ckpt, top_n=3)
    assert loaded.top_n == 3
    torch.testing.assert_close(loaded.concat_net.weight, small.concat_net.weight)


def test_not_an_nts_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"fc.weight": torch.zeros(3, 4)}, path)
    with pytest.raises(WeightsError, match="concat_net"):
        build_ntsnet(weights=path)


@pytest.mark.slow
def test_random_init_defaults():
    m = build_ntsnet()
    assert (m.num_classes, m.cat_num, m.top_n, m.num_features, m.default_image_size) == (200, 4, 6, 10240, 448)


# -- shapes ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_forward_shapes(model, images):
    with torch.no_grad():
        f, logits = model(images)
    assert f.shape == (2, 10240) and model.num_features == 10240
    assert logits.shape == (2, 10)
    assert torch.isfinite(f).all()


@pytest.mark.slow
def test_forward_original_geometry():
    """448x448 input, 224x224 parts, 200 classes: the configuration of the released checkpoint."""
    torch.manual_seed(2)
    m = NTSNet().eval()
    with torch.no_grad():
        f, logits = m(torch.randn(1, 3, 448, 448))
    assert f.shape == (1, 10240) and logits.shape == (1, 200)
    assert torch.isfinite(logits).all()


def test_forward_shapes_cat_num_2_and_non_square(small):
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        f, logits = small(x)
    assert f.shape == (1, 6144) and small.num_features == 6144
    assert logits.shape == (1, 5)


def test_too_small_input_is_rejected(small):
    with pytest.raises(ModelError, match="minimum"):
        small(torch.zeros(1, 3, 16, 64))
    with pytest.raises(ModelError):
        NTSNet(top_n=2, cat_num=4)


# -- anchors -----------------------------------------------------------------------------------------------------


def _reference_anchors(side: int) -> np.ndarray:
    """Independent float32 rebuild of the original's (edge_anchors + 224).astype(int), (y0, x0, y1, x1)."""
    levels = [
        (32, 48, [2 ** (1 / 3), 2 ** (2 / 3)]),
        (64, 96, [2 ** (1 / 3), 2 ** (2 / 3)]),
        (128, 192, [1, 2 ** (1 / 3), 2 ** (2 / 3)]),
    ]
    rows = []
    for stride, size, scales in levels:
        n = math.ceil(side / stride)
        for scale in scales:
            for ratio in (0.667, 1, 1.5):
                h = np.float32(size * scale / ratio**0.5)
                w = np.float32(size * scale * ratio**0.5)
                for i in range(n):
                    for j in range(n):
                        cy, cx = np.float32(stride / 2 + i * stride), np.float32(stride / 2 + j * stride)
                        half_h, half_w = h / np.float32(2), w / np.float32(2)
                        box = [cy - half_h, cx - half_w, cy + half_h, cx + half_w]
                        rows.append([int(np.float32(v) + np.float32(224)) for v in box])
    return np.array(rows)


@pytest.mark.slow
def test_anchor_count_and_values_at_448():
    a = generate_anchors(448, 448)
    assert a.shape == (1614, 4)  # 14*14*6 + 7*7*6 + 4*4*9
    assert NTSNet(image_size=448).num_anchors(448, 448) == 1614
    np.testing.assert_array_equal(a.numpy(), _reference_anchors(448))
    # first anchor: centre (16, 16), scale 2^(1/3), ratio 0.667: h = 74.05, w = 49.39 -> (202.98, 215.31, ...)
    assert a[0].tolist() == [202, 215, 277, 264]
    assert generate_anchors(224, 224).shape == (7 * 7 * 6 + 4 * 4 * 6 + 2 * 2 * 9, 4)


def _reference_hard_nms(scores: torch.Tensor, boxes_yx: torch.Tensor, k: int, thr: float = 0.25) -> list[int]:
    """Per-image loop as in the original: best remaining box, drop boxes with IoU >= thr to it, repeat."""
    order = torch.sort(scores.double(), descending=True, stable=True).indices.tolist()
    b = boxes_yx.double()
    picked: list[int] = []
    while order and len(picked) < k:
        i = order.pop(0)
        picked.append(i)
        rest = torch.tensor(order, dtype=torch.long)
        if not order:
            break
        lo = torch.maximum(b[rest, :2], b[i, :2])
        hi = torch.minimum(b[rest, 2:], b[i, 2:])
        inter = (hi - lo).clamp(min=0).prod(1)
        area = (b[rest, 2:] - b[rest, :2]).prod(1)
        iou = inter / (area + (b[i, 2:] - b[i, :2]).prod() - inter)
        order = [o for o, v in zip(order, iou.tolist(), strict=True) if v < thr]
    while len(picked) < k:
        picked.append(picked[0])
    return picked


@pytest.mark.parametrize("selection", [hard_nms_topk, hard_nms_topk_batched_nms])
def test_batched_selection_matches_per_image_reference(selection):
    yx = generate_anchors(448, 448)
    boxes = yx[:, [1, 0, 3, 2]].float()
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(5, yx.shape[0], generator=g)
    scores[3] = torch.linspace(0, 1, yx.shape[0])  # a structured row too
    got = selection(scores, boxes, 6)
    assert got.shape == (5, 6) and got.dtype == torch.int64
    for i in range(5):
        assert got[i].tolist() == _reference_hard_nms(scores[i], yx, 6), i
    assert torch.equal(selection(scores, boxes, 4), got[:, :4])  # greedy NMS is prefix-consistent


@pytest.mark.parametrize("selection", [hard_nms_topk, hard_nms_topk_batched_nms])
def test_selection_threshold_is_inclusive_and_pads(selection):
    # box 1 lies inside box 0 with IoU exactly 0.25 -> suppressed (original: keep only IoU < 0.25)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 5, 5], [20, 20, 30, 30], [21, 21, 31, 31]], dtype=torch.float32)
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    got = selection(scores, boxes, 4)
    # image 0: 0, (1 suppressed), 2, (3 suppressed: IoU 81/119) -> pad with the best box
    assert got[0].tolist() == [0, 2, 0, 0]
    # image 1: 3, (2 suppressed), 1, (0 suppressed by 1: IoU 0.25)
    assert got[1].tolist() == [3, 1, 3, 3]


# -- crops -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("side", [224, 400])  # at 400 some stride-128 anchors run past the 224 pad: clipped
def test_crops_match_original_slice_and_interpolate(side):
    m = NTSNet(image_size=side)
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(11))
    yx = generate_anchors(side, side)
    a = yx.shape[0]
    index = torch.tensor([[0, 300, a - 1, a - 9], [17, 250, a - 5, a - 13]])
    parts = m.crop_parts(images, index).view(2, 4, 3, 224, 224)
    padded = F.pad(images, (224, 224, 224, 224))
    clipped = 0
    for i in range(2):
        for j in range(4):
            y0, x0, y1, x1 = yx[index[i, j]].tolist()
            clipped += y1 > padded.shape[-2] or x1 > padded.shape[-1]
            crop = padded[i : i + 1, :, y0:y1, x0:x1]
            ref = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=True)
            torch.testing.assert_close(parts[i, j], ref[0], rtol=0, atol=5e-4)
    assert clipped == (4 if side == 400 else 0)


def test_forward_matches_per_image_original_pipeline(model, images):
    """The whole eval forward against a per-image re-run of the original's steps (loops are fine in a test)."""
    with torch.no_grad():
        features, logits = model(images)
        yx = generate_anchors(SIZE, SIZE)
        padded = F.pad(images, (224, 224, 224, 224))
        for i in range(images.shape[0]):
            _, fmap, whole = model.backbone(images[i : i + 1])
            scores = model.proposal_net(fmap)[0]
            top = _reference_hard_nms(scores, yx, model.cat_num)
            crops = []
            for a in top:
                y0, x0, y1, x1 = yx[a].tolist()
                crop = padded[i : i + 1, :, y0:y1, x0:x1]
                crops.append(F.interpolate(crop, size=(PART, PART), mode="bilinear", align_corners=True))
            _, _, part_features = model.backbone(torch.cat(crops))
            ref = torch.cat([part_features.reshape(1, -1), whole], dim=1)
            torch.testing.assert_close(features[i : i + 1], ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
            torch.testing.assert_close(logits[i : i + 1], model.concat_net(ref), rtol=1e-3, atol=1e-3)


# -- batching, modes, memory format ------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_consistency_and_determinism(model, images):
    with torch.no_grad():
        f, logits = model(images)
        f2, _ = model(images)
        singles = [model(images[i : i + 1]) for i in range(images.shape[0])]
    assert torch.equal(f, f2)  # eval mode is deterministic (no dropout)
    for i, (fi, li) in enumerate(singles):
        torch.testing.assert_close(fi, f[i : i + 1], rtol=1e-4, atol=1e-4 * f.abs().max().item())
        torch.testing.assert_close(li, logits[i : i + 1], rtol=1e-4, atol=1e-4)


def test_batched_nms_selection_gives_the_same_features(model, images):
    with torch.no_grad():
        f_greedy, _ = model(images)
        model.selection = "batched_nms"
        try:
            f_tv, _ = model(images)
        finally:
            model.selection = "greedy"
    torch.testing.assert_close(f_tv, f_greedy, rtol=0, atol=0)


def test_channels_last_input(small):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        f, logits = small(x)
        f_cl, logits_cl = small(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(f_cl, f, rtol=1e-4, atol=1e-4 * f.abs().max().item())
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_autocast_bf16(small):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        f, logits = small(x)
    assert f.shape == (1, 6144) and logits.shape == (1, 5)
    assert torch.isfinite(f.float()).all()


def test_dropout_only_in_train_mode(small):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        small.train()
        try:
            a, b = small.backbone(x)[2], small.backbone(x)[2]
        finally:
            small.eval()
        c, d = small.backbone(x)[2], small.backbone(x)[2]
    assert not torch.equal(a, b) and ((a == 0).float().mean() > 0.3)
    assert torch.equal(c, d)


@pytest.mark.slow
def test_forward_train_outputs(small, images):
    with torch.no_grad():
        out = small.forward_train(images)
        features, logits = small(images)
    assert isinstance(out, NTSOutput)
    raw, concat, part, index, prob = out  # unpacks like the original's list
    assert raw.shape == (2, 5) and concat.shape == (2, 5)
    assert part.shape == (2, 3, 5)
    assert index.shape == (2, 3) and index.dtype == torch.int64
    assert prob.shape == (2, 3)
    # the extraction path (cat_num parts only) agrees with the training path's first cat_num parts
    torch.testing.assert_close(concat, logits, rtol=1e-4, atol=1e-4)
    assert (prob[:, :-1] >= prob[:, 1:]).all()  # decreasing Navigator score

    small.train()
    try:
        out = small.forward_train(images)
        (out.raw_logits.sum() + out.concat_logits.sum() + out.part_logits.sum() + out.top_n_prob.sum()).backward()
    finally:
        small.eval()
        small.zero_grad(set_to_none=True)
    assert out.part_logits.shape == (2, 3, 5)


class _SyncOps(TorchDispatchMode):
    """Records ops that force a device->host sync on an accelerator (item/bool/nonzero/masked ops/unique)."""

    NAMES = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "unique_dim", "unique_consecutive")

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(n in name for n in self.NAMES):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_forward_has_no_host_syncs(small):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), _SyncOps() as rec:
        small(x)
    assert rec.seen == []
    # the detector is not vacuous: torchvision's batched_nms path does sync
    scores = torch.randn(2, 1614)
    boxes = generate_anchors(448, 448)[:, [1, 0, 3, 2]].float()
    with _SyncOps() as rec:
        hard_nms_topk_batched_nms(scores, boxes, 6)
    assert rec.seen
