"""What every distillation method provides, and the shared loss pieces.

A method owns its extra trainable modules (translators, regressors), which get their own optimizer (multi-teacher
paper §3.4), and computes the loss of one batch from the student and the teachers' *cached* rows. It never sees a
teacher network.

MSE terms are the per-element mean of Eq. 6 of the TS-Learning paper, 1/(m·d) ΣΣ (f − g)², for every method. Eq. 2 of
the multi-teacher paper writes the squared norm per sample (no 1/d); the two differ by the constant d, which λ_mse
absorbs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ConfigError


@dataclass
class MethodParams:
    """Loss weights and method options (the --lambda-* / --temperature / --translator flags)."""

    lambda_xent: float = 1.0
    lambda_mse: float = 1.0
    lambda_kd: float = 1.0
    temperature: float = 4.0
    translator: str = "linear"
    hint_epochs: int | None = None  # fitnets: epochs of the hint stage (default: as many as --epochs)
    # aka, per teacher: (student head columns, the teacher's logit columns for the same classes)
    teacher_columns: list[tuple[list[int], list[int]]] | None = None
    aka_dim: int | None = None  # aka: width of the aligned features (default: the student's feature width)
    # aka with block features: the student's body modules matched, in order, to each teacher's cached blocks
    student_blocks: list[str] | None = None
    student_block_channels: list[int] | None = None
    teacher_blocks: list[list[dict]] | None = None  # per teacher: the manifest's block records

    def check(self) -> None:
        """Refuse values no loss is defined for (a zero temperature divides by zero; a negative weight ascends)."""
        for flag, value in (("--lambda-xent", self.lambda_xent), ("--lambda-mse", self.lambda_mse),
                            ("--lambda-kd", self.lambda_kd)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag} must be a finite number >= 0, got {value}", flag=flag)
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"--temperature must be a finite number > 0 (the softmax divides by it), got "
                              f"{self.temperature}", flag="--temperature")
        if self.hint_epochs is not None and self.hint_epochs < 0:
            raise ConfigError(f"--hint-epochs must be >= 0, got {self.hint_epochs}", flag="--hint-epochs")
        if self.aka_dim is not None and self.aka_dim < 1:
            raise ConfigError(f"--aka-dim must be >= 1, got {self.aka_dim}", flag="--aka-dim")


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

    def __init__(self, student: nn.Module, teacher_dims: list[int], num_classes: int, params: MethodParams) -> None:
        super().__init__()
        self.teacher_dims = list(teacher_dims)
        self.num_classes = num_classes
        self.params = params
        self.translators = nn.ModuleList()  # trained by the second optimizer

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
    def prepare(cls, caches: list, train, head: list[str], config) -> dict:
        """Check the caches against this method and resolve what it needs from them (MethodParams fields); called
        once per run before the student is built. Methods that read cached blocks or class columns override it."""
        if config.student_blocks:
            raise ConfigError(f"--student-blocks: --method {cls.name} does not use block features (aka does)")
        return {}

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


def xent(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch's labelled samples (Eq. 1 of the multi-teacher paper, Eq. 4 of
    TS-Learning). Label -1 marks a sample whose label the run may not read (``--labels``): it adds nothing, and a
    batch without a labelled sample gives 0 (not the NaN of an empty mean)."""
    labelled = (y >= 0).sum()
    total = F.cross_entropy(logits.float(), y, ignore_index=-1, reduction="sum")
    return total / labelled.clamp(min=1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1/(m·d) ΣΣ (a − b)²: Eq. 6 of the TS-Learning paper, in float32 (cached rows arrive as float16)."""
    return F.mse_loss(a.float(), b.float())
