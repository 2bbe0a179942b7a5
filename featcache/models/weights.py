"""Reading checkpoints into models: the one place that knows the checkpoint layouts people actually save.

Accepted: a bare state_dict; a dict holding it under ``state_dict``, ``model``, ``model_state_dict`` or
``net_state_dict`` (the original NTS-Net release); DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.``
prefixes are stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from featcache.errors import WeightsError
from featcache.util import safeload
from featcache.util.hashing import file_sha256  # noqa: F401  (re-exported)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "net_state_dict", "model")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state_dict inside a loaded checkpoint object and normalise its keys."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {_strip(str(k)): v for k, v in tensors.items()}
    raise WeightsError(
        f"{source} holds no state_dict (expected tensors at the top level or under one of "
        f"{', '.join(STATE_DICT_KEYS)}); save it with torch.save(model.state_dict(), PATH)"
    )


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file on the CPU and return its normalised state_dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"--weights {path}: file not found")
    if path.suffix == ".safetensors":  # timm's and Hugging Face's format: tensors only, nothing to unpickle
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"--weights {path}: reading .safetensors needs the safetensors package") from None
        try:
            return extract_state_dict(load_file(str(path)), source=f"--weights {path}")
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file
            raise WeightsError(f"--weights {path}: not a readable safetensors file ({exc})") from None
    try:
        # weights-only: unpickling arbitrary objects would run code from the file, so featcache never does.
        obj = safeload.load(path)
    except safeload.PickledObjectError as exc:
        raise WeightsError(
            f"--weights {path} pickles Python objects besides tensors ({exc.name}); featcache reads weights only. If "
            "you trust its source, load it yourself and save just the tensors: torch.save(model.state_dict(), NEW)"
        ) from None
    except safeload.UnreadableError as exc:
        raise WeightsError(f"--weights {path}: not a readable torch checkpoint ({exc})") from None
    return extract_state_dict(obj, source=f"--weights {path}")


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error listing the first missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}" + (" (is --num-classes right?)" if shapes else ""))
        if missing:
            parts.append(
                f"missing keys: {', '.join(missing[:4])}"
                + (f" (+{len(missing) - 4})" if len(missing) > 4 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:4])}"
                + (f" (+{len(unexpected) - 4})" if len(unexpected) > 4 else "")
            )
        raise WeightsError(f"{source} does not fit the model: {' | '.join(parts)}")
    model.load_state_dict(state, strict=True)
