"""Stage 2 by name as the CLI runs it (:func:`distill`, which also takes an ``nn.Module`` student), and the registries
a lab extends from its own code (:func:`register_student`, :func:`register_method`, ``list_*``). Stage 1 by name is
``featcache.extract.extract_with``."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

import torch
from torch import nn

from featcache.api.adapters import ModuleFeatureModel
from featcache.errors import ConfigError

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def distill(config=None, /, *, student: str | nn.Module | None = None, feature_layer: str | Callable | None = None,
            reporter=None, **options: Any):
    """Stage 2, as ``featcache distill`` runs it: ``distill(student=..., teachers=[key], dataset=..., method="kd",
    run_dir=...)`` (keywords are DistillConfig's fields) or ``distill(DistillConfig(...))``. Returns the run's
    DistillSummary; the run directory is the CLI's (``featcache eval``, ``report`` and ``runs ls`` read it).

    ``student`` is a registered name or an ``nn.Module``: the module's features (``feature_layer`` as for a teacher:
    None for timm's ``forward_features``/``forward_head`` split, a submodule name such as ``"avgpool"``, or
    ``fn(module, x) -> (features, logits)``) become the body of a featcache student, whose feature layer and
    classifier each method shapes (docs/students.md); the module is trained in place."""
    from featcache.config import DistillConfig
    from featcache.config.flags import config_from
    from featcache.distill.trainer import distill as run

    name = _module_student(student, feature_layer) if isinstance(student, nn.Module) else student
    if config is not None and name is not None:
        config = dataclasses.replace(config, student=name)
    elif name is not None:
        options["student"] = name
    return run(config_from(DistillConfig, config, options, "distill"), reporter)


class _FeatureBody(nn.Module):
    """A user's module as a student body: images -> its feature vectors [B, D]."""

    def __init__(self, module: nn.Module, feature_layer: str | Callable | None, image_size: int) -> None:
        super().__init__()
        self.net = ModuleFeatureModel(module, feature_layer, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def _arch(module: nn.Module, feature_layer: str | Callable | None, image_size: int):
    """The Arch of a student whose body is ``module``'s features (the width found by one forward pass)."""
    from featcache.models.student_net import Arch

    if not isinstance(module, nn.Module):
        raise ConfigError(f"student: the builder gave a {type(module).__name__}; it must return an nn.Module")
    body = _FeatureBody(module, feature_layer, image_size)
    was_training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad():
        width = int(body.eval()(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
    body.train(was_training)
    return Arch(body=body, body_dim=width, native_layers=[], act=nn.ReLU, head_dropout=0.0, variant="python")


def _add_student(name: str, build: Callable[[int], nn.Module], feature_layer, replace: bool, **meta: Any) -> str:
    import featcache.models  # noqa: F401 - the built-in models are registered before a name may clash
    from featcache.models.registry import ModelEntry, add_entry

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"register_student: name {name!r}: use lowercase letters, digits, '-', '_' or '.'")
    meta.setdefault("min_image_size", 1)
    entry = ModelEntry(name=name, kind="student", own_stem=True, description="python module",
                       builder=lambda small, image_size, entry, **_: _arch(build(image_size), feature_layer,
                                                                           image_size), **meta)
    add_entry(entry, replace=replace)
    return name


def _module_student(module: nn.Module, feature_layer) -> str:
    """A name for ``module`` as this process's student (each call replaces the previous module of its class)."""
    from featcache.models.registry import PYTHON_PREFIX

    name = PYTHON_PREFIX + re.sub(r"[^a-z0-9_.-]", "-", type(module).__name__.lower())
    return _add_student(name, lambda _size: module, feature_layer, replace=True)


def register_student(name: str, fn: Callable[..., nn.Module] | None = None, *,
                     feature_layer: str | Callable | None = None, default_image_size: int = 224, **meta: Any):
    """Register a student architecture under ``name`` (usable as ``distill(student=name)``, in recipes run from
    this process, and by ``featcache eval`` of its runs from this process): ``fn()`` — or ``fn(image_size=S)`` when
    it takes that keyword — returns a fresh ``nn.Module`` whose features (``feature_layer`` as for a teacher) become
    the student's body. Use as ``register_student("my-net", fn)`` or as a decorator ``@register_student("my-net")``.
    A name already registered is a ModelError."""
    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        takes_size = "image_size" in inspect.signature(f).parameters
        _add_student(name, lambda size: f(image_size=size) if takes_size else f(), feature_layer, replace=False,
                     default_image_size=default_image_size, **meta)
        return f

    return deco(fn) if fn is not None else deco


def register_method(cls: type) -> type:
    """Register a distillation method defined outside featcache: a subclass of ``featcache.Method`` that sets
    ``name`` and implements ``loss(student, x, y, rows, epoch) -> (loss, {name: term}, student_logits)``; it is then
    usable as ``distill(method=name)``. Also a class decorator. A name already taken is a ConfigError."""
    from featcache.distill.methods import METHODS, Method

    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"register_method: {cls!r} is not a subclass of featcache.Method")
    if not isinstance(cls.name, str) or not _NAME.fullmatch(cls.name):
        raise ConfigError(f"register_method: {cls.__qualname__}.name {cls.name!r}: set a name of lowercase letters, "
                          "digits, '-', '_' or '.'")
    if METHODS.get(cls.name, cls) is not cls:
        raise ConfigError(f"register_method: method {cls.name!r} exists already ({METHODS[cls.name].__qualname__}); "
                          "choose another name")
    METHODS[cls.name] = cls
    return cls


def list_teachers() -> list[str]:
    """The registered teachers' names (``featcache teachers``; ``timm:NAME`` names any timm model besides)."""
    import featcache.models  # noqa: F401 - importing the models registers them
    from featcache.models.registry import list_models

    return list_models("teacher")


def list_students() -> list[str]:
    """The registered students' names (``featcache students``), those registered from Python included."""
    import featcache.models  # noqa: F401 - importing the models registers them
    from featcache.models.registry import list_models

    return list_models("student")


def list_methods() -> list[str]:
    """The distillation methods' names (``--method``), those registered from Python included."""
    from featcache.distill.methods import METHODS

    return list(METHODS)
