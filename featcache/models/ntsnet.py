"""NTS-Net as a featcache teacher: batched, device-side, and key-compatible with the original release.

NTS-Net: Z. Yang, T. Luo, D. Wang, Z. Hu, J. Gao, L. Wang, "Learning to Navigate for Fine-grained
Classification", ECCV 2018 (reference code: github.com/yangze0930/NTS-Net).

The network (parameter names as in the original ``attention_net``, so ``torch.load(ckpt)['net_state_dict']``
loads with strict key matching):

* ``pretrained_model`` -- a ResNet-50 (torchvision layout: conv1, bn1, layer1..layer4, fc -> num_classes). One pass
  gives the raw logits, the layer4 map and the pooled 2048-d feature (dropout p=0.5 on it, train mode only).
* ``proposal_net`` -- the Navigator: down1 (3x3, 2048->128), down2/down3 (3x3 stride 2, 128->128), ReLU after each,
  and 1x1 "tidy" heads giving 6/6/9 informativeness scores per cell at strides 32/64/128. The scores line up with
  a fixed anchor set (sizes 48/96/192, scales 2^(1/3), 2^(2/3) [and 1 at stride 128], aspect ratios
  0.667/1/1.5; 1614 anchors for a 448x448 input).
* Hard NMS (IoU >= 0.25 suppresses) keeps the ``top_n`` (PROPOSAL_NUM=6) most informative anchors per image, in
  decreasing score order; each is cropped from the image zero-padded by 224 pixels and resized to 224x224
  (bilinear, align_corners=True); the crops go through the same ResNet-50.
* ``concat_net`` -- Linear(2048 * (cat_num + 1), C) on [part_1, ..., part_cat_num, whole image] (CAT_NUM=4: the
  10240-d feature this teacher exports); ``partcls_net`` -- Linear(2048, C) on each part (training loss only).

Why batched. The original selects anchors per image in numpy (``.cpu()`` of the scores, a Python NMS loop, then
a Python double loop of crop + ``F.interpolate``), which serialises the GPU every batch. Here everything stays on
the device: anchors are built once per input size and cached, the Navigator scores all anchors of all images in
one pass, the top-k hard NMS runs for the whole batch as k rounds of [B, A] tensor ops (no host sync, no
per-image loop; ``selection="batched_nms"`` uses ``torchvision.ops.batched_nms`` instead), and one
``torchvision.ops.roi_align`` call crops every part of every image before one backbone pass over all of them.

Differences from the original, numerically:

* Crops use ``roi_align`` (sampling_ratio=1, aligned=False) on the image padded by 1 zero pixel, with boxes
  placed so that every sample lands exactly where the original's integer slice of the 224-padded image +
  ``F.interpolate(size=224, mode='bilinear', align_corners=True)`` samples (outside the 1-pixel border both
  read zeros). The crops therefore agree with the original's up to float32 rounding of the sampling
  coordinates: <= ~2e-4 absolute even on N(0, 1) pixel noise (less on natural images); with the same anchors
  picked, features and logits agree to ~1e-6 relative (measured at 448 with random weights).
* The original ResNet applies ``nn.Dropout(p=0.5)`` as a *freshly built module*, i.e. always in training mode,
  so its "eval" outputs are random. Here dropout follows ``model.training``: eval outputs are deterministic and
  equal the original with dropout switched off (its expectation, since dropout rescales by 1/(1-p)).
* Anchor order, integer truncation of the anchor corners (``astype(int)`` of the float32 corners + 224) and the
  NMS rule (suppress IoU >= threshold, among boxes sorted by decreasing score) are the original's. Exactly tied
  scores (possible under bf16 autocast) are broken by the lowest anchor index; numpy's unstable argsort in the
  original breaks them arbitrarily.
* Where hard NMS leaves fewer than k boxes (impossible at 448 with top_n=6, possible for tiny inputs) the
  original crashes; here the image's best box is repeated.
* Input sizes other than the original's 448: anchors and map sizes follow the same formulas for any H x W
  (>= ``min_image_size`` = 32); a crop reaching beyond the 224-pixel pad is clipped there, as the original's
  array slice would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ModelError, WeightsError
from featcache.models.base import FeatureModel
from featcache.models.ntsnet_anchors import (  # noqa: F401 - re-exported
    ANCHOR_LEVELS,
    IOU_THRESHOLD,
    PAD,
    generate_anchors,
    hard_nms_topk,
    hard_nms_topk_batched_nms,
    navigator_map_sizes,
)
from featcache.models.weights import load_checkpoint, load_into

__all__ = [
    "ANCHOR_LEVELS",
    "NTSNet",
    "NTSOutput",
    "ProposalNet",
    "build_ntsnet",
    "generate_anchors",
    "hard_nms_topk",
    "hard_nms_topk_batched_nms",
]

FEATURE_DIM = 2048  # ResNet-50 pooled feature
PART_SIZE = 224  # parts are resized to 224x224

class NTSOutput(NamedTuple):
    """Everything the original ``attention_net.forward`` returns, in its order (so it unpacks the same way).

    raw_logits: [B, C] ``pretrained_model.fc`` on the whole-image feature.
    concat_logits: [B, C] ``concat_net`` on the [B, 2048 * (cat_num + 1)] feature.
    part_logits: [B, top_n, C] ``partcls_net`` on each of the top_n part features.
    top_n_index: int64 [B, top_n] anchor indices picked by hard NMS, decreasing score.
    top_n_prob: [B, top_n] Navigator scores of those anchors (differentiable w.r.t. ``proposal_net``; the
        original's ranking loss input).
    """

    raw_logits: torch.Tensor
    concat_logits: torch.Tensor
    part_logits: torch.Tensor
    top_n_index: torch.Tensor
    top_n_prob: torch.Tensor


class ProposalNet(nn.Module):
    """The Navigator: informativeness score of every anchor, from the ResNet-50 layer4 map."""

    def __init__(self, in_channels: int = FEATURE_DIM, width: int = 128):
        super().__init__()
        self.down1 = nn.Conv2d(in_channels, width, 3, 1, 1)
        self.down2 = nn.Conv2d(width, width, 3, 2, 1)
        self.down3 = nn.Conv2d(width, width, 3, 2, 1)
        self.tidy1 = nn.Conv2d(width, 6, 1, 1, 0)
        self.tidy2 = nn.Conv2d(width, 6, 1, 1, 0)
        self.tidy3 = nn.Conv2d(width, 9, 1, 1, 0)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """[B, 2048, h, w] -> [B, A] scores, each level flattened channel-major (NCHW order, any memory format)."""
        d1 = F.relu(self.down1(fmap))
        d2 = F.relu(self.down2(d1))
        d3 = F.relu(self.down3(d2))
        return torch.cat((self.tidy1(d1).flatten(1), self.tidy2(d2).flatten(1), self.tidy3(d3).flatten(1)), dim=1)


class NTSNet(FeatureModel):
    """NTS-Net (Yang et al., ECCV 2018) with a ResNet-50 backbone, as a FeatureModel.

    ``forward_features(x)`` -> [B, 2048 * (cat_num + 1)]: the cat_num part features (in the Navigator's order)
    then the whole-image feature, i.e. the input of ``concat_net``; ``forward_head`` is ``concat_net``, so
    ``forward(x)[1]`` is the original's ``concat_logits`` (the prediction its test script scores). Extraction
    runs the backbone on only cat_num parts; :meth:`forward_train` runs all top_n for the part losses.

    Args:
        num_classes: classes of all three heads (fc, concat_net, partcls_net).
        top_n: proposals kept by hard NMS for training (the original's PROPOSAL_NUM, M in the paper).
        cat_num: parts concatenated into the feature (CAT_NUM, K in the paper); <= top_n.
        image_size: the input side the model is used at (default 448, as trained); its anchors are built
            eagerly, other sizes' on first use. Any H x W >= ``min_image_size`` works.
        selection: ``"greedy"`` (default: :func:`hard_nms_topk`, sync-free) or ``"batched_nms"``
            (:func:`hard_nms_topk_batched_nms`); both pick the same anchors.
        part_size: side of the part crops fed to the backbone; 224 in the original -- keep it for its
            checkpoints (smaller values only make cheap smoke tests).

    See the module docstring for how outputs differ from the original release.
    """

    feature_layer = "concat(parts, whole): input of concat_net"

    default_image_size = 448
    min_image_size = 32

    def __init__(
        self,
        num_classes: int = 200,
        top_n: int = 6,
        cat_num: int = 4,
        image_size: int = 448,
        selection: str = "greedy",
        part_size: int = PART_SIZE,
    ):
        super().__init__()
        import torchvision

        if not 1 <= cat_num <= top_n:
            raise ModelError(f"NTS-Net needs 1 <= cat_num <= top_n, got cat_num={cat_num}, top_n={top_n}")
        if selection not in ("greedy", "batched_nms"):
            raise ModelError(f"NTS-Net selection {selection!r}: choose greedy or batched_nms")
        if part_size < 2:
            raise ModelError(f"NTS-Net part_size must be >= 2, got {part_size}")
        if image_size < self.min_image_size:
            raise ModelError(f"NTS-Net image size {image_size} is below the minimum {self.min_image_size}")
        self.pretrained_model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        self.proposal_net = ProposalNet()
        self.concat_net = nn.Linear(FEATURE_DIM * (cat_num + 1), num_classes)
        self.partcls_net = nn.Linear(FEATURE_DIM, num_classes)
        self.num_classes = num_classes
        self.num_features = FEATURE_DIM * (cat_num + 1)
        self.top_n = top_n
        self.cat_num = cat_num
        self.image_size = image_size
        self.selection = selection
        self.part_size = part_size
        self.iou_threshold = IOU_THRESHOLD
        self.drop_rate = 0.5  # the original's nn.Dropout(p=0.5) on the pooled feature
        # (H, W) -> CPU anchor tensors; (H, W, device) -> device copies. Not in the state_dict.
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._anchors_cpu(image_size, image_size)

    # -- anchors -------------------------------------------------------------------------------------------------
    def _anchors_cpu(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (height, width)
        if key not in self._anchor_cache:
            yx = generate_anchors(height, width)  # padded frame (y0, x0, y1, x1), int64
            nms_boxes = yx[:, [1, 0, 3, 2]].to(torch.float32)  # xyxy, integer-valued, all >= 0
            # Crop boxes: the original slices x_pad[y0:y1, x0:x1] (clipped to the padded image), then
            # interpolates with align_corners=True, sampling pixel rows y0 + j * (h - 1) / (P - 1), j < P. roi_align
            # (aligned=False, one sample per bin) samples start + (j + 0.5) * (end - start) / P, so put
            # start = y0 - s / 2 and end = start + P * s with s = (h - 1) / (P - 1). The frame moves from the
            # 224-padded image to the 1-padded one we actually build: subtract PAD - 1.
            limit = torch.tensor([height + 2 * PAD, width + 2 * PAD], dtype=torch.int64)
            lo = yx[:, :2]
            hi = torch.minimum(yx[:, 2:], limit)
            step = (hi - lo - 1).to(torch.float64) / (self.part_size - 1)
            start = lo.to(torch.float64) - (PAD - 1) - step / 2
            end = start + self.part_size * step
            roi_boxes = torch.stack((start[:, 1], start[:, 0], end[:, 1], end[:, 0]), dim=1).to(torch.float32)
            self._anchor_cache[key] = (nms_boxes, roi_boxes)
        return self._anchor_cache[key]

    def anchors(self, height: int, width: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(nms_boxes, roi_boxes), float32 [A, 4] each, for an input of ``height`` x ``width``, on ``device``.

        nms_boxes: xyxy in the 224-padded frame (integer-valued, the original's boxes for NMS).
        roi_boxes: xyxy roi_align boxes on the image padded by one zero pixel (see :meth:`crop_parts`).
        Built once per (H, W) and cached per device.
        """
        device = torch.device(device)
        key = (height, width, str(device))
        if key not in self._anchor_cache:
            nms_boxes, roi_boxes = self._anchors_cpu(height, width)
            self._anchor_cache[key] = (nms_boxes.to(device), roi_boxes.to(device))
        return self._anchor_cache[key]

    def num_anchors(self, height: int, width: int) -> int:
        return sum(
            fh * fw * len(scales) * len(ratios)
            for (fh, fw), (_, _, scales, ratios) in zip(navigator_map_sizes(height, width), ANCHOR_LEVELS, strict=True)
        )

    # -- building blocks -----------------------------------------------------------------------------------------
    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ResNet-50 pass as the original's: (fc logits [B, C], layer4 map [B, 2048, h, w], feature [B, 2048]).

        The feature is avgpool -> flatten -> dropout(p=0.5) (train mode only), and fc reads the dropped feature.
        """
        r = self.pretrained_model
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        fmap = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        feature = F.dropout(torch.flatten(r.avgpool(fmap), 1), p=self.drop_rate, training=self.training)
        return r.fc(feature), fmap, feature

    def select(self, scores: torch.Tensor, height: int, width: int, k: int) -> torch.Tensor:
        """int64 [B, k] anchor indices kept by hard NMS (IoU >= 0.25 suppresses), decreasing score."""
        nms_boxes, _ = self.anchors(height, width, scores.device)
        if scores.shape[1] != nms_boxes.shape[0]:
            raise ModelError(
                f"NTS-Net: {scores.shape[1]} Navigator scores but {nms_boxes.shape[0]} anchors for a "
                f"{height}x{width} input"
            )
        fn = hard_nms_topk if self.selection == "greedy" else hard_nms_topk_batched_nms
        return fn(scores, nms_boxes, k, self.iou_threshold)

    def crop_parts(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Crops of anchors ``index`` (int64 [B, k]) from images x [B, 3, H, W] -> float32 [B * k, 3, P, P].

        P = ``part_size`` (224).

        One ``roi_align`` over the image padded by a single zero pixel, in float32 (also under autocast). Where the
        original reads its 224-pixel zero pad, roi_align either reads the 1-pixel zero border or returns 0 for
        samples outside the map, so the pad never has to be materialised. Rows are image-major, part-minor.
        """
        from torchvision.ops import roi_align

        b, k = index.shape
        _, roi_boxes = self.anchors(x.shape[-2], x.shape[-1], x.device)
        boxes = roi_boxes[index.reshape(-1)]
        image = torch.arange(b, device=x.device, dtype=torch.float32).view(b, 1).expand(b, k).reshape(-1, 1)
        padded = F.pad(x.float(), (1, 1, 1, 1))
        size = (self.part_size, self.part_size)
        parts = roi_align(padded, torch.cat((image, boxes), dim=1), size, 1.0, 1, False)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            parts = parts.contiguous(memory_format=torch.channels_last)
        return parts

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ModelError(f"NTS-Net expects images [B, 3, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_image_size:
            raise ModelError(
                f"NTS-Net input {x.shape[-2]}x{x.shape[-1]} is below the minimum side {self.min_image_size} "
                f"(trained at {self.default_image_size})"
            )

    def _parts_pass(self, x: torch.Tensor, k: int):
        """Whole-image pass, Navigator, top-k selection, crops and one backbone pass over all B * k parts."""
        self._check_input(x)
        b, _, height, width = x.shape
        raw_logits, fmap, feature = self.backbone(x)
        scores = self.proposal_net(fmap.detach())
        index = self.select(scores, height, width, k)
        parts = self.crop_parts(x.detach(), index)
        _, _, part_features = self.backbone(parts)
        return raw_logits, feature, scores, index, part_features.view(b, k, -1)

    # -- FeatureModel ------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> [B, 2048 * (cat_num + 1)]: cat_num part features, then the whole-image one."""
        _, feature, _, _, parts = self._parts_pass(x, self.cat_num)
        return torch.cat((parts.flatten(1), feature), dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.concat_net(features)

    def forward_train(self, x: torch.Tensor) -> NTSOutput:
        """The original's full output for its losses, with all top_n parts through the backbone (see NTSOutput).

        Losses as in the original train.py: CE(raw_logits), CE(concat_logits), CE(part_logits) over the flattened
        parts (label repeated top_n times), and ranking_loss(top_n_prob, -log_softmax(part_logits)[label]).
        Respects the current mode (dropout in train mode only).
        """
        raw_logits, feature, scores, index, parts = self._parts_pass(x, self.top_n)
        concat_logits = self.concat_net(torch.cat((parts[:, : self.cat_num].flatten(1), feature), dim=1))
        part_logits = self.partcls_net(parts)
        return NTSOutput(raw_logits, concat_logits, part_logits, index, scores.gather(1, index))

    def extra_repr(self) -> str:
        return (
            f"top_n={self.top_n}, cat_num={self.cat_num}, image_size={self.image_size}, "
            f"part_size={self.part_size}, selection={self.selection!r}"
        )


def _fill_num_batches_tracked(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved by PyTorch < 0.4.1 lack BatchNorm's num_batches_tracked (unused with momentum set)."""
    state = dict(state)
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    return state


def build_ntsnet(
    num_classes: int | None = None,
    weights: str | Path | None = None,
    *,
    top_n: int | None = None,
    cat_num: int | None = None,
    **kw,
) -> NTSNet:
    """Build an :class:`NTSNet`, optionally loading a checkpoint file (strict keys).

    Args:
        num_classes: class count. ``None`` (not given): the checkpoint's, read from ``concat_net.weight`` [C, D],
            or 200 without a checkpoint. Given explicitly and different from the checkpoint's: a WeightsError
            (strict load), never a silently re-initialised head.
        weights: checkpoint path -- the original release's ``{'net_state_dict': ...}``, a bare state_dict,
            with or without ``module.`` prefixes (featcache.models.weights). ``None``: random initialisation
            (torch's current RNG; nothing is downloaded).
        top_n: proposals for :meth:`NTSNet.forward_train`; default max(6, cat_num).
        cat_num: parts in the feature; ``None``: the checkpoint's (D / 2048 - 1), or 4 without one.
        **kw: passed to NTSNet (image_size, selection).

    Missing ``num_batches_tracked`` entries (PyTorch < 0.4.1 checkpoints) are filled with zeros.
    """
    state = None
    if weights is not None:
        state = load_checkpoint(weights)
        head = state.get("concat_net.weight")
        if head is None or head.ndim != 2:
            raise WeightsError(f"--weights {weights}: no concat_net.weight, not an NTS-Net checkpoint")
        parts, rem = divmod(int(head.shape[1]), FEATURE_DIM)
        if rem or parts < 2:
            raise WeightsError(
                f"--weights {weights}: concat_net.weight has {head.shape[1]} inputs, not 2048 * (cat_num + 1)"
            )
        if num_classes is None:
            num_classes = int(head.shape[0])
        if cat_num is None:
            cat_num = parts - 1
    num_classes = 200 if num_classes is None else num_classes
    cat_num = 4 if cat_num is None else cat_num
    top_n = max(6, cat_num) if top_n is None else top_n
    model = NTSNet(num_classes=num_classes, top_n=top_n, cat_num=cat_num, **kw)
    if state is not None:
        load_into(model, _fill_num_batches_tracked(model, state), source=f"--weights {weights}")
    return model
