"""``multi``: T teachers at once, Eq. 5 and Algorithm 1 of the multi-teacher paper (Landro et al., 2021)."""

from __future__ import annotations

from featcache.config import TranslatorOptions
from featcache.distill.methods.base import Method
from featcache.losses import multi_teacher
from featcache.models.translators import make_translator


class MultiTeacher(Method):
    """L = L_xent(y, l0(f_l1)) + Σ_{i=1..T} [ L_MSE(t_i(f_ti), f_li) + L_xent(y, l0∘l1∘…∘l_{i−1}(t_i(f_ti))) ]  — Eq. 5.

    The student has layers l_T, …, l_1 before its classifier l0 (extra fully-connected layers are added when the
    architecture has fewer than T); teacher i (in --teacher order) is matched at the output f_li of layer l_i
    through its own translator t_i, and its translated feature is also classified through the remaining student
    layers (Algorithm 1, line 7). Student, layers and translators are updated together from the summed loss, with
    one optimizer for the student and one for the translators (§3.4). λ_mse weighs every MSE term and λ_xent every
    cross-entropy (both 1 in the paper), so with T = 1 this is exactly Eq. 3 (``ts-translator``).
    """

    name = "multi"
    options = (TranslatorOptions,)
    min_teachers = 1
    max_teachers = None

    @classmethod
    def student_options(cls, teacher_dims, params):
        return {"levels": len(teacher_dims)}

    def __init__(self, student, teacher_dims, num_classes, params):
        super().__init__(student, teacher_dims, num_classes, params)
        for i, dim in enumerate(teacher_dims, start=1):
            self.trainable.append(make_translator(params.translator.translator, dim, student.level_dim(i)))

    def loss(self, student, x, y, rows, epoch):
        layer_outputs, logits = student.forward_all(x)  # outputs of l_T, ..., l_1
        T = len(self.teacher_dims)
        levels = [layer_outputs[len(layer_outputs) - i] for i in range(1, T + 1)]  # f_l1, ..., f_lT
        translated = [self.trainable[i](rows.features[i]) for i in range(T)]
        classified = [student.head_from(i, t_i) for i, t_i in enumerate(translated, start=1)]
        p = self.params.loss
        parts = {}  # the loss terms, averaged per epoch into metrics.jsonl
        loss = multi_teacher(logits, levels, translated, classified, y, p.lambda_mse, p.lambda_xent, terms=parts)
        return loss, parts, logits
