"""The student network: a convolutional body, fully-connected layers [l_T, ..., l_1] and a classifier l_0
(docs/students.md: which layer each paper's method reads). ``Arch`` is what a registered architecture builds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FCLayer(nn.Module):
    """One student layer l_i: optional dropout on its input, then Linear and an activation.

    Parameters are ``fc.weight`` / ``fc.bias``; ``dropout`` is Identity when the layer has none.
    """

    def __init__(self, in_dim: int, out_dim: int, act: Callable[[], nn.Module], dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_dim, out_dim)
        self.act = act()

    @property
    def in_features(self) -> int:
        return self.fc.in_features

    @property
    def out_features(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.dropout(x)))

    def forward_no_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


@dataclass
class Arch:
    """What a registered builder returns: the body and the native FC stack, before the options apply."""

    body: nn.Module
    body_dim: int
    native_layers: list[tuple[int, float]]  # (output width, dropout before the layer) for [l_T, ..., l_1]
    act: Callable[[], nn.Module]
    head_dropout: float  # before l_0
    upsample_to: int | None = None  # forward_body upsamples inputs with a side below this
    variant: str = ""  # tag for describe(), e.g. "small-input"


class Student(nn.Module):
    """body -> [l_T, ..., l_1] -> (dropout) -> l_0. See the module docstring for the indexing conventions.

    Attributes:
        name: registry name (``--student``).
        body_dim: width of the body's pooled output.
        layer_dims: output widths of [l_T, ..., l_1].
        num_features: width of the feature layer l_1 (of the body when there are no layers).
        num_classes: number of logits.
        small_input: whether the CIFAR-style variant was built.
    """

    feature_layer = "l_1, the input of the classifier l_0"

    def __init__(
        self,
        name: str,
        body: nn.Module,
        body_dim: int,
        layers: list[FCLayer],
        num_classes: int,
        head_dropout: float = 0.0,
        *,
        small_input: bool = False,
        upsample_to: int | None = None,
        variant: str = "",
        default_image_size: int = 224,
        min_image_size: int = 32,
    ):
        super().__init__()
        self.name = name
        self.body = body
        self.layers = nn.ModuleList(layers)
        self.head_drop = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.body_dim = body_dim
        self.layer_dims = [layer.out_features for layer in layers]
        self.num_features = self.layer_dims[-1] if layers else body_dim
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.small_input = small_input
        self.upsample_to = upsample_to
        self.variant = variant
        self.default_image_size = default_image_size
        self.min_image_size = min_image_size
        prev = body_dim
        for layer in layers:
            if layer.in_features != prev:
                raise ValueError(f"layer widths do not chain: {layer.in_features} after {prev}")
            prev = layer.out_features

    # -- levels --------------------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        """T, the number of FC layers before the classifier."""
        return len(self.layers)

    def _check_level(self, level: int) -> None:
        top = max(self.num_levels, 1)
        if not 1 <= level <= top:
            raise ValueError(f"{self.name} has levels 1..{top}, got {level}")

    def level_dim(self, level: int) -> int:
        """Output width of l_level (level 1: the feature layer; the body output when there are no layers)."""
        self._check_level(level)
        if self.num_levels == 0:
            return self.body_dim
        return self.layer_dims[self.num_levels - level]

    # -- forward pieces ------------------------------------------------------------------------------------------
    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> pooled body output [B, body_dim]."""
        if self.upsample_to is not None:
            h, w = x.shape[-2:]
            if h < self.upsample_to or w < self.upsample_to:
                size = (max(h, self.upsample_to), max(w, self.upsample_to))
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.flatten(self.body(x), 1)

    def _run_layers(self, h: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            h = layer(h)
            outs.append(h)
        return outs

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images -> outputs of [l_T, ..., l_1] (empty when the student has no FC layers)."""
        return self._run_layers(self.forward_body(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> output of the feature layer l_1 (of the body when there are no layers), [B, num_features]."""
        h = self.forward_body(x)
        for layer in self.layers:
            h = layer(h)
        return h

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Feature-layer output [B, num_features] -> logits: l_0, after the head dropout in train mode."""
        return self.classifier(self.head_drop(f))

    def head_from(self, level: int, f: torch.Tensor) -> torch.Tensor:
        """l_0∘l_1∘…∘l_{level−1}(f), for f of width ``level_dim(level)`` (l_level's output width); no dropout.

        ``head_from(1, f)`` is l_0(f); ``head_from(2, f)`` is l_0(l_1(f)); multi-teacher classifies teacher i's
        translated feature with ``head_from(i, t_i(f_ti))``.
        """
        self._check_level(level)
        for layer in self.layers[self.num_levels - level + 1 :]:
            f = layer.forward_no_dropout(f)  # type: ignore[operator]  # each layer is an FCLayer
        return self.classifier(f)

    def forward_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Images -> ([f_lT, ..., f_l1], logits) from one pass."""
        h = self.forward_body(x)
        outs = self._run_layers(h)
        return outs, self.forward_head(outs[-1] if outs else h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> logits."""
        return self.forward_head(self.forward_features(x))

    # -- reporting -----------------------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        """One line, e.g. ``mobilenetv3 (small-input) body 960 → layers [1280] → 10 classes, 3.0M params``."""
        tag = f" ({self.variant})" if self.variant else ""
        dims = ", ".join(str(d) for d in self.layer_dims)
        return (
            f"{self.name}{tag} body {self.body_dim} → layers [{dims}] → {self.num_classes} classes, "
            f"{_human(self.num_params())} params"
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, body_dim={self.body_dim}, layer_dims={self.layer_dims}"


def _human(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)
