"""What a run is about to do, said before its first step: the data, the labels it may read, the model, the method and
its teachers (which caches, where), the schedule, the device, where rows live and the run directory; and a warning
for what is surprising (no teacher, a tiny test split, no labels read)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from featcache.util.runtime import device_name

if TYPE_CHECKING:
    from featcache.distill.engine import TrainingParts
    from featcache.distill.setup import Setup

# A test split this small moves accuracy in steps of 0.2 points or more: said, since it can mislead a comparison.
SMALL_TEST_SPLIT = 500


def _params(model: torch.nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.1f}M params" if n >= 1e5 else f"{n:,} params"


def _labels(s: Setup) -> str:
    n = len(s.train)
    if s.labels is None or s.labels.complete:
        return f"{n:,} train images, all labelled"
    if s.labels.count == 0:
        return f"{n:,} train images, no label read"
    return f"{n:,} train images: {s.labels.count:,} labelled ({s.labels.spec}), {n - s.labels.count:,} unlabelled"


# mobilenetv3 (4.2M parameters) memorised 2,000 synthetic images (2,100 per image); convnet_small (37 per image) and
# the CIFAR arms of docs/results.md (<= 1,400 per labelled image, with teachers far fewer) learn. Random crops stop it:
# with --augment pad-crop-flip the same network on the same images trained and tested alike (docs/students.md), so
# that policy is not warned about; a flip alone was not measured to, and counts for nothing. Cached views replayed
# (extract --views K) are K images per sample.
MEMORISE_PARAMS_PER_IMAGE = 1500
AUGMENT_AGAINST_MEMORISING = "pad-crop-flip"


def preflight_lines(s: Setup, t: TrainingParts) -> list[str]:
    """The block a run prints before training (one fact per line), then its warnings."""
    c = s.config
    model = s.model.describe() if hasattr(s.model, "describe") else f"{c.student}, {_params(s.model)}"  # type: ignore[operator]  # duck-typed: checked by hasattr
    teachers = [f"{cache.key} ({cache.directory.parent})" for cache in s.caches]
    if t.online is not None:
        teachers = [f"{k} (online: run on every batch)" for k in teachers]
    lines = [
        f"run       {c.run_dir}",
        f"data      {c.dataset}{_origin(s)}: {_labels(s)}; {len(s.test):,} test images; {len(s.test.classes)} classes; "
        f"{s.transform.describe()}",
        f"{s.kind:<9} {model}",
        f"method    {c.resolved_method() if s.kind == 'student' else 'ce (train-teacher)'}"
        + (f"; teachers {', '.join(teachers)}" if teachers else ""),
        f"schedule  {t.total_epochs} epochs × batch {c.batch_size}, {_optimizer(c)}; "
        f"{device_name(s.device)} ({s.precision}), {torch.get_num_threads()} threads, {t.workers} workers",
    ]
    if t.placement is not None:
        lines.append(f"rows      {t.placement.describe()}")
    return lines + [f"warning: {w}" for w in preflight_warnings(s)]


def _optimizer(c) -> str:
    """``adamw lr 0.003, weight decay 0.05, 1 warm-up epoch, residual branches zero-initialised``: what is not 0."""
    parts = [f"{c.optimizer} lr {c.lr:g}"]
    if c.weight_decay:
        parts.append(f"weight decay {c.weight_decay:g}")
    if c.warmup_epochs:
        parts.append(f"{c.warmup_epochs} warm-up epoch{'s' if c.warmup_epochs > 1 else ''}")
    if c.zero_init_residual:
        parts.append("residual branches zero-initialised")
    return ", ".join(parts)


def _origin(s: Setup) -> str:
    """Where the data came from when no --dataset named it: `` (from cache KEY's manifest, root /x/y)``."""
    return f" ({s.data_from.describe(s.config.data_root)})" if s.data_from is not None else ""


def _no_teacher(s: Setup) -> str:
    from featcache.cache.store import CacheStore
    from featcache.distill.resolve import stored_teachers

    c = s.config
    stored = stored_teachers(CacheStore(c.cache_dir, c.stores, offline=c.offline), c.student, s.train.identity())
    return ("no teacher: the student trains alone on its labels; "
            + (stored if stored else "give --teacher NAME to distil from a cached teacher (`featcache extract` "
               "makes one)"))


def preflight_warnings(s: Setup) -> list[str]:
    found = []
    if s.kind == "student" and not s.caches and not s.config.online:
        found.append(_no_teacher(s))
    memorise = _memorisation(s)
    if memorise:
        found.append(memorise)
    inconsistent = _inconsistency(s)
    if inconsistent:
        found.append(inconsistent)
    if len(s.test) < SMALL_TEST_SPLIT:
        found.append(f"the test split holds {len(s.test):,} images: one image is "
                     f"{100 / max(len(s.test), 1):.2f} points of test accuracy")
    return found


def _inconsistency(s: Setup) -> str | None:
    """What --allow-inconsistent let through: the cached rows do not describe what the student sees."""
    if not s.config.allow_inconsistent or not s.caches:
        return None
    why = []
    if s.config.augment != "none":
        why.append(f"--augment {s.config.augment} changes the student's images, the cached rows describe the "
                   "un-augmented view")
    specs = [c.manifest.transform for c in s.caches]
    if any(spec != specs[0] for spec in specs[1:]):
        why.append("the teachers' caches hold different views, the student sees one of them")
    if not why:
        return None
    return f"--allow-inconsistent: {'; '.join(why)} (the 'fixed teacher' setting, docs/methods.md)"


def _memorisation(s: Setup) -> str | None:
    """A student with far more parameters than training images (the ones its loss reads) can learn them by heart."""
    if s.kind != "student" or s.config.augment == AUGMENT_AGAINST_MEMORISING:
        return None
    images = len(s.train) if s.caches or s.labels is None else s.labels.count
    views = max((c.manifest.views.count for c in s.caches if c.manifest.views), default=1) if s.config.views else 1
    params = sum(p.numel() for p in s.model.parameters())
    if params <= MEMORISE_PARAMS_PER_IMAGE * max(images * views, 1):
        return None
    return (f"{s.config.student} has {params / 1e6:.1f}M parameters for {images:,} training images: it can learn "
            "them by heart and stay near chance on the test split (MobileNetV3 did on 2,000 synthetic images, "
            "docs/results.md); give it more images, --augment pad-crop-flip, or a smaller --student")
