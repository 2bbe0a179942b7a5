"""Teachers: any torchvision classifier, ResNet50, InceptionV3 and NTS-Net, each as a FeatureModel.

Weights (``--weights``) are one of
  * a torchvision weights enum name (``DEFAULT``, ``IMAGENET1K_V2``, ...), taken from the torch hub cache or
    downloaded where the network allows;
  * a local checkpoint file (state_dict or a dict holding one; see featcache.models.weights);
  * ``random``: random initialisation from a seed (tests, smoke runs).
The weights are resolved (and a file hashed) *before* the model is built, so a cache key can be computed and an
existing cache reused without constructing the teacher at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featcache.config import typecheck
from featcache.errors import FeatcacheError, WeightsError
from featcache.models.base import FeatureModel, small_vgg_body
from featcache.models.registry import ModelEntry, get_entry, register_model, unknown_model_error
from featcache.models.torchvision_models import (  # noqa: F401 - re-exported: teachers' public names
    AUX_PREFIXES,
    TorchvisionFeatureModel,
    build_torchvision,
    hub_checkpoint_dir,
    torchvision_classifiers,
    tv_default_size,
    tv_min_size,
    tv_weights_enum,
)
from featcache.models.weights import file_sha256, load_checkpoint, load_into
from featcache.specs import TransformSpec, WeightsInfo  # noqa: F401 - WeightsInfo re-exported: what a cache records
from featcache.util.fileio import printable

RANDOM = "random"


@dataclass
class Teacher:
    name: str
    model: FeatureModel
    weights: WeightsInfo
    entry: ModelEntry
    feature_layer: str
    classes: tuple[str, ...] | None = None

    @property
    def num_features(self) -> int:
        return self.model.num_features

    @property
    def num_classes(self) -> int:
        return self.model.num_classes


# -- registered teachers -----------------------------------------------------------------------------------------

# name -> torchvision builder name, for the teachers the papers use under their own names.
ALIASES = {"resnet50": "resnet50", "inceptionv3": "inception_v3"}


@register_model(
    "teacher", "resnet50", default_image_size=224, min_image_size=32, description="ResNet-50, 2048-d pooled features"
)
def _resnet50(weights: WeightsInfo, num_classes: int | None, seed: int, entry: ModelEntry, **_: Any):
    return build_torchvision("resnet50", weights, num_classes, seed, entry)


@register_model(
    "teacher",
    "inceptionv3",
    default_image_size=299,
    min_image_size=75,
    crop_fraction=299 / 342,
    description="Inception-v3 (aux head off), 2048-d pooled features, input >= 75 px",
    aliases=("inception_v3",),
)
def _inceptionv3(weights: WeightsInfo, num_classes: int | None, seed: int, entry: ModelEntry, **_: Any):
    return build_torchvision("inception_v3", weights, num_classes, seed, entry)


@register_model(
    "teacher",
    "nts-net",
    default_image_size=448,
    min_image_size=224,
    crop_fraction=448 / 600,
    resize_mode="square",
    description="NTS-Net (navigator + 4 parts), 10240-d concat features; needs --weights",
    aliases=("ntsnet",),
    needs_weights="nts-net needs --weights PATH (a checkpoint of the original NTS-Net release or of featcache "
                  "train-teacher), or --weights random for a smoke test",
    imagenet_backbone="resnet50",
    head_swappable=False,
    torchvision_weights=False,
)
def _ntsnet(weights: WeightsInfo, num_classes: int | None, seed: int, entry: ModelEntry, image_size: int = 448,
            **_: Any):
    from featcache.models.ntsnet import build_ntsnet

    if weights.source == "torchvision":
        raise WeightsError("nts-net has no torchvision weights: pass --weights PATH (an NTS-Net checkpoint) or random")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs: dict[str, Any] = {"image_size": image_size}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return build_ntsnet(weights=weights.ref if weights.source == "file" else None, **kwargs)


def teacher_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; any torchvision classifier gets a generic entry."""
    entry = get_entry("teacher", name)
    if entry is not None:
        return entry
    if name in torchvision_classifiers():
        return ModelEntry(
            name=name,
            builder=lambda weights, num_classes, seed, entry, **_: build_torchvision(name, weights, num_classes,
                                                                                      seed, entry),
            kind="teacher",
            default_image_size=tv_default_size(name),
            min_image_size=tv_min_size(name),
            description=f"torchvision {name}",
        )
    raise unknown_model_error("teacher", name, " or any torchvision classifier (`featcache teachers --all`)")


