"""Any torchvision classifier as a teacher: built by name (``torchvision.models.get_model``), its head found, its
penultimate features read in front of the head; weights from torchvision's enums (the torch hub cache), a file or
random. Teachers without a registry entry of their own get a generic one from here (``teacher_entry``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from featcache.errors import ModelError, WeightsError
from featcache.models.base import FeatureModel
from featcache.models.registry import ModelEntry
from featcache.models.weights import load_checkpoint, load_into

WeightsInfo = Any  # featcache.models.teachers.WeightsInfo (teachers imports this module, so not imported here)

# Auxiliary heads exist only for training; inference never uses them, so checkpoints' copies are dropped.
AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


# -- wrapping -------------------------------------------------------------------------------------


def _find_head(net: nn.Module) -> str:
    """Dotted path of the final nn.Linear: torchvision registers the classifier last in every family."""
    last = None
    for path, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = path
    if last is None:
        raise ModelError(
            f"{type(net).__name__} has no nn.Linear classifier, so its penultimate layer is undefined; "
            "choose another --teacher"
        )
    return last


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)


class TorchvisionFeatureModel(FeatureModel):
    """A torchvision classifier split at its final linear layer.

    ``forward_features`` runs the network with the classifier replaced by Identity, so the features are exactly
    the classifier's input (after the network's own pooling/flatten/dropout, which is identity in eval mode).
    """

    def __init__(self, net: nn.Module, head_path: str, default_image_size: int = 224, min_image_size: int = 32):
        super().__init__()
        head = net.get_submodule(head_path)
        assert isinstance(head, nn.Linear)
        _set_submodule(net, head_path, nn.Identity())
        self.net = net
        self.head = head
        self.head_path = head_path
        self.feature_layer = f"input of {head_path}"
        self.num_features = head.in_features
        self.num_classes = head.out_features
        self.default_image_size = default_image_size
        self.min_image_size = min_image_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, tuple):  # Inception/GoogLeNet namedtuples in train mode: (logits, aux...)
            out = out[0]
        return torch.flatten(out, 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def block_root(self) -> nn.Module:
        return self.net

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in the wrapped torchvision model's own key layout (``fc.weight``, not ``head.weight``)."""
        state = {k[len("net.") :]: v for k, v in self.state_dict().items() if k.startswith("net.")}
        for k, v in self.head.state_dict().items():
            state[f"{self.head_path}.{k}"] = v
        return state


def torchvision_classifiers() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _tv_kwargs(tv_name: str) -> dict[str, Any]:
    if tv_name in ("inception_v3", "googlenet"):
        # Auxiliary heads off at inference (and they are dropped from checkpoints, see AUX_PREFIXES).
        return {"aux_logits": False, "init_weights": False}
    return {}


def tv_weights_enum(tv_name: str, ref: str):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(tv_name)
    except (ValueError, KeyError):
        raise WeightsError(f"torchvision has no pretrained weights for {tv_name}; pass --weights PATH or "
                           "random") from None
    name = ref.split(".")[-1]
    try:
        return enum[name]
    except KeyError:
        choices = ", ".join(["DEFAULT", *(m.name for m in enum)])
        raise WeightsError(
            f"--weights {ref!r} is neither a file nor a weights name of {tv_name}: choose one of {choices}, "
            "a checkpoint path, or random"
        ) from None


def build_torchvision(tv_name: str, weights: WeightsInfo, num_classes: int | None, seed: int, entry: ModelEntry):
    import torchvision

    kwargs = _tv_kwargs(tv_name)
    if weights.source == "torchvision":
        member = tv_weights_enum(tv_name, weights.ref)
        if num_classes is not None and num_classes != len(member.meta.get("categories", [])):
            raise WeightsError(
                f"--num-classes {num_classes} with --weights {weights.ref} would put a random head on pretrained "
                "features; fine-tune first (featcache train-teacher) or drop --num-classes"
            )
        _check_hub_cache(member)
        try:
            net = torchvision.models.get_model(tv_name, weights=member, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network/hash errors come in many types
            raise WeightsError(
                f"--weights {weights.ref}: could not load torchvision weights for {tv_name} ({exc}); "
                f"put {os.path.basename(urlparse(member.url).path)} into {hub_checkpoint_dir()} or pass --weights PATH"
            ) from None
    else:
        state = None
        if weights.source == "file":
            state = {k: v for k, v in load_checkpoint(weights.ref).items() if not k.startswith(AUX_PREFIXES)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torchvision.models.get_model(tv_name, weights=None, **kwargs)
            head_path = _find_head(net)
            head = net.get_submodule(head_path)
            if state is not None and num_classes is None:
                # The checkpoint's head decides the class count unless --num-classes says otherwise.
                w = state.get(f"{head_path}.weight")
                if w is not None and w.ndim == 2:
                    num_classes = int(w.shape[0])
            if num_classes is not None and num_classes != head.out_features:
                _set_submodule(net, head_path, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
        if state is not None:
            load_into(net, state, source=f"--weights {weights.ref}")
    return TorchvisionFeatureModel(
        net, _find_head(net), default_image_size=entry.default_image_size, min_image_size=entry.min_image_size
    )


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _check_hub_cache(member) -> None:
    """Fail fast with a clear message when the weights are neither cached nor downloadable."""
    path = hub_checkpoint_dir() / os.path.basename(urlparse(member.url).path)
    if path.is_file() or os.environ.get("FEATCACHE_OFFLINE") != "1":
        return
    raise WeightsError(
        f"--weights {member}: {path} is not in the torch hub cache and FEATCACHE_OFFLINE=1 forbids downloading; "
        "copy the file there or pass --weights PATH"
    )


def tv_default_size(name: str) -> int:
    try:
        member = tv_weights_enum(name, "DEFAULT")
        crop = getattr(member.transforms, "keywords", {}).get("crop_size")
        if crop:
            return int(crop)
    except WeightsError:
        pass
    return 224


def tv_min_size(name: str) -> int:
    """The smallest input the model takes: what its weights declare (``meta["min_size"]``: 224 for ViT and Swin, 75
    for Inception v3), at least 32 px."""
    try:
        declared = tv_weights_enum(name, "DEFAULT").meta.get("min_size") or (1, 1)
    except WeightsError:  # no pretrained weights: nothing declares a limit
        declared = (1, 1)
    return max(32, int(declared[0]))
