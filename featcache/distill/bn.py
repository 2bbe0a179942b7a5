"""Batch-norm statistics re-estimated before each evaluation (``--bn-recalibrate N``).

Eval mode normalises with the running averages that training accumulates, and torchvision's MobileNets accumulate
them with momentum 0.01: on a small set (tens of steps per epoch, weights moving fast) the averages lag the network so
far that eval mode predicted one class for every input — training images included — while the same weights with batch
statistics were right on 78 % of them (docs/results.md, issue 27). Momentum 0.1 did not cure it. What does is what
Wu & Johnson ("Rethinking 'Batch' in BatchNorm", 2021, §3: "precise BN") recommend: freeze the weights, reset the
statistics and average them over a sample of training batches. The sample is fixed for the run (seeded, no
augmentation, labels never read), so every epoch, a resumed run and ``featcache eval`` see the same statistics.
Training itself is untouched: train mode normalises with each batch's own statistics, never the running ones.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from featcache.datasets import ImageDataset
from featcache.transforms import Geometry, Normalizer, TransformSpec
from featcache.util.runtime import autocast


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def calibration_images(model: nn.Module, train: ImageDataset, transform: TransformSpec, count: int, seed: int,
                       workers: int, device: torch.device, decoded: torch.Tensor | None = None) -> torch.Tensor | None:
    """``count`` training images (a seeded sample, at the model's geometry) decoded once as uint8 on ``device``;
    None when there is nothing to calibrate (``count`` 0, or a model without batch norm). ``decoded``: the whole
    split already decoded at that geometry (the resident loader's), taken from instead of decoding the sample again."""
    if count <= 0 or not batch_norms(model) or len(train) == 0:
        return None
    picked = np.sort(np.random.default_rng([seed, 0xB4]).choice(len(train), size=min(count, len(train)),
                                                                  replace=False))
    if decoded is not None and len(decoded) == len(train):
        return decoded[torch.from_numpy(picked).to(decoded.device)].to(device)
    split = copy.copy(train).with_transform(Geometry(transform))  # a copy: the training loader's transform stays
    loader = DataLoader(Subset(split, picked.tolist()), batch_size=256, num_workers=workers)
    return torch.cat([images for images, _, _ in loader]).to(device)


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, normalize: Normalizer, batch_size: int, device: torch.device,
                precision: str, channels_last: bool = True) -> None:
    """Replace every batch norm's running statistics by their average over ``images`` (batches of ``batch_size``,
    weights frozen, dropout off)."""
    norms = batch_norms(model)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches, not an exponential one
        m.train()
    try:
        for a in range(0, len(images), batch_size):
            with autocast(device, precision):
                model(normalize(images[a:a + batch_size], channels_last=channels_last))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
