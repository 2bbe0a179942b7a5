"""``kd``: Hinton et al. (2015) knowledge distillation from the cached logits."""

from __future__ import annotations

from featcache import losses
from featcache.config import KDOptions
from featcache.distill.methods.base import Method


class KnowledgeDistillation(Method):
    """L = λ_xent·XENT(y, s) + λ_kd·T²·KL(softmax(t/T) ‖ softmax(s/T)).

    s: student logits, t: the cached teacher logits (several teachers: their softened distributions are averaged,
    Hinton's ensemble target), T: ``--temperature``. The T² factor keeps the soft-target gradients on the scale of
    the hard-target ones (Hinton et al. §2). Logits are cached raw, so any T can be used without re-extracting.
    """

    name = "kd"
    options = (KDOptions,)
    min_teachers = 1
    max_teachers = None
    needs_teacher_classes = True

    def loss(self, student, x, y, rows, epoch):
        logits = student(x)
        kd = losses.kd(logits, rows.logits, self.params.kd.temperature)
        ce = losses.xent(logits, y)
        loss = self.params.loss.lambda_xent * ce + self.params.loss.lambda_kd * kd
        return loss, {"xent": ce.detach(), "kd": kd.detach()}, logits
