"""Name -> model builder, shared by teachers and students (timm's register/create pattern).

    >>> from featcache.models import create_teacher
    >>> teacher = create_teacher("resnet50", weights="random")
    >>> features, logits = teacher.model(images)

A registered entry carries the architecture's defaults (input size, crop recipe) so that a transform can be
derived from the teacher, as torchvision's weights carry their preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from featcache.errors import ModelError


@dataclass(frozen=True)
class AloneRecipe:
    """How a student is trained with no teacher when the run leaves these options unset (`featcache distill
    --student NAME` and nothing else). With teachers every student gets PAPERS_RECIPE: the papers' Adam 1e-3 for 30
    epochs, the setting the methods' losses are weighted for."""

    epochs: int = 30
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: int = 0  # the learning rate rises linearly over the first steps of these epochs
    batch_size: int = 128
    zero_init_residual: bool = False  # the last batch norm of every residual block starts at zero (the block is
    #                                   the identity at initialisation)


PAPERS_RECIPE = AloneRecipe()


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    kind: str  # "teacher" or "student"
    default_image_size: int = 224
    min_image_size: int = 32
    crop_fraction: float = 0.875
    resize_mode: str = "shorter"
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # What makes an entry different, declared here rather than tested by name elsewhere:
    needs_weights: str = ""  # non-empty: there are no default weights; this says what to pass instead
    weights_are_run: bool = False  # --weights is a featcache run directory (the "run" teacher)
    imagenet_backbone: str | None = None  # torchvision model whose ImageNet weights --init imagenet loads (default:
    #                                       the entry's own torchvision model)
    head_swappable: bool = True  # a checkpoint's classifier head may be replaced for another class count
    # The input recipe of the weights (timm's pretrained_cfg); None: ImageNet's mean/std, bilinear resize.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"
    torchvision_weights: bool = True  # --weights may name torchvision weights (DEFAULT, IMAGENET1K_V2, ...)
    default_weights: Callable[[str], str] | None = None  # --weights unset: fn(name) -> a checkpoint path
    own_stem: bool = False  # a student whose stem cannot be made CIFAR-style (--small-input is refused)
    # Students: what distill uses with no teacher for the options left unset (docs/students.md measures each).
    alone: AloneRecipe = field(default_factory=lambda: PAPERS_RECIPE)


_REGISTRY: dict[tuple[str, str], ModelEntry] = {}
PYTHON_PREFIX = "python-"  # the name featcache.distill gives a student passed as an nn.Module
# "prefix:NAME" families resolved on demand (timm:NAME): prefix -> fn(kind, name) -> ModelEntry | None.
_NAMESPACES: dict[str, Callable[[str, str], ModelEntry | None]] = {}


def register_namespace(prefix: str, resolve: Callable[[str, str], ModelEntry | None]) -> None:
    """Names ``prefix:NAME`` of both kinds are resolved by ``resolve(kind, name)`` (which may import lazily)."""
    _NAMESPACES[prefix] = resolve


def register_model(kind: str, name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        entry = ModelEntry(name=name, builder=fn, kind=kind, **meta)
        for n in (name, *entry.aliases):
            if (kind, n) in _REGISTRY:
                raise ValueError(f"{kind} {n!r} registered twice")
            _REGISTRY[(kind, n)] = entry
        return fn

    return deco


def add_entry(entry: ModelEntry, *, replace: bool = False) -> None:
    """Register ``entry`` (a model defined in a user's code: featcache.register_student); a name taken already is a
    ModelError unless ``replace`` and the entry it replaces was added this way too."""
    for n in (entry.name, *entry.aliases):
        old = _REGISTRY.get((entry.kind, n))
        if old is not None and not (replace and old.description == entry.description):
            raise ModelError(f"{entry.kind} {n!r} exists already ({old.description or 'built in'}); choose another "
                             "name")
        _REGISTRY[(entry.kind, n)] = entry


def list_models(kind: str) -> list[str]:
    return sorted({e.name for (k, _), e in _REGISTRY.items() if k == kind})


def get_entry(kind: str, name: str) -> ModelEntry | None:
    prefix, sep, _ = name.partition(":")
    if sep and prefix in _NAMESPACES:
        return _NAMESPACES[prefix](kind, name)
    return _REGISTRY.get((kind, name))


def unknown_model_error(kind: str, name: str, extra: str = "") -> ModelError:
    known = ", ".join(list_models(kind))
    flag = "--teacher" if kind == "teacher" else "--student"
    if name.startswith(PYTHON_PREFIX):  # a run of a module passed to featcache.distill: the class lives in user code
        return ModelError(f"{kind} {name!r} was a Python module given to featcache.distill; in Python, "
                          f"fc.register_student({name!r}, build, feature_layer=...) with your class, then evaluate")
    return ModelError(f"unknown {kind} {name!r} ({flag}): choose one of {known}{extra}")

