"""``ts``: TS-Learning (Landro et al., "Can a powerful neural network be a teacher for a weaker neural network?")."""

from __future__ import annotations

from featcache.distill.methods.base import Method
from featcache.errors import ConfigError
from featcache.losses import feature_regression, xent


class TSLearning(Method):
    """L = λ_mse·L_mse(f(x), g(x)) + λ_xent·L_xent(y, z(g(x)))  — Eq. 5 of the TS-Learning paper (MSE: Eq. 6).

    g(x) is the student's feature layer, adapted to the teacher's width D (the paper's "modified layer", Eq. 1
    requires f(x), g(x) ∈ R^d), so there is no translator; f(x) is the cached teacher feature; z is the student's
    classifier. One training cycle (no separate hint stage).
    """

    name = "ts"

    @classmethod
    def student_options(cls, teacher_dims, params):
        return {"feature_dim": teacher_dims[0]}

    def __init__(self, student, teacher_dims, num_classes, params):
        super().__init__(student, teacher_dims, num_classes, params)
        if student.num_features != teacher_dims[0]:
            raise ConfigError(
                f"--method ts needs the student's feature layer to match the teacher ({teacher_dims[0]}-d), "
                f"but it is {student.num_features}-d; drop --feature-dim or use --method ts-translator"
            )

    def loss(self, student, x, y, rows, epoch):
        g = student.forward_features(x)
        logits = student.forward_head(g)
        l_mse = feature_regression(g, rows.features[0])
        l_xent = xent(logits, y)
        loss = self.params.loss.lambda_mse * l_mse + self.params.loss.lambda_xent * l_xent
        return loss, {"mse": l_mse.detach(), "xent": l_xent.detach()}, logits
