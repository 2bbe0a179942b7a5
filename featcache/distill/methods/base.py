"""What every distillation method provides.

A method owns its extra trainable modules (translators, regressors), which get their own optimizer (multi-teacher
paper §3.4), and computes the loss of one batch from the student and the teachers' *cached* rows. It never sees a
teacher network. The loss terms themselves are the functions of ``featcache.losses`` (one implementation for the CLI
and for a user's own loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from featcache.config import AKAOptions, FitNetsOptions, KDOptions, LossOptions, TranslatorOptions
from featcache.errors import ConfigError


@dataclass
class MethodParams:
    """What a method is given: the loss weights every method shares, each method's own section of the options
    (featcache.config: ``kd.temperature``, ``translator.translator``, ``fitnets.hint_epochs``, ``aka.aka_dim``; a
    method reads the sections it declares in ``Method.options``), and what its ``prepare`` found in the caches."""

    loss: LossOptions = field(default_factory=LossOptions)
    kd: KDOptions = field(default_factory=KDOptions)
    translator: TranslatorOptions = field(default_factory=TranslatorOptions)
    fitnets: FitNetsOptions = field(default_factory=FitNetsOptions)
    aka: AKAOptions = field(default_factory=AKAOptions)
    found: Any = None  # Method.prepare's result (aka: featcache.distill.methods.aka.AKAFound)

    @classmethod
    def from_config(cls, config, found: Any = None) -> "MethodParams":
        """The sections of a DistillConfig (flat flags) as the method's typed parameters."""
        return cls(loss=config.section(LossOptions), kd=config.section(KDOptions),
                   translator=config.section(TranslatorOptions), fitnets=config.section(FitNetsOptions),
                   aka=config.section(AKAOptions), found=found)

    def check(self) -> None:
        """Refuse values no loss is defined for (a zero temperature divides by zero; a negative weight ascends)."""
        for flag, value in (("--lambda-xent", self.loss.lambda_xent), ("--lambda-mse", self.loss.lambda_mse),
                            ("--lambda-kd", self.loss.lambda_kd)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} must be a finite number >= 0, got {value}", flag=flag)
        if not math.isfinite(self.kd.temperature) or self.kd.temperature <= 0:
            raise ConfigError(f"--temperature must be a finite number > 0 (the softmax divides by it), got "
                              f"{self.kd.temperature}", flag="--temperature")
        if self.fitnets.hint_epochs is not None and self.fitnets.hint_epochs < 0:
            raise ConfigError(f"--hint-epochs must be >= 0, got {self.fitnets.hint_epochs}", flag="--hint-epochs")
        if self.aka.aka_dim is not None and self.aka.aka_dim < 1:
            raise ConfigError(f"--aka-dim must be >= 1, got {self.aka.aka_dim}", flag="--aka-dim")


@dataclass
class TeacherRows:
    """Teacher knowledge for one batch, as cached: one tensor per teacher."""

    features: list[torch.Tensor]  # [B, D_i]
    logits: list[torch.Tensor]  # [B, C_i]
    blocks: list[list[torch.Tensor]] | None = None  # per teacher, per cached block [B, C·P·P] (extract --blocks)


class Method(nn.Module):
    """Base class. Subclasses set ``name``, the teacher count they accept, and implement ``loss``."""

    name: ClassVar[str] = ""
    min_teachers: ClassVar[int] = 1
    max_teachers: ClassVar[int | None] = 1
    needs_teacher_classes: ClassVar[bool] = False  # uses teacher logits over the dataset's classes
    uses_labels: ClassVar[bool] = True  # False: trains from teacher rows alone (--unlabeled is implied)
    options: ClassVar[tuple[type, ...]] = ()  # its own option sections (featcache.config), besides the loss weights

    def __init__(self, student: nn.Module, teacher_dims: list[int], num_classes: int, params: MethodParams) -> None:
        super().__init__()
        self.teacher_dims = list(teacher_dims)
        self.num_classes = num_classes
        self.params = params
        # The method's own modules — translators (ts-translator, multi), alignment bridges and scales (aka) — trained
        # by the second optimizer (multi-teacher paper §3.4).
        self.trainable = nn.ModuleList()

    # -- what the trainer asks ----------------------------------------------------------------------------------
    @classmethod
    def check_teachers(cls, n: int) -> None:
        lo, hi = cls.min_teachers, cls.max_teachers
        if n >= lo and (hi is None or n <= hi):
            return
        if hi == 0:
            raise ConfigError(f"--method {cls.name} trains the student alone; drop --teacher")
        want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise ConfigError(f"--method {cls.name} takes {want} --teacher, got {n}")

    @classmethod
    def prepare(cls, caches: list, train, head: list[str], config) -> Any:
        """Check the caches against this method and resolve what it needs from them (``MethodParams.found``);
        called once per run before the student is built. Methods that read cached blocks or class columns override
        it."""
        if config.student_blocks:
            raise ConfigError(f"--student-blocks: --method {cls.name} does not use block features (aka does)")
        return None

    @classmethod
    def student_options(cls, teacher_dims: list[int], params: MethodParams) -> dict:
        """Keyword arguments for create_student (e.g. feature_dim to adapt the feature layer)."""
        return {}

    def total_epochs(self, epochs: int) -> int:
        return epochs

    def stage(self, epoch: int) -> str:
        return "train"

    def loss(
        self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: TeacherRows, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Returns (total loss, named components (detached), student logits)."""
        raise NotImplementedError

