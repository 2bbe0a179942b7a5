"""The distillation losses, as plain functions of tensors: usable in any training loop (a plain loop, Lightning,
timm's train.py), and the one implementation that ``featcache distill --method ...`` itself calls.

Every function takes tensors and floats only (no featcache configuration objects) and computes in float32, since
cached rows arrive as float16. Papers (docs/methods.md lists them with their files):

* ``xent`` — softmax cross-entropy, label −1 ignored: Eq. 1 of Landro et al. (2021), *multi-teacher transfer
  learning* (MT), Eq. 4 of Landro et al., *Can a powerful neural network be a teacher for a weaker neural network?*
  (TS).
* ``mse`` / ``feature_regression`` — the per-element mean squared error 1/(m·d) ΣΣ (a − b)²: TS Eq. 6 (MT Eq. 2
  without its 1/d, a constant that the loss weight absorbs).
* ``kd`` — Hinton, Vinyals, Dean (2015), *Distilling the Knowledge in a Neural Network*: T²·KL(softmax(t/T) ‖
  softmax(s/T)), several teachers' softened distributions averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from featcache.errors import ConfigError

__all__ = ["feature_regression", "kd", "mse", "xent"]


def xent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch's labelled samples (MT Eq. 1, TS Eq. 4).

    ``labels`` are int64 class indices; −1 marks a sample whose label may not be read: it adds nothing, and a batch
    without a labelled sample gives 0 (not the NaN of an empty mean).
    """
    labelled = (labels >= 0).sum()
    total = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    return total / labelled.clamp(min=1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1/(m·d) ΣΣ (a − b)² over a batch of m rows of width d, in float32 (TS Eq. 6). ``a`` and ``b`` must have the
    same shape (broadcasting one row against a batch would give a plausible, wrong number)."""
    if a.shape != b.shape:
        raise ConfigError(f"mse: the two inputs differ in shape, {tuple(a.shape)} and {tuple(b.shape)}; map one to "
                          "the other's width first (a translator, a regressor)")
    return F.mse_loss(a.float(), b.float())


def feature_regression(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """L_mse(f(x), g(x)) of TS-Learning (TS Eq. 6): the student's feature layer g(x) [B, D] regresses the teacher's
    (cached) feature f(x) [B, D], per-element mean. The feature term of TS Eq. 5; widths must match (use
    ``translator_loss`` to keep the student's own width)."""
    if student_features.shape != teacher_features.shape:
        raise ConfigError(f"feature_regression: student features {tuple(student_features.shape)} and teacher "
                          f"features {tuple(teacher_features.shape)} differ in shape; widen the student's feature "
                          "layer to the teacher's or use translator_loss")
    return mse(student_features, teacher_features)


def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor],
       temperature: float = 4.0) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (Hinton et al. 2015, §2).

    ``student_logits`` s [B, C]; ``teacher_logits`` t [B, C] or a list of several teachers' [B, C] logits, whose
    softened distributions are averaged (Hinton's ensemble target). The T² factor keeps the soft-target gradients on
    the scale of the hard-target ones. Raw logits, so any temperature works.
    """
    if not temperature > 0:
        raise ConfigError(f"kd: temperature must be > 0 (the softmax divides by it), got {temperature}")
    teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    if not teachers:
        raise ConfigError("kd: teacher_logits is an empty list; pass at least one teacher's logits")
    T = temperature
    target = torch.stack([F.softmax(t.float() / T, dim=1) for t in teachers]).mean(0)
    return F.kl_div(F.log_softmax(student_logits.float() / T, dim=1), target, reduction="batchmean") * (T * T)