def checkpoint_record(path: Path) -> dict[str, Any] | None:
    """The ``featcache`` record of a featcache checkpoint (train-teacher's teacher.pt: its classes, its view, ...);
    None for anyone else's checkpoint."""
    try:
        # mmap: the tensors are mapped, not read, so this costs little even for large checkpoints (it runs at every
        # plan_extract); legacy (non-zip) files fail here and are never featcache's own.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - foreign or pickled checkpoints: load_checkpoint reports those
        return None
    record = obj.get("featcache") if isinstance(obj, dict) else None
    return record if isinstance(record, dict) else None


def _recorded_classes(path: Path) -> tuple[str, ...] | None:
    """The class names a featcache checkpoint says its logits cover, if any."""
    classes = (checkpoint_record(path) or {}).get("classes")
    return tuple(str(c) for c in classes) if isinstance(classes, list) and classes else None


def recorded_view(entry: ModelEntry, weights: WeightsInfo) -> TransformSpec | None:
    """The view a teacher trained by featcache was trained and evaluated on (teacher.pt's record; a run's config.json
    for the ``run`` teacher), which extract gives it by default; None for weights featcache did not train."""
    if weights.source != "file":
        return None
    path = Path(weights.ref)
    raw = _run_info(path).get("transform") if entry.weights_are_run else (checkpoint_record(path) or {}).get(
        "transform")
    if raw is None:
        return None
    try:
        return typecheck.conform(raw, TransformSpec)
    except (typecheck.TypeMismatch, FeatcacheError, TypeError, ValueError) as exc:
        raise WeightsError(f"--weights {printable(str(path))}: its recorded view is not a transform ({exc}); give "
                           "the view with --image-size/--resize/--resize-mode") from None


def resolve_weights(name: str, weights: str | None, seed: int = 0) -> WeightsInfo:
    """Interpret ``--weights`` for teacher ``name`` without building the model (files are hashed)."""
    entry = teacher_entry(name)
    if weights is None:
        if entry.needs_weights:
            raise WeightsError(entry.needs_weights)
        weights = entry.default_weights(entry.name) if entry.default_weights else "DEFAULT"
    if entry.weights_are_run:
        path = Path(weights or "").expanduser()
        info = _run_info(path)  # errors name the missing file
        classes = info.get("head_classes")
        from featcache.runs.rundir import BEST

        return WeightsInfo(source="file", ref=str(path.resolve()), sha256=file_sha256(path / BEST),
                           classes=tuple(classes) if classes else None)
    if weights == RANDOM:
        return WeightsInfo.random(seed)
    path = Path(weights).expanduser()
    looks_like_path = path.exists() or os.sep in weights or path.suffix in (".pt", ".pth", ".ckpt", ".tar", ".bin")
    if looks_like_path:
        if not path.is_file():
            raise WeightsError(f"--weights {weights}: file not found")
        return WeightsInfo(source="file", ref=str(path.resolve()), sha256=file_sha256(path),
                           classes=_recorded_classes(path))
    tv_name = ALIASES.get(entry.name, entry.name)
    if not entry.torchvision_weights:
        raise WeightsError(f"--weights {weights!r}: {entry.name} takes a checkpoint path or random")
    member = tv_weights_enum(tv_name, weights)
    categories = member.meta.get("categories")
    return WeightsInfo(
        source="torchvision",
        ref=f"{type(member).__name__}.{member.name}",
        url=member.url,
        classes=tuple(categories) if categories else None,
    )


