"""The one way featcache reads a torch file: weights-only, with the refusal of a pickled object turned into words.

A checkpoint in a run directory or a weights file may have been written by someone else, and unpickling arbitrary
objects runs code from the file. ``torch.load(weights_only=True)`` allows tensors, numbers, strings and containers
only; :func:`load` names the object a refused file tried to unpickle, so that the caller's error can say what to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# torch's wording changed across releases: "Unsupported global: GLOBAL x.y" and "unsupported GLOBAL x.y whose ..."
_GLOBAL = re.compile(r"(?i)unsupported (?:global: )?GLOBAL (\S+)")
_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", re.S)


class PickledObjectError(Exception):
    """The file pickles a Python object besides tensors (``name``: its global, e.g. ``posix.system``)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class UnreadableError(Exception):
    """Not a readable torch file (truncated, another format); the message is a short reason."""


def load(path: Path, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)``; raises PickledObjectError or UnreadableError."""
    import torch

    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        text = str(exc)
        found = _GLOBAL.search(text)
        if found:
            raise PickledObjectError(found.group(1).rstrip(".,;")) from None
        found = _REASON.search(text)
        raise UnreadableError(" ".join((found.group(1) if found else text or type(exc).__name__).split())[:160]) \
            from None
