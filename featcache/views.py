"""Replayable augmented views (`extract --views K --view-policy POLICY`).

A cache of one fixed view per image is the "fixed teacher" setting, which Beyer et al. (CVPR 2022) show to
overfit. With views, extract caches K views per sample: view 0 is the deterministic evaluation view (part ``data``),
views 1..K−1 (parts ``view1``..) are drawn by a named augmentation policy. Each view's parameters come from
``np.random.default_rng([seed, view, index])`` and the decoded image's size alone, and are also stored per row
(dataset ``aug``), so distill can replay exactly the augmentation the teacher saw: student and teacher get the same
pixels. Policies:

* ``rrc-flip`` (default for photos): RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3, torchvision's sampling with
  a centre-crop fallback) to the cache's image size, then a horizontal flip with p = 0.5.
* ``pad-crop-flip`` (CIFAR): the evaluation view, zero-padded by S/8, a random S×S crop, then a flip.

``aug`` rows are float32 [top, left, height, width, flip]: for ``rrc-flip`` the crop box in the decoded image's
pixels, for ``pad-crop-flip`` the crop's offset in the padded view (height = width = S).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from featcache.cache.format import AUG
from featcache.specs import VIEW_POLICIES, ViewSpec  # noqa: F401 - re-exported: the spec is data
from featcache.transforms import Geometry, TransformSpec, crop_pad

# Each view is a full copy of the split's rows (and a part of its own): beyond this, a typo (10000 for 10) would write
# thousands of parts for hours. FKD-style soft-label caches keep tens to hundreds of crops per image.
MAX_VIEWS = 1024
AUG_FIELD = AUG  # the per-row augmentation parameters of a view part (named in the cache format)


def view_part(view: int) -> str:
    """The cache part holding view ``view`` (>= 1; view 0 is the ``data`` part)."""
    return f"view{view}"


def view_params(spec: ViewSpec, view: int, index: int, height: int, width: int, size: int) -> np.ndarray:
    """The augmentation of view ``view`` (>= 1) of sample ``index``, from its seed and the decoded image size."""
    rng = np.random.default_rng([spec.seed, view, index])
    if spec.policy == "pad-crop-flip":
        pad = crop_pad(size)
        top, left = rng.integers(0, 2 * pad + 1, size=2)
        return np.array([top, left, size, size, rng.random() < 0.5], dtype=np.float32)
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:  # torchvision's fallback: a centre crop at the closest allowed aspect ratio
        ratio = width / height
        if ratio < 3 / 4:
            w, h = width, int(round(width / (3 / 4)))
        elif ratio > 4 / 3:
            h, w = height, int(round(height * (4 / 3)))
        else:
            w, h = width, height
        h, w = min(h, height), min(w, width)
        top, left = (height - h) // 2, (width - w) // 2
    return np.array([top, left, h, w, rng.random() < 0.5], dtype=np.float32)


def apply_view(image: torch.Tensor, params: np.ndarray, spec: ViewSpec, transform: TransformSpec) -> torch.Tensor:
    """uint8 [3, H, W] decoded image -> uint8 [3, S, S] augmented view, exactly as at extract time."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    top, left, h, w, flip = (int(v) for v in params)
    s = transform.image_size
    if spec.policy == "pad-crop-flip":
        view = Geometry(transform)(image)
        pad = crop_pad(s)
        view = torch.nn.functional.pad(view, (pad, pad, pad, pad))[:, top : top + s, left : left + s]
    else:
        view = F.resized_crop(image, top, left, h, w, [s, s], interpolation=InterpolationMode(transform.interpolation),
                              antialias=transform.antialias)
    if flip:
        view = view.flip(-1)
    return view.contiguous()


class ViewDataset(Dataset):
    """Items (view image, label, index, aug params) of one view of an ImageDataset (extract's source for a view
    part)."""

    def __init__(self, dataset, spec: ViewSpec, view: int, transform: TransformSpec) -> None:
        self.dataset, self.spec, self.view, self.transform = dataset, spec, view, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        raw = self.dataset.read_image(i)
        params = view_params(self.spec, self.view, i, raw.shape[-2], raw.shape[-1], self.transform.image_size)
        return (apply_view(raw, params, self.spec, self.transform), int(self.dataset.targets[i]), i,
                torch.from_numpy(params))
