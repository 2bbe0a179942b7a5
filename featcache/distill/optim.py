"""The optimizers and learning-rate schedules a run can ask for, by name: the one table `--optimizer` and
`--schedule` are checked against and built from (featcache.config.OptimOptions holds the values)."""

from __future__ import annotations

from typing import Callable

import torch

from featcache.config import OptimOptions


def _adam(params, lr: float, o: OptimOptions):
    return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay or 0.0)


def _adamw(params, lr: float, o: OptimOptions):
    return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay or 0.0)


def _sgd(params, lr: float, o: OptimOptions):
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay or 0.0,
                           nesterov=o.momentum > 0)


OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}

SCHEDULES: dict[str, Callable] = {
    # Adam with cosine annealing is the papers' setting (the default).
    "cosine": lambda opt, o, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total)),
    "step": lambda opt, o, total: torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma),
    "none": lambda opt, o, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
}


def make_optimizer(name: str, params, lr: float, options: OptimOptions):
    """``--optimizer NAME`` over ``params`` (validated names only: setup.validate checks against OPTIMIZERS)."""
    return OPTIMIZERS[name](params, lr, options)


def make_schedule(opt, options: OptimOptions, total_epochs: int):
    return SCHEDULES[options.schedule](opt, options, total_epochs)


class Warmup:
    """``--warmup-epochs W``: over the steps of the first W epochs each optimizer's learning rate rises linearly to the
    one the epoch schedule gives (step k of n gets (k+1)/n of it), and is restored before the schedule steps, so the
    schedule itself is unchanged (its cosine formula reads the groups' rates back). A large learning rate from the first
    step can throw a freshly initialised network's batch-norm statistics off for epochs (Goyal et al., 2017, §2.2)."""

    def __init__(self, optimizers: list, epochs: int, steps_per_epoch: int) -> None:
        self.optimizers = [o for o in optimizers if o is not None]
        self.epochs, self.steps = max(0, epochs), max(1, steps_per_epoch)
        self.base: list[list[float]] | None = None

    def step(self, epoch: int, step: int) -> None:
        """Before step ``step`` (0-based) of epoch ``epoch``."""
        if epoch >= self.epochs:
            return
        if self.base is None:
            self.base = [[g["lr"] for g in o.param_groups] for o in self.optimizers]
        self._scale(min(1.0, (epoch * self.steps + step + 1) / (self.epochs * self.steps)))

    def end_epoch(self) -> None:
        """After the epoch's last step, before the schedule steps: the schedule's own rates back."""
        if self.base is not None:
            self._scale(1.0)
            self.base = None

    def _scale(self, scale: float) -> None:
        assert self.base is not None
        for o, base in zip(self.optimizers, self.base, strict=True):
            for g, lr in zip(o.param_groups, base, strict=True):
                g["lr"] = lr * scale
