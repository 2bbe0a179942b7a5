"""``ts-translator``: one teacher through a translator, Eq. 3 of the multi-teacher paper (Landro et al., 2021)."""

from __future__ import annotations

from featcache.config import TranslatorOptions
from featcache.distill.methods.base import Method
from featcache.losses import translator_loss
from featcache.models.translators import make_translator


class TSTranslator(Method):
    """L = L_MSE(t(f_t), f_l1) + L_xent(y, l0(t(f_t))) + L_xent(y, l0(f_l1))  — Eq. 3 (with λ_mse, λ_xent).

    The student keeps its original feature width; the translator t maps the cached teacher feature f_t to it
    (``--translator linear``, or ``upsample``: parameter-free resampling, the paper's memory-saving choice). The
    second cross-entropy makes the translated features serve the classification task (§3.2). Translators have
    their own optimizer (§3.4).
    """

    name = "ts-translator"
    options = (TranslatorOptions,)

    def __init__(self, student, teacher_dims, num_classes, params):
        super().__init__(student, teacher_dims, num_classes, params)
        self.trainable.append(make_translator(params.translator.translator, teacher_dims[0], student.num_features))

    def loss(self, student, x, y, rows, epoch):
        f_l1 = student.forward_features(x)
        logits = student.forward_head(f_l1)
        t = self.trainable[0](rows.features[0])
        p = self.params.loss
        parts = {}  # the loss terms, averaged per epoch into metrics.jsonl
        loss = translator_loss(f_l1, logits, t, student.head_from(1, t), y, p.lambda_mse, p.lambda_xent, terms=parts)
        return loss, parts, logits
