"""Translators t(·): map a cached teacher feature (width D_t) to a student level's width D_s.

Multi-teacher paper (Landro et al., 2021), Eq. 3 and Eq. 5: the student keeps its own widths and each teacher's
feature passes through a translator before it is compared with (MSE) and classified through (XENT) the student.

* ``linear`` (``LinearTranslator``): a learnt nn.Linear(D_t, D_s), the paper's default.
* ``upsample`` (``UpsampleTranslator``): parameter-free 1-D linear resampling of the feature vector to D_s
  (``F.interpolate(..., mode="linear", align_corners=False)``), the paper's memory-saving choice between NTS-Net
  (10240) and InceptionV3 (2048). It works in both directions and is the identity when D_t == D_s.

Cached features arrive as float16; every translator casts its input to its own dtype (the parameters' dtype, which
``.to()`` / ``.half()`` change) before computing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ConfigError


class LinearTranslator(nn.Linear):
    """t(f) = W f + b, with parameters ``weight`` [out_dim, in_dim] and ``bias`` [out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__(in_dim, out_dim, bias=bias)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return super().forward(f.to(self.weight.dtype))


class UpsampleTranslator(nn.Module):
    """t(f) = f resampled to ``out_dim`` entries by 1-D linear interpolation (no parameters).

    Works on [..., in_dim]; the identity (apart from the dtype cast) when in_dim == out_dim.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        # No parameters, so an empty non-persistent buffer carries the module's dtype/device through .to().
        self.register_buffer("dtype_ref", torch.empty(0), persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.shape[-1] != self.in_dim:
            raise ValueError(f"expected features of width {self.in_dim}, got {tuple(f.shape)}")
        f = f.to(self.dtype_ref.dtype)  # type: ignore[arg-type]  # a buffer: a tensor
        if self.in_dim == self.out_dim:
            return f
        lead = f.shape[:-1]
        out = F.interpolate(f.reshape(-1, 1, self.in_dim), size=self.out_dim, mode="linear", align_corners=False)
        return out.reshape(*lead, self.out_dim)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


TRANSLATORS = {"linear": LinearTranslator, "upsample": UpsampleTranslator}


def make_translator(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """A translator of ``kind`` (``--translator``: linear | upsample) from in_dim to out_dim."""
    cls = TRANSLATORS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown --translator {kind!r}: choose one of {', '.join(TRANSLATORS)}")
    if in_dim < 1 or out_dim < 1:
        raise ConfigError(f"--translator {kind}: widths must be >= 1, got {in_dim} -> {out_dim}")
    return cls(in_dim, out_dim)
