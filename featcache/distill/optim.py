"""The optimizers and learning-rate schedules a run can ask for, by name: the one table `--optimizer` and
`--schedule` are checked against and built from (featcache.config.OptimOptions holds the values)."""

from __future__ import annotations

from typing import Callable

import torch

from featcache.config import OptimOptions


def _adam(params, lr: float, o: OptimOptions):
    return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)


def _adamw(params, lr: float, o: OptimOptions):
    return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)


def _sgd(params, lr: float, o: OptimOptions):
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.momentum > 0)


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
