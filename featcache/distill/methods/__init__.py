"""Distillation methods, one module each (equations cited in each class docstring), behind a small registry."""

from __future__ import annotations

from featcache.distill.methods.aka import AdaptiveAmalgamation
from featcache.distill.methods.base import Method, MethodParams, TeacherRows
from featcache.distill.methods.ce import CrossEntropy
from featcache.distill.methods.fitnets import FitNets
from featcache.distill.methods.kd import KnowledgeDistillation
from featcache.distill.methods.multi import MultiTeacher
from featcache.distill.methods.translator import TSTranslator
from featcache.distill.methods.ts import TSLearning
from featcache.errors import ConfigError

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (CrossEntropy, KnowledgeDistillation, FitNets, TSLearning, TSTranslator, MultiTeacher,
              AdaptiveAmalgamation)
}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown --method {name!r}: choose one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "MethodParams", "TeacherRows", "get_method"]
