"""A teacher network as a classifier to train (``train-teacher``) and to rebuild from a run (``eval``).

Initialised from ImageNet weights, random, or a checkpoint; an entry's differences (a backbone-only ImageNet init,
a head that cannot be swapped) come from its registry entry, never from its name.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from featcache.errors import ConfigError, WeightsError
from featcache.models.base import FeatureModel

INITS = ("auto", "imagenet", "random")


class Classifier(nn.Module):
    """A teacher network trained as a classifier: ``forward(x)`` gives logits (what the training loop expects)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]

    def describe(self) -> str:
        return f"{type(self.model).__name__}: {self.num_features}-d features, {self.num_classes} classes"

    def weights_state_dict(self) -> dict[str, torch.Tensor]:
        """The state_dict `extract --weights` loads: torchvision's own key layout, or NTS-Net's."""
        if hasattr(self.model, "torchvision_state_dict"):
            return self.model.torchvision_state_dict()  # type: ignore[operator]  # duck-typed: checked by hasattr
        return self.model.state_dict()


def _imagenet_member(teacher: str):
    from featcache.models.teachers import ALIASES, teacher_entry, tv_weights_enum

    entry = teacher_entry(teacher)
    tv_name = entry.imagenet_backbone or ALIASES.get(entry.name, entry.name)
    try:
        return tv_weights_enum(tv_name, "DEFAULT")
    except Exception:  # noqa: BLE001 - a model without published weights
        return None


def _hub_has(member) -> bool:
    from featcache.models.teachers import hub_checkpoint_dir

    return member is not None and (hub_checkpoint_dir() / os.path.basename(urlparse(member.url).path)).is_file()


def resolve_init(teacher: str, init: str) -> str:
    """``auto`` -> ``imagenet`` when the weights are in the hub cache, else ``random``; paths are checked."""
    if init == "auto":
        return "imagenet" if _hub_has(_imagenet_member(teacher)) else "random"
    if init in INITS:
        if init == "imagenet" and _imagenet_member(teacher) is None:
            raise WeightsError(f"--init imagenet: torchvision publishes no ImageNet weights for {teacher}; use random",
                               flag="--init")
        return init
    if not Path(init).expanduser().is_file():
        raise ConfigError(f"--init {init!r}: choose auto, imagenet, random or an existing checkpoint file",
                          flag="--init")
    return str(Path(init).expanduser().resolve())


def build_classifier(teacher: str, num_classes: int, image_size: int | None = None, seed: int = 0,
                     init: str = "random") -> Classifier:
    """The teacher network with a ``num_classes`` head, initialised per ``init`` (already resolved)."""
    from featcache.models.teachers import create_teacher, teacher_entry

    entry = teacher_entry(teacher)
    backbone_only = entry.imagenet_backbone is not None  # ImageNet weights exist for its backbone only (nts-net)
    if init == "imagenet" and not backbone_only:
        t = create_teacher(teacher, weights="DEFAULT", seed=seed, image_size=image_size)
    elif init not in ("imagenet", "random"):  # a checkpoint path: its head decides unless replaced below
        t = create_teacher(teacher, weights=init, seed=seed, image_size=image_size)
    else:
        t = create_teacher(teacher, weights="random", num_classes=num_classes, seed=seed, image_size=image_size)
        if backbone_only and init == "imagenet":
            member = _imagenet_member(teacher)
            state = member.get_state_dict(progress=False)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            t.model.pretrained_model.load_state_dict(state, strict=False)  # type: ignore[union-attr]  # NTS-Net's
    model = t.model
    if model.num_classes != num_classes:
        if not entry.head_swappable:
            raise WeightsError(
                f"--init {init}: the checkpoint has {model.num_classes} classes, the dataset {num_classes}; "
                f"{entry.name}'s heads cannot be swapped here — start from imagenet or random"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.head = nn.Linear(model.num_features, num_classes)
        model.num_classes = num_classes
    return Classifier(model)
