"""``fitnets``: Romero et al. (FitNets) as analysed in §3.1 of the multi-teacher paper."""

from __future__ import annotations

from torch import nn

from featcache.config import FitNetsOptions
from featcache.distill.methods.base import Method
from featcache.losses import mse, xent


class FitNets(Method):
    """Two stages, 2·N epochs in all (§3.1):

    1. hint stage, ``--hint-epochs`` N (default: ``--epochs``): L = λ_mse·L_MSE(r(f_l1), f_t), where the linear
       regressor r maps the student's hint (feature) layer to the teacher's feature width; no classification loss;
    2. then ``--epochs`` N epochs of L = L_xent(y, l0(f_l1)) with the regressor (and the teacher) removed.

    The regressor is trained by the translator optimizer and only exists in stage 1.
    """

    name = "fitnets"
    options = (FitNetsOptions,)

    def __init__(self, student, teacher_dims, num_classes, params):
        super().__init__(student, teacher_dims, num_classes, params)
        self.trainable.append(nn.Linear(student.num_features, teacher_dims[0]))
        self._epochs = None

    def total_epochs(self, epochs):
        self._epochs = epochs
        return self.hint_epochs(epochs) + epochs

    def hint_epochs(self, epochs: int) -> int:
        hint = self.params.fitnets.hint_epochs
        return hint if hint is not None else epochs

    def stage(self, epoch):
        assert self._epochs is not None, "total_epochs() must be called first"
        return "hint" if epoch < self.hint_epochs(self._epochs) else "xent"

    def loss(self, student, x, y, rows, epoch):
        f_l1 = student.forward_features(x)
        logits = student.forward_head(f_l1)
        if self.stage(epoch) == "hint":
            l_mse = mse(self.trainable[0](f_l1), rows.features[0])
            return self.params.loss.lambda_mse * l_mse, {"mse": l_mse.detach()}, logits
        l_xent = xent(logits, y)
        return l_xent, {"xent": l_xent.detach()}, logits
