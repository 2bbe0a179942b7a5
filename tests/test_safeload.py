"""featcache.util.safeload: a checkpoint or pickle from someone else is never unpickled beyond plain tensors and
containers; a crafted one is refused in one line before any of its code runs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from helpers import SYN_DISTILL, SYN_FLAGS, invoke, one_line_error


# -- 1. a run directory's checkpoints are never unpickled -------------------------------------------------------------
class Payload:
    """What a crafted checkpoint carries: unpickling it makes a directory (any code could run instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_crafted_checkpoints_are_refused_before_any_code_runs(finished_run, tmp_path):
    marker = tmp_path / "pwned"
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        state = torch.load(finished_run / name, weights_only=True)
        state["extra"] = Payload(marker)
        torch.save(state, finished_run / name)
    one_line_error(invoke("eval", finished_run), "checkpoint-best.pt", "pickles Python objects")
    one_line_error(invoke("eval", finished_run, "--checkpoint", "last"), "checkpoint-last.pt", "pickles Python objects")
    one_line_error(invoke("distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", finished_run,
                          "--resume"), "checkpoint-last.pt", "pickles Python objects")
    # A distill run used as a teacher (extract --teacher run --weights RUN) reads the same file.
    one_line_error(invoke("extract", "--teacher", "run", "--weights", finished_run, *SYN_FLAGS), "checkpoint-best.pt")
    assert not marker.exists()


def test_no_unpickling_outside_weights_only_in_the_package():
    """Every torch.load in featcache is weights-only; pickle itself is used only by the CIFAR reader (restricted)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "featcache"
    loads = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name == "torch.load":
                loads += 1
                only = [k.value for k in node.keywords if k.arg == "weights_only"]
                assert only and isinstance(only[0], ast.Constant) and only[0].value is True, f"{path}: {name}"
            if name.startswith("pickle.") or name.endswith("Unpickler"):
                assert path.name == "cifar.py", f"{path}: {name}"
    assert loads >= 2


def test_a_crafted_cifar_pickle_is_refused_before_any_code_runs(cifar10_pickle_root, tmp_path):
    """CIFAR's official release is pickles: featcache reads them with an unpickler that builds arrays only."""
    import pickle

    marker = tmp_path / "pwned"
    batch = cifar10_pickle_root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        obj = pickle.load(f)
    obj[b"extra"] = Payload(marker)
    batch.write_bytes(pickle.dumps(obj, protocol=2))
    r = invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "cifar10", "--data-root",
               cifar10_pickle_root, "--workers", "0")
    one_line_error(r, "data_batch_1", "not an official CIFAR pickle", "posix.mkdir")
    assert not marker.exists()
    # The untouched official layout still reads (protocol 2, as the release was written).
    obj.pop(b"extra")
    batch.write_bytes(pickle.dumps(obj, protocol=2))
    from featcache.datasets import get_dataset

    assert len(get_dataset("cifar10", cifar10_pickle_root, "train")) == 20
