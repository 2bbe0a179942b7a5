"""Which training labels a run may read (`distill --labels`), and how batches mix labelled and unlabelled samples.

A lab rarely has labels for everything it can cache: one extract covers the whole pool of images, and a run reads the
labels of a subset only. The others enter the loss through the teacher terms alone — every method's label term is
the cross-entropy of :func:`featcache.losses.xent`, which ignores label -1, so: ``ts`` keeps its
feature term on every sample, ``kd`` its soft term, ``multi``/``ts-translator`` their teachers' terms, ``fitnets``
its hint; ``ce`` trains on the labelled samples only (the others would add nothing), and ``aka`` reads no label at
all. The engine replaces every unlabelled sample's label by -1 on the device before the method sees the batch, so
nothing downstream can read a label the run was told not to read (tested).

``--labels`` takes:

=================  =============================================================================================
``all``            every training label (the default)
``none``           no label (``--unlabeled``; methods that need labels refuse)
``N/class``        the first N samples of each class, in dataset order (``300/class``: the same images as CIFAR's
                   ``-o train_per_class=300``, so the labelled subset is one a run without the pool can train on)
``F`` (0 < F < 1)  the first ceil(F·n_c) samples of each class c (stratified, so rare classes keep labels)
``ids:FILE``       the samples whose ids are listed in FILE, one per line (ids as `featcache` names them), UTF-8
=================  =============================================================================================

The choice is deterministic (no seed), recorded in config.json with the count and the sha256 of the labelled ids
(and of FILE's bytes for ``ids:FILE``), and shown by `featcache report`. An ids file is an input like the data: a
run resumed after it was edited is refused, and a recipe's run made from other contents is stale.

``--labeled-share S`` (0 < S < 1) makes every batch S labelled: an epoch is one pass over the unlabelled samples,
and the labelled ones are drawn, in a fresh order each pass, as often as it takes. The default (unset) is the
natural mix: each sample once per epoch, so an epoch means what it means for every other run and the arms of a
table take the same number of steps. Use a share when the labelled set is so small that its term would be starved.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.datasets.base import first_of_each_class
from featcache.errors import ConfigError
from featcache.util.fileio import printable

_PER_CLASS = re.compile(r"^(\d+)/class$")


@dataclass(frozen=True)
class LabelSubset:
    """The labelled samples of a training split: ``mask[i]`` is True when sample i's label may be read."""

    spec: str
    mask: np.ndarray
    file_sha256: str | None = None  # ids:FILE: the sha256 of the file's bytes as read

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def complete(self) -> bool:
        return bool(self.mask.all())

    def record(self, ids: list[str]) -> dict:
        """What config.json records: the spec, how many, and which (a hash of the labelled ids, in order); for
        ids:FILE also the file's own hash, which --resume and a recipe's stale check compare."""
        chosen = [ids[i] for i in np.flatnonzero(self.mask)]
        digest = hashlib.sha256("\n".join(chosen).encode()).hexdigest()
        out = {"spec": self.spec, "labeled": self.count, "total": len(self.mask), "ids_sha256": digest}
        if self.file_sha256 is not None:
            out["file_sha256"] = self.file_sha256
        return out


def check_spec(spec: str, share: float | None = None) -> None:
    """Refuse a --labels / --labeled-share value that cannot mean anything (before any data is read)."""
    if spec in ("all", "none") or spec.startswith("ids:"):
        pass
    elif per_class := _PER_CLASS.match(spec):
        if int(per_class.group(1)) < 1:
            raise ConfigError(f"--labels {spec}: at least 1 per class", flag="--labels")
    else:
        try:
            f = float(spec)
        except ValueError:
            raise ConfigError(f"--labels {spec!r}: give all, none, N/class (e.g. 300/class), a fraction in (0, 1) or "
                              "ids:FILE", flag="--labels") from None
        if not (math.isfinite(f) and 0 < f < 1):
            raise ConfigError(f"--labels {spec}: a fraction must lie strictly between 0 and 1", flag="--labels")
    if share is not None and not (math.isfinite(share) and 0 < share < 1):
        raise ConfigError(f"--labeled-share must lie strictly between 0 and 1, got {share}", flag="--labeled-share")


