"""The teachers' contract (timm's forward_features / forward_head split), and a small VGG body both kinds use.

A FeatureModel — every teacher: torchvision and timm classifiers, ConvNet, NTS-Net, a user's module, a finished run —
maps an image batch to ``(features, logits)``: ``features`` is the penultimate layer, the vector the seed papers
transfer (2048-d for ResNet50, 10240-d for NTS-Net), ``logits`` the classifier output on it. Students are plain
modules returning logits, with ``forward_features`` / ``forward_head`` of their own (featcache.models.student_net).
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureModel(nn.Module):
    """Base class: subclasses implement ``forward_features`` and ``forward_head``.

    Attributes:
        num_features: width D of the feature vector.
        num_classes: width C of the logits.
        default_image_size: input side the weights were trained at (the transform default).
        min_image_size: smallest input side the architecture accepts.
        feature_layer: where ``features`` are taken, in words (recorded in cache manifests).
    """

    num_features: int
    num_classes: int
    default_image_size: int = 224
    min_image_size: int = 32
    feature_layer: str = "input of the classifier head"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] (normalised float) -> features [B, D]."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, D] -> logits [B, C]."""
        raise NotImplementedError

    def block_root(self) -> nn.Module:
        """The module whose submodule names ``extract --blocks`` uses (torchvision teachers: the wrapped network, so
        ``layer3`` means what it means in torchvision)."""
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(x)
        return features, self.forward_head(features)


def small_vgg_body(width: int) -> nn.Sequential:
    """Three stages of two 3×3 conv-BN-ReLU layers (widths w, 2w, 4w) with 2×2 max-pooling between stages; the
    output has 4w channels at 1/4 of the input side. Shared by the ``convnet`` teacher and the ``convnet_small``
    student, so the two differ only in width."""
    layers: list[nn.Module] = []
    c_in = 3
    for stage, c in enumerate((width, 2 * width, 4 * width)):
        if stage:
            layers.append(nn.MaxPool2d(2))
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers)
