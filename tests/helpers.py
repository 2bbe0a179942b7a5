"""What several test modules share and is not a fixture: small image writers, the one-line error check, a
deadline for code that could hang, a real small file system where one can be mounted, and the tiny datasets' names.

Fixtures live in conftest.py; test modules import these with ``from helpers import ...``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
SOD_STANFORD_DIRS = ["n02085620-Chihuahua", "n02088364-beagle", "n02099601-golden_retriever"]
SOD_PET_DOGS = ["beagle", "pug"]  # beagle merges with Stanford's beagle; pug is Pet-only


def write_image(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """A small random RGB image (PNG, or JPEG by suffix) at ``path``; returns its pixels [H, W, 3]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def one_line_error(result, *needles: str, alone: bool = False) -> str:
    """Exit status 2 and one ``error:`` line, the last thing printed (a progress bar may precede it; with ``alone``
    nothing may); returns that line with rich's wrapping undone, after checking it holds every needle."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in result.output and lines[-1].startswith("error:"), result.output
    assert sum(ln.startswith("error:") for ln in lines) == 1, result.output
    if alone:
        assert len(result.output.strip().splitlines()) == 1, result.output
    flat = " ".join(lines[-1].split())
    for n in needles:
        assert n in flat, flat
    return flat


def mount_tmpfs(path: Path, size: str) -> bool:
    """A real small file system where the test may make one (root with mount rights), else False."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def within(seconds: float):
    """Fail the block when it runs longer than ``seconds``: SIGALRM interrupts a busy Python loop or a blocking open
    (of a FIFO nobody reads), so a test of a hang fails rather than hangs. Main thread only."""
    def late(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the command line -----------------------------------------------------------------------------------------------
def invoke(*args):
    """``featcache ARGS`` in this process (paths may be given as Path); returns click's Result."""
    from typer.testing import CliRunner

    from featcache.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def flat(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file directly in ``directory``, by name: what "nothing was rewritten" compares."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# A tiny synthetic dataset and a small random teacher on it, as flags: the caches most CLI tests make.
SYN_FLAGS = ("--dataset", "synthetic", "-o", "num_train=24", "-o", "num_test=8", "--workers", "0")
SYN_EXTRACT = ("--teacher", "convnet", "--weights", "random", *SYN_FLAGS, "--image-size", "32", "--shard-rows", "16")
SYN_DISTILL = ("--student", "lenet5", *SYN_FLAGS, "--device", "cpu", "--batch-size", "8")

# A tiny image folder (FOLDER_CLASSES, 32 x 32 PNGs) and the commands the fault-injection tests run on it.
FOLDER_CLASSES = ("cat", "dog", "emu")
FOLDER_EXTRACT = ("--teacher", "convnet", "--weights", "random", "--dataset", "folder", "--workers", "0",
                  "--shard-rows", "8")
FOLDER_DISTILL = ("--student", "convnet_small", "--dataset", "folder", "--workers", "0", "--epochs", "1",
                  "--batch-size", "8", "--device", "cpu")
FOLDER_TEACH = ("--teacher", "convnet", "--dataset", "folder", "--workers", "0", "--epochs", "1", "--batch-size", "8",
                "--device", "cpu", "--init", "random")


def make_tree(root: Path, per_class: int = 6, seed: int = 0, size=(32, 32), ext: str = "png") -> Path:
    """``root/<class>/NNN.<ext>``: ``per_class`` random images of each of FOLDER_CLASSES."""
    for c, name in enumerate(FOLDER_CLASSES):
        for k in range(per_class):
            write_image(root / name / f"{k:03d}.{ext}", seed + 100 * c + k, size=size)
    return root


def folder_extract_key(*args) -> str:
    """Extract FOLDER_EXTRACT plus ``args`` into the personal store; returns the cache's key."""
    r = invoke("extract", *FOLDER_EXTRACT, *args)
    assert r.exit_code == 0, r.output
    return r.output.split("cache ")[1].split(":")[0].split(" ")[0].strip()

# JSON nested 100,000 deep: what a planted file may hold to exhaust a recursive parser.
DEEP_JSON = "[" * 100_000 + "]" * 100_000


def flip_byte(path: Path, where: float = 0.7) -> None:
    """Damage a file the way a bad disk does: one byte inverted, at ``where`` of its length."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))

# The synthetic dataset most library-level tests train on (resnet18_store in conftest.py holds its cache); a module
# whose assertions count other sizes keeps its own.
SYN = {"num_train": 64, "num_test": 32}


def first_column(output: str) -> str | list[str]:
    """What the identity column of a featcache table (featcache.cli.tables.Grid) shows in ``output``: in a table,
    that column's text over every line below the header's rule, joined without its spaces (a name folded or wrapped
    over lines reads whole again); where the rows became blocks (no rule), the lines that start at the margin (each
    block's heading). `shows_whole` says whether a name is there."""
    lines = output.splitlines()
    rule = next((i for i, ln in enumerate(lines) if ln.strip() and set(ln) <= {"─", " "}), None)
    if rule is None:
        return [ln for ln in lines if ln and not ln[0].isspace()]
    width = lines[rule].index(" ") if " " in lines[rule] else len(lines[rule])
    return "".join("".join(ln[:width].split()) for ln in lines[rule + 1:])


def shows_whole(output: str, names) -> bool:
    """Whether a featcache table in ``output`` shows each of ``names`` whole in its identity column."""
    shown = first_column(output)
    if isinstance(shown, list):
        return all(name in shown for name in names)
    return all("".join(name.split()) in shown for name in names)