def create_teacher(
    name: str,
    weights: str | WeightsInfo | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> Teacher:
    """Build teacher ``name`` in eval mode. ``weights`` as for ``--weights`` (or an already resolved WeightsInfo)."""
    entry = teacher_entry(name)
    info = weights if isinstance(weights, WeightsInfo) else resolve_weights(name, weights, seed)
    extra = {"image_size": image_size} if image_size is not None else {}
    model = entry.builder(weights=info, num_classes=num_classes, seed=seed, entry=entry, **extra)
    model.eval()
    classes = info.classes if info.classes and len(info.classes) == model.num_classes else None
    return Teacher(name=entry.name, model=model, weights=info, entry=entry, feature_layer=model.feature_layer,
                   classes=classes)


def teacher_from_manifest(manifest) -> Teacher:
    """The network that produced a cache, rebuilt from its manifest (``distill --online``: the same teacher run on
    every batch instead of read from the cache). A checkpoint must still hold the bytes the cache was made from."""
    info = manifest.teacher
    recorded: WeightsInfo = info.weights
    seed = recorded.random_seed() or 0
    weights = RANDOM if recorded.source == "random" else recorded.ref  # a file's path or a torchvision enum name
    if recorded.source == "file" and not Path(weights).exists():
        raise WeightsError(f"cache {manifest.key}: its teacher's weights {weights} are gone; --online needs them")
    teacher = create_teacher(info.name, weights, num_classes=info.num_classes, seed=seed,
                             image_size=manifest.transform.image_size)
    if teacher.weights.identity() != recorded.identity():
        raise WeightsError(f"cache {manifest.key}: its teacher's weights {recorded.ref} changed since the extract; "
                           "--online would run another teacher than the one cached")
    return teacher


def list_teachers(include_torchvision: bool = False) -> list[str]:
    from featcache.models.registry import list_models

    names = list_models("teacher")
    if include_torchvision:
        names = sorted(set(names) | set(torchvision_classifiers()))
    return names


class ConvNet(FeatureModel):
    """A small VGG-style CNN for small images: three stages of two 3×3 conv-BN-ReLU layers (width w, 2w, 4w), max
    pooling between stages, global average pooling → 4w-d features → linear classifier.

    Not from the papers: a teacher that trains in seconds on a CPU at 32 px (the demo's, and a quick baseline for
    CIFAR-sized data), where ImageNet architectures downsample 32 px inputs to almost nothing.
    """

    default_image_size = 32
    min_image_size = 8
    feature_layer = "global average pool of the body (input of head)"

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.body = small_vgg_body(width)
        c_in = 4 * width
        self.head = nn.Linear(c_in, num_classes)
        self.num_features = c_in
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@register_model(
    "teacher", "convnet", default_image_size=32, min_image_size=8, resize_mode="square",
    description="small VGG-style CNN for small images (128-d features); no published weights: train-teacher",
    needs_weights="convnet has no published weights: pass --weights PATH (from featcache train-teacher) or "
                  "--weights random",
    torchvision_weights=False,
)
def _convnet(weights: WeightsInfo, num_classes: int | None, seed: int, entry: ModelEntry, **_: Any):
    state = load_checkpoint(weights.ref) if weights.source == "file" else None
    if state is not None and num_classes is None and "head.weight" in state:
        num_classes = int(state["head.weight"].shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvNet(num_classes=num_classes or 10)
    if state is not None:
        load_into(model, state, source=f"--weights {weights.ref}")
    return model


class RunFeatureModel(FeatureModel):
    """A trained featcache run (a distilled student, e.g. an amalgamation component net) used as a teacher:
    its feature layer and head, exactly as it was evaluated."""

    def __init__(self, model: Any, num_classes: int, image_size: int) -> None:  # a student: a FeatureModel
        super().__init__()
        self.model = model
        self.num_features = int(model.num_features)
        self.num_classes = num_classes
        self.default_image_size = image_size
        self.feature_layer = f"the run's student feature layer ({getattr(model, 'feature_layer', 'input of head')})"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)

    def block_root(self) -> nn.Module:
        return self.model.body  # the student's own block names (as --student-blocks uses them)


def _run_info(path: Path) -> dict[str, Any]:
    from featcache.runs import rundir

    if not ((path / rundir.CONFIG).is_file() and (path / rundir.BEST).is_file()):
        raise WeightsError(f"--weights {path}: not a finished featcache run ({rundir.CONFIG} and {rundir.BEST} needed)")
    return rundir.read_config(path)


@register_model(
    "teacher", "run", default_image_size=224, min_image_size=8,
    description="a featcache distill run used as a teacher: --weights RUN_DIR (e.g. an aka component net)",
    weights_are_run=True,
)
def _run_teacher(weights: WeightsInfo, num_classes: int | None, seed: int, entry: ModelEntry, **_: Any):
    from featcache.runs import rundir

    if weights.source != "file":
        raise WeightsError("--teacher run needs --weights RUN_DIR (a finished featcache distill run)")
    path = Path(weights.ref)
    info = _run_info(path)
    if info.get("kind", "student") == "teacher":
        raise WeightsError(f"--weights {path} is a train-teacher run: extract it with --teacher "
                           f"{info['config']['student']} --weights {path / rundir.TEACHER_FILE}")
    from featcache.models.students import create_student

    student = create_student(**info["student_kwargs"])

    best = rundir.Checkpoint.load(path / rundir.BEST, hint=f"--weights {path}: re-run that training", full=False)
    load_into(student, best.student, source=f"--weights {path}")
    return RunFeatureModel(student, info["student_kwargs"]["num_classes"], info["transform"]["image_size"])
