"""``aka``: Adaptive Knowledge Amalgamation (Shen et al., CVPR 2019) from cached teacher rows, without labels.

A pool of teachers, each covering a set of classes (a *task*; several teachers may cover the same task), trains one
student whose head covers the dataset's classes. For every unlabelled sample and task, the student learns from one
teacher only: the covering teacher with the least prediction entropy (Eqs. 5–6). It imitates that teacher's
features through a transfer bridge — 1×1-convolution feature alignment (FA, Eq. 1) on both sides, transfer loss
(Eq. 2), weight regularisation against the all-zero solution (Eq. 4) — and its logits through a soft-target loss
with a learnable per-teacher scale λ_t (Eq. 7); the total is Eq. 8.

From the cache, the bridge always works on the teachers' cached feature vectors (the final block, pooled to 1×1:
the FA 1×1 convolutions are linear maps there) and, when the caches hold intermediate blocks (``extract --blocks
... --pool P``) and ``--student-blocks`` names the student's matching body modules, on every such block as P×P
maps with 1×1-convolution FA on both sides. The loss terms are ``featcache.losses.aka`` and its pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featcache.config import AKAOptions
from featcache.distill.methods.base import Method
from featcache.errors import ConfigError
from featcache.losses import aka, aka_regulariser, aka_soft, aka_transfer
from featcache.models.students import student_block_module
from featcache.specs import BlockSpec


@dataclass
class AKAFound:
    """What aka's ``prepare`` finds in the caches: per teacher, its logit columns inside the student's head (student
    columns, teacher columns) and, with --student-blocks, its cached block records; setup adds the student's block
    channels once the student is built."""

    teacher_columns: list[tuple[list[int], list[int]]] | None
    teacher_blocks: list[list[BlockSpec]] | None = None
    student_block_channels: list[int] | None = None


class _Scales(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(n))


class AdaptiveAmalgamation(Method):
    """L = Σ_tasks [ L_a(FA_s(f_s), FA_t(f_t)) + L_reg(FA_s) + L_reg(FA_t) + L_soft ]  with t the selected teacher —
    Eq. 8 (one cached block), averaged over the batch. No labels are used."""

    name = "aka"
    options = (AKAOptions,)
    min_teachers = 1
    max_teachers = None
    uses_labels = False

    @classmethod
    def prepare(cls, caches, train, head, config) -> "AKAFound":
        """Each teacher's logit columns inside the student's head (by class name: a teacher covers part of the
        classes) and, with --student-blocks, the cached blocks matched to them."""
        columns = []
        for c in caches:
            names = c.manifest.teacher.classes
            missing = [n for n in (names or []) if n not in train.classes]
            if not names or missing:
                raise ConfigError(
                    f"--method aka: cache {c.key} does not say which of the dataset's classes its logits cover"
                    + (f" ({missing[0]!r} is not a class of {train.name})" if missing else "")
                    + "; extract a teacher trained by `featcache train-teacher [--classes FILE]`"
                )
            shared = [k for k, n in enumerate(names) if n in head]  # teacher columns inside the student's head
            if not shared:
                raise ConfigError(f"--method aka: cache {c.key} covers none of the head's classes; drop that --teacher")
            columns.append(([head.index(names[k]) for k in shared], shared))
        teacher_blocks = None
        if config.student_blocks:
            for c in caches:
                if len(c.manifest.blocks) != len(config.student_blocks):
                    raise ConfigError(
                        f"--student-blocks names {len(config.student_blocks)} blocks but cache {c.key} holds "
                        f"{len(c.manifest.blocks)} ({', '.join(b.name for b in c.manifest.blocks) or 'none'}); "
                        "extract every teacher with as many --blocks"
                    )
            teacher_blocks = [list(c.manifest.blocks) for c in caches]
        return AKAFound(columns, teacher_blocks)

    def __init__(self, student, teacher_dims, num_classes, params):
        super().__init__(student, teacher_dims, num_classes, params)
        found = params.found if isinstance(params.found, AKAFound) else AKAFound(None)
        columns = found.teacher_columns
        if columns is None or len(columns) != len(teacher_dims):
            raise ConfigError("--method aka needs to know which dataset classes each teacher's logits cover")
        self.columns = [list(c[0]) for c in columns]
        aligned = params.aka.aka_dim or student.num_features
        self.fa_student = nn.ModuleList(nn.Linear(student.num_features, aligned, bias=False) for _ in teacher_dims)
        self.fa_teacher = nn.ModuleList(nn.Linear(d, aligned, bias=False) for d in teacher_dims)
        for fa in (*self.fa_student, *self.fa_teacher):  # start on the constraint of Eq. 3: unit-norm rows
            with torch.no_grad():
                fa.weight.copy_(F.normalize(torch.randn_like(fa.weight), dim=1))
        self.scale_holder = _Scales(len(teacher_dims))  # λ_t of Eq. 7
        # FA modules and scales are trained by the second optimizer (the method's own parameters).
        self.trainable.extend([*self.fa_student, *self.fa_teacher, self.scale_holder])
        # Tasks: teachers that cover the same classes compete through selective learning.
        tasks: dict[tuple[int, ...], list[int]] = {}
        for t, cols in enumerate(self.columns):
            tasks.setdefault(tuple(cols), []).append(t)
        self.tasks = list(tasks.values())
        # Block-wise transfer bridges (Eq. 8's Σ_l) when the caches hold intermediate blocks (extract --blocks):
        # student body module l is matched to each teacher's l-th cached block, both aligned by 1×1 convolutions.
        self.block_names = list(params.aka.student_blocks or [])
        self.fa_student_blocks = nn.ModuleList()
        self.fa_teacher_blocks = nn.ModuleList()
        self._captured: dict[str, torch.Tensor] = {}
        if self.block_names:
            s_channels = found.student_block_channels
            for blocks in found.teacher_blocks or []:
                self.fa_student_blocks.append(nn.ModuleList(
                    nn.Conv2d(cs, cs, 1, bias=False) for cs in s_channels))
                self.fa_teacher_blocks.append(nn.ModuleList(
                    nn.Conv2d(b.channels, cs, 1, bias=False) for b, cs in zip(blocks, s_channels, strict=True)))
            for fa in (*self.fa_student_blocks, *self.fa_teacher_blocks):
                for conv in fa:
                    with torch.no_grad():
                        w = conv.weight
                        w.copy_(F.normalize(torch.randn(w.shape[0], w.shape[1]), dim=1).view_as(w))
            self.trainable.extend([*self.fa_student_blocks, *self.fa_teacher_blocks])
            self.teacher_blocks = found.teacher_blocks
            for name in self.block_names:
                student_block_module(student, name).register_forward_hook(
                    lambda m, i, o, name=name: self._captured.__setitem__(name, o))
        for t, (cols, tcols) in enumerate(columns):
            self.register_buffer(f"cols_{t}", torch.tensor(cols, dtype=torch.int64), persistent=False)
            self.register_buffer(f"tcols_{t}", torch.tensor(tcols, dtype=torch.int64), persistent=False)

    def teacher_logits(self, rows, t: int) -> torch.Tensor:
        """Teacher t's logits over the classes it shares with the student's head."""
        return rows.logits[t].float().index_select(1, getattr(self, f"tcols_{t}"))

    def loss(self, student, x, y, rows, epoch):
        f_s = student.forward_features(x)
        logits = student.forward_head(f_s)
        b = len(x)
        transfer, reg, soft, teacher_logits = [], [], [], []
        for t in range(len(self.teacher_dims)):
            a_s = self.fa_student[t](f_s)
            a_t = self.fa_teacher[t](rows.features[t].to(f_s.dtype))
            l_a = aka_transfer(a_s, a_t)  # Eq. 2 per sample, summed over the blocks below (Eq. 8's Σ_l)
            l_reg = aka_regulariser(self.fa_student[t].weight) + aka_regulariser(self.fa_teacher[t].weight)
            for k, name in enumerate(self.block_names):
                block = self.teacher_blocks[t][k]
                p = block.pool
                s_map = F.adaptive_avg_pool2d(self._captured[name].float(), p)
                t_map = rows.blocks[t][k].float().view(b, block.channels, p, p)
                fa_s, fa_t = self.fa_student_blocks[t][k], self.fa_teacher_blocks[t][k]
                l_a = l_a + aka_transfer(fa_s(s_map), fa_t(t_map))
                l_reg = l_reg + aka_regulariser(fa_s.weight.flatten(1)) + aka_regulariser(fa_t.weight.flatten(1))
            s_scores = logits.float().index_select(1, getattr(self, f"cols_{t}"))
            teacher_logits.append(self.teacher_logits(rows, t))
            transfer.append(l_a)
            reg.append(l_reg)
            soft.append(aka_soft(s_scores, teacher_logits[t], self.scale_holder.value[t]))
        parts = {}  # the loss terms, averaged per epoch into metrics.jsonl
        total = aka(transfer, reg, soft, teacher_logits, self.tasks, terms=parts)
        return total, parts, logits
