"""NTS-Net's Navigator anchors and the hard non-maximum suppression that picks its parts (Yang et al., ECCV 2018,
§3.2), batched and vectorised; the numbers follow the original release's anchors.py and nms."""

from __future__ import annotations

import math

import torch

PAD = 224  # the original pads the image by 224 zero pixels on each side before cropping
IOU_THRESHOLD = 0.25

# (stride, base size, scales, aspect ratios) per Navigator level (tidy1, tidy2, tidy3). Loop order inside a
# level is scale-major then aspect ratio, which is also the tidy head's channel order.
ANCHOR_LEVELS: tuple[tuple[int, int, tuple[float, ...], tuple[float, ...]], ...] = (
    (32, 48, (2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)), (0.667, 1.0, 1.5)),
    (64, 96, (2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)), (0.667, 1.0, 1.5)),
    (128, 192, (1.0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)), (0.667, 1.0, 1.5)),
)


def _ceil_half(n: int, times: int) -> int:
    """Side of a map after ``times`` stride-2 layers whose padding keeps ceil(n / 2) (3x3 pad 1, 7x7 pad 3)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def navigator_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes of the Navigator's three score maps for an input of ``height`` x ``width``.

    ResNet-50 has five stride-2 stages (conv1, maxpool, layer2-4), each mapping n -> ceil(n / 2); down2 and down3
    halve again the same way. Equals ceil(side / stride) for strides 32/64/128, the original's anchor grids.
    """
    return [(_ceil_half(height, 5 + i), _ceil_half(width, 5 + i)) for i in range(3)]


def generate_anchors(height: int, width: int) -> torch.Tensor:
    """The original's anchors for an ``height`` x ``width`` input as int64 [A, 4] ``(y0, x0, y1, x1)`` in the frame
    of the image padded by 224 pixels (i.e. its ``(edge_anchors + 224).astype(int)``).

    Float32 arithmetic and truncation as in the original, so the integer corners match it exactly. Order: level,
    then scale, then aspect ratio, then row-major cell -- the order of the Navigator's flattened scores.
    """
    out = []
    for stride, size, scales, ratios in ANCHOR_LEVELS:
        fh, fw = math.ceil(height / stride), math.ceil(width / stride)
        cy = (torch.arange(fh, dtype=torch.float64) * stride + stride / 2.0).to(torch.float32)
        cx = (torch.arange(fw, dtype=torch.float64) * stride + stride / 2.0).to(torch.float32)
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        for scale in scales:
            for ratio in ratios:
                h = torch.tensor(size * scale / float(ratio) ** 0.5, dtype=torch.float32)
                w = torch.tensor(size * scale * float(ratio) ** 0.5, dtype=torch.float32)
                edges = torch.stack((cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0), dim=-1)
                out.append(((edges.reshape(-1, 4) + PAD).trunc()).to(torch.int64))
    return torch.cat(out)


def _strict_below(threshold: float) -> float:
    """Largest float32 below ``threshold``: torchvision suppresses IoU > t, the original IoU >= threshold."""
    return float(torch.nextafter(torch.tensor(threshold, dtype=torch.float32), torch.tensor(0.0)))


def _pairwise_iou(picked: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of picked [B, 4] against boxes [A, 4] (xyxy) -> [B, A]."""
    lt = torch.maximum(picked[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(picked[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_p = (picked[:, 2] - picked[:, 0]) * (picked[:, 3] - picked[:, 1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_p[:, None] + area_b[None, :] - inter)


def hard_nms_topk(
    scores: torch.Tensor, boxes: torch.Tensor, k: int, iou_threshold: float = IOU_THRESHOLD
) -> torch.Tensor:
    """Greedy hard NMS truncated at ``k`` survivors, for a whole batch at once, without host syncs.

    Args:
        scores: [B, A] anchor scores (any float dtype; compared in float32).
        boxes: [A, 4] xyxy boxes shared by all images (float32; integer-valued for exact IoU ties).
        k: boxes to keep per image.
        iou_threshold: a box is suppressed by a kept box when their IoU >= threshold (the original's rule).

    Returns:
        int64 [B, k] anchor indices in selection order (decreasing score). Greedy NMS is prefix-consistent, so
        the first j columns equal a run with k=j. Rows with fewer than k survivors repeat their best box.

    Each of the k rounds takes the row-wise argmax over the still-valid anchors and invalidates the anchors
    overlapping it: k * B * A work, fixed shapes, identical to sorting then sweeping as the original does.
    """
    b, a = scores.shape
    s = scores.detach().float()
    boxes = boxes.float()
    valid = torch.ones(b, a, dtype=torch.bool, device=s.device)
    neg_inf = torch.tensor(float("-inf"), device=s.device)
    picks: list[torch.Tensor] = []
    for step in range(k):  # k rounds (parts), never a loop over images
        pick = torch.where(valid, s, neg_inf).argmax(dim=1)
        if step:
            alive = valid.gather(1, pick[:, None]).squeeze(1)
            pick = torch.where(alive, pick, picks[0])
        picks.append(pick)
        if step + 1 < k:
            valid = valid & (_pairwise_iou(boxes[pick], boxes) < iou_threshold)
    return torch.stack(picks, dim=1)


def hard_nms_topk_batched_nms(
    scores: torch.Tensor, boxes: torch.Tensor, k: int, iou_threshold: float = IOU_THRESHOLD
) -> torch.Tensor:
    """Same contract as :func:`hard_nms_topk`, via ``torchvision.ops.batched_nms`` over all B*A boxes.

    The image index is the NMS group; the kept indices (sorted by decreasing score) are stably re-sorted by image,
    ranked within their image by a scatter-add of group sizes, and scattered into [B, k] (ranks >= k go to a
    discarded column). Torchvision's threshold is strict (IoU > t), so the largest float32 below the threshold
    is passed to get the original's IoU >= threshold rule. Note: torchvision's NMS itself syncs with the host
    (CUDA kernel's mask copy; above 4000 (CPU) / 100000 (GPU) box coordinates ``batched_nms`` runs one ``nms``
    per image) -- hence not the default.
    """
    from torchvision.ops import batched_nms

    b, a = scores.shape
    dev = scores.device
    s = scores.detach().float().reshape(-1)
    flat_boxes = boxes.float().repeat(b, 1)
    image = torch.arange(b, device=dev).repeat_interleave(a)
    keep = batched_nms(flat_boxes, s, image, _strict_below(iou_threshold))
    kept_image = keep // a
    order = torch.sort(kept_image, stable=True).indices
    keep, kept_image = keep[order], kept_image[order]
    counts = torch.zeros(b, dtype=torch.int64, device=dev).scatter_add_(0, kept_image, torch.ones_like(kept_image))
    starts = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=dev) - starts[kept_image]
    out = torch.full((b, k + 1), -1, dtype=torch.int64, device=dev)
    out.view(-1).scatter_(0, kept_image * (k + 1) + rank.clamp(max=k), keep % a)
    out = out[:, :k]
    return torch.where(out >= 0, out, out[:, :1])
