"""``ce``: the student alone, softmax cross-entropy on the labels (the papers' baseline)."""

from __future__ import annotations

from featcache.distill.methods.base import Method
from featcache.losses import xent


class CrossEntropy(Method):
    """L = XENT(y, l0(f_l1)) — Eq. 1 of the multi-teacher paper. Cached teachers, if any, are ignored."""

    name = "ce"
    min_teachers = 0
    max_teachers = 0

    def loss(self, student, x, y, rows, epoch):
        logits = student(x)
        loss = xent(logits, y)
        return loss, {"xent": loss.detach()}, logits