def select(spec: str, targets: np.ndarray, ids: list[str], num_classes: int) -> LabelSubset:
    """The labelled subset ``spec`` names in a split with these ``targets`` and sample ``ids``."""
    check_spec(spec)
    targets = np.asarray(targets, dtype=np.int64)
    n = len(targets)
    if spec == "all":
        return LabelSubset(spec, np.ones(n, dtype=bool))
    if spec == "none":
        return LabelSubset(spec, np.zeros(n, dtype=bool))
    if spec.startswith("ids:"):
        mask, digest = _from_file(ids_file(spec), ids)
        return LabelSubset(spec, mask, digest)
    counts = np.bincount(targets, minlength=num_classes)
    m = _PER_CLASS.match(spec)
    want = np.full(num_classes, int(m.group(1))) if m else np.ceil(float(spec) * counts).astype(np.int64)
    return LabelSubset(spec, first_of_each_class(targets, want))


def ids_file(spec: str) -> Path:
    """The file an ``ids:FILE`` spec names (``~`` expanded; relative to the working directory, as a flag's path)."""
    return Path(spec[4:]).expanduser()


def read_ids_file(path: Path) -> tuple[str, str]:
    """An ids file's text and the sha256 of its bytes; a file that is missing, not a regular file (a FIFO would
    block the run) or not UTF-8 is one ConfigError naming it."""
    where = f"--labels ids:{printable(str(path))}"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: not a regular file; name a text file of sample ids, one per line",
                              flag="--labels")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})", flag="--labels") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8, one sample id per line",
                          flag="--labels") from None
    return text, hashlib.sha256(data).hexdigest()


def _from_file(path: Path, ids: list[str]) -> tuple[np.ndarray, str]:
    text, digest = read_ids_file(path)
    wanted = [line.strip() for line in text.splitlines() if line.strip()]
    where = {sid: i for i, sid in enumerate(ids)}
    unknown = [w for w in wanted if w not in where]
    if unknown:
        raise ConfigError(f"--labels ids:{printable(str(path))}: {len(unknown)} id(s) are not samples of the "
                          f"training split (first: {printable(repr(unknown[0]))})", flag="--labels")
    mask = np.zeros(len(ids), dtype=bool)
    mask[[where[w] for w in wanted]] = True
    return mask, digest


@dataclass(frozen=True)
class Sampling:
    """How an epoch visits a split whose labels are partly hidden: ``mask`` marks the labelled samples; ``share``
    (--labeled-share) fixes their part of every batch; ``only_labeled`` skips the others (a run whose only term is the
    label term: ce)."""

    mask: np.ndarray
    share: float | None = None
    only_labeled: bool = False


def epoch_batches(order: np.ndarray, batch_size: int, drop_last: bool, sampling: Sampling | None,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch's visiting ``order`` cut into batches of dataset indices, as ``sampling`` asks (None: every sample
    once, in order)."""
    if sampling is not None and sampling.only_labeled:
        order = order[sampling.mask[order]]
    elif sampling is not None and sampling.share is not None:
        batches = shared_order(order, sampling.mask, batch_size, sampling.share, rng)
        return batches[:-1] if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size else batches
    n = len(order)
    return [order[s - batch_size:min(s, n)] for s in range(batch_size, n + (0 if drop_last else batch_size),
                                                           batch_size)]


def shared_order(order: np.ndarray, mask: np.ndarray, batch_size: int, share: float,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of one epoch with ``share`` of every batch labelled: the unlabelled samples of ``order`` once, in
    order; the labelled ones drawn from fresh permutations as often as needed."""
    unlabeled = order[~mask[order]]
    labeled = order[mask[order]]
    if not len(labeled) or not len(unlabeled):
        n = len(order)
        return [order[s:s + batch_size] for s in range(0, n, batch_size)]
    per = max(1, min(batch_size - 1, round(share * batch_size)))
    rest = batch_size - per
    n_batches = -(-len(unlabeled) // rest)
    need = n_batches * per
    draws = np.concatenate([rng.permutation(labeled) for _ in range(-(-need // len(labeled)))])[:need]
    return [np.concatenate([draws[k * per:(k + 1) * per], unlabeled[k * rest:(k + 1) * rest]])
            for k in range(n_batches)]
