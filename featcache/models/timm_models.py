"""timm's models as teachers and students: ``--teacher timm:NAME`` and ``--student timm:NAME`` (``featcache[timm]``).

A timm model already has the split featcache's contract names (timm's ``forward_features`` / ``forward_head``):

* as a **teacher**, the cached feature is ``forward_head(forward_features(x), pre_logits=True)`` — the classifier's
  input, as for torchvision teachers — and the logits are the classifier applied to it. The model's
  ``pretrained_cfg`` gives the cache's transform: input size, crop fraction, interpolation, mean and std.
  Weights: ``--weights PATH`` (a checkpoint or ``.safetensors``), ``random``, or by default the file timm would load
  from the local Hugging Face cache — never downloaded here: when it is absent the error says what to pass.
* as a **student**, the timm network without its classifier is the body, and featcache's feature layer and head go on
  top of it (``feature_dim`` for TS-Learning, ``levels`` for the multi-teacher method). timm students keep their own
  stem, so ``--small-input`` is refused for them.

timm is imported only when a ``timm:`` name is used; the core install does not need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featcache.errors import ModelError, WeightsError
from featcache.models.base import FeatureModel
from featcache.models.registry import ModelEntry, register_namespace

PREFIX = "timm"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def require_timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm:NAME models need timm: pip install 'featcache[timm]'") from None
    return timm


def arch_of(name: str) -> str:
    return name.split(":", 1)[1]


def _pretrained_cfg(arch: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch)


def resolve(kind: str, name: str) -> ModelEntry:
    """The registry entry of ``timm:NAME`` (teacher or student), from timm's own configuration of the model."""
    timm = require_timm()
    arch = arch_of(name)
    if not arch or not timm.is_model(arch):
        flag = "--teacher" if kind == "teacher" else "--student"
        raise ModelError(f"unknown timm model {arch!r} ({flag} {name}): `featcache teachers --all` lists timm's models")
    cfg = _pretrained_cfg(arch)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    builder = _build_teacher if kind == "teacher" else _build_student
    return ModelEntry(
        name=name, builder=builder, kind=kind, default_image_size=size, min_image_size=16,
        crop_fraction=float(cfg.crop_pct) if cfg is not None and cfg.crop_pct else 0.875,
        resize_mode="shorter", description=f"timm {arch}", torchvision_weights=False,
        default_weights=default_weights, own_stem=kind == "student",
        mean=tuple(cfg.mean) if cfg is not None and cfg.mean else None,
        std=tuple(cfg.std) if cfg is not None and cfg.std else None,
        interpolation=cfg.interpolation if cfg is not None and cfg.interpolation in ("bilinear", "bicubic") else
        "bilinear",
    )


register_namespace(PREFIX, resolve)


def list_timm_models() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return [f"{PREFIX}:{n}" for n in timm.list_models()]


# -- weights ---------------------------------------------------------------------------------------------------------


def local_pretrained_file(name: str) -> Path | None:
    """The weights file timm would load for ``timm:NAME``, if it is in the local Hugging Face cache (no network)."""
    cfg = _pretrained_cfg(arch_of(name))
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    # The cache folder as the environment says now (huggingface_hub reads it once, when first imported).
    hub = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                             else None)
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=hub)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def default_weights(name: str) -> str:
    """``--weights`` unset for a timm teacher: its pretrained file from the local cache, or a one-line error."""
    found = local_pretrained_file(name)
    if found is None:
        raise WeightsError(
            f"{name}: its pretrained weights are not in the local Hugging Face cache and featcache does not download; "
            "pass --weights PATH (a checkpoint or .safetensors file) or --weights random"
        )
    return str(found)


def _classifier_rows(state: dict[str, torch.Tensor], arch: str) -> int | None:
    cfg = _pretrained_cfg(arch)
    head = getattr(cfg, "classifier", None) if cfg is not None else None
    heads = head if isinstance(head, (tuple, list)) else [head] if head else []
    for h in heads:
        w = state.get(f"{h}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


# -- teacher -----------------------------------------------------------------------------------------------------------


class TimmFeatureModel(FeatureModel):
    """A timm classifier split at its classifier: features = pre-logits, logits = the classifier on them."""

    def __init__(self, net: Any, name: str, image_size: int) -> None:  # a timm model (its API is untyped)
        super().__init__()
        self.net = net
        self.classifier = net.get_classifier()
        self.num_classes = int(net.num_classes)
        self.num_features = int(getattr(net, "head_hidden_size", None) or net.num_features)
        self.default_image_size = image_size
        self.min_image_size = 16
        self.feature_layer = f"pre-logits of {name} (forward_head(pre_logits=True))"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.forward_head(self.net.forward_features(x), pre_logits=True), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def block_root(self) -> nn.Module:
        return self.net


def _build_teacher(weights, num_classes: int | None, seed: int, entry: ModelEntry, **_: Any) -> TimmFeatureModel:
    from featcache.models.weights import load_checkpoint, load_into

    timm = require_timm()
    arch = arch_of(entry.name)
    state = None
    if weights.source == "file":
        state = load_checkpoint(weights.ref)
        num_classes = num_classes or _classifier_rows(state, arch)
    elif weights.source != "random":
        raise WeightsError(f"{entry.name}: --weights takes a checkpoint path or random")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(arch, pretrained=False, **kwargs)
    if state is not None:
        load_into(net, state, source=f"--weights {weights.ref}")
    return TimmFeatureModel(net, entry.name, entry.default_image_size)


# -- student -----------------------------------------------------------------------------------------------------------


def _build_student(small: bool, image_size: int, entry: ModelEntry, **_: Any):
    from featcache.models.students import Arch

    timm = require_timm()
    net = timm.create_model(arch_of(entry.name), pretrained=False, num_classes=0)  # the body: pooled pre-logits
    width = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return Arch(body=net, body_dim=width, native_layers=[], act=nn.ReLU, head_dropout=0.0, variant="timm")
