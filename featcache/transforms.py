"""Named, serialisable transform specs.

A cache records *how* the teacher saw each image, as data rather than as a lambda, so that the cache key can hash
it and `distill` can rebuild exactly the same view for the student (torchvision carries transforms with its
weights for the same reason).

The pipeline is split in two halves on purpose:
  * geometry (resize + centre crop) runs on uint8 tensors in the DataLoader workers;
  * normalisation runs on the device, on the whole uint8 batch, after a 1-byte-per-channel host->device copy.
Random noise images (TS-Learning's random-image augmentation) are generated directly at the final size as
uint8 pixels from (seed, index), so they need no storage and follow the same normalisation.
"""

from __future__ import annotations

import numpy as np
import torch

from featcache.errors import ConfigError
from featcache.specs import (  # noqa: F401 - re-exported: the specs are data (featcache.specs), run here
    IMAGENET_MEAN,
    IMAGENET_STD,
    NOISE_GENERATOR,
    RESIZE_MODES,
    NoiseSpec,
    TransformSpec,
)
from featcache.util.runtime import one_cpu_thread


class Geometry:
    """uint8 [3, H, W] -> uint8 [3, S, S]; picklable, so DataLoader workers can run it."""

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        s = self.spec
        hw = tuple(image.shape[-2:])
        if s.resize_mode == "square" and hw == (s.resize, s.resize) == (s.image_size, s.image_size):
            return image  # already the model's size (CIFAR at 32 px): nothing to import or call per image
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = InterpolationMode(s.interpolation)
        size = [s.resize] if s.resize_mode == "shorter" else [s.resize, s.resize]
        if not (s.resize_mode == "square" and hw == (s.resize, s.resize)):
            image = F.resize(image, size, interpolation=mode, antialias=s.antialias)
        if tuple(image.shape[-2:]) != (s.image_size, s.image_size):
            image = F.center_crop(image, [s.image_size, s.image_size])
        return image


class Normalizer:
    """uint8 batch [B, 3, S, S] on any device -> normalised float32 batch on ``device`` (channels_last)."""

    def __init__(self, spec: TransformSpec, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        # x/255 - mean) / std folded into one multiply-add: x * scale + shift.
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(self.device)
        self.shift = (-mean / std).view(1, 3, 1, 1).to(self.device)

    def __call__(self, batch: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        if batch.dtype != torch.uint8:
            raise TypeError(f"Normalizer expects a uint8 batch, got {batch.dtype}")
        x = batch.to(self.device, non_blocking=True)
        if self.device.type == "cpu":
            return _normalize_on_one_thread(x, self.scale, self.shift, channels_last)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(self.shift, x.float(), self.scale)


def _normalize_on_one_thread(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                             channels_last: bool) -> torch.Tensor:
    """The CPU's normalisation: one pass (uint8 in, float32 out in the model's memory format) on one thread. A batch
    of a few MB gains nothing from splitting, and on a loaded 2-core box the second thread's barrier made the three
    ops of the GPU path take 16-24 ms per 256 CIFAR images against 2 ms here (extract at 0.93 of its serial limit)."""
    out = torch.empty(x.shape, dtype=torch.float32,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with one_cpu_thread():
        return torch.addcmul(shift, x, scale, out=out)  # x is promoted to float32 element by element


def default_transform(
    image_size: int,
    *,
    crop_fraction: float = 0.875,
    resize_mode: str = "shorter",
    resize: int | None = None,
    native_size: int | None = None,
    square_size: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> TransformSpec:
    """The evaluation view for a teacher at ``image_size``.

    Photos are resized to ``image_size / crop_fraction`` then centre-cropped (the teacher's own recipe).
    Datasets of small, already-centred images (``native_size`` set, e.g. 32 for CIFAR) are resized as a whole
    to ``image_size`` without a crop, because cropping a 32-px image throws away content, not background. Images
    all ``square_size`` x ``square_size`` at that size are left as they are (the same whole-image resize, a no-op).
    """
    if resize is None:
        if native_size is not None or square_size == image_size:
            return TransformSpec(image_size=image_size, resize=image_size, resize_mode="square", mean=mean, std=std,
                                 interpolation=interpolation)
        resize = int(round(image_size / crop_fraction))
    return TransformSpec(image_size=image_size, resize=resize, resize_mode=resize_mode, mean=mean, std=std,
                         interpolation=interpolation)


# -- random images (TS-Learning §3, multi-teacher §3.5) ---------------------------------------------------------


def noise_image(seed: int, index: int, image_size: int) -> torch.Tensor:
    """uint8 [3, S, S] random image number ``index`` of the noise set with ``seed``."""
    n = 3 * image_size * image_size
    bitgen = np.random.PCG64(np.random.SeedSequence([int(seed), int(index)]))
    raw = bitgen.random_raw((n + 7) // 8).astype("<u8", copy=False)
    pixels = raw.view(np.uint8)[:n].reshape(3, image_size, image_size)
    return torch.from_numpy(pixels.copy())


def noise_batch(seed: int, indices: np.ndarray | list[int], image_size: int) -> torch.Tensor:
    """uint8 [B, 3, S, S] for the given noise indices."""
    return torch.stack([noise_image(seed, int(i), image_size) for i in indices]) if len(indices) else torch.empty(
        (0, 3, image_size, image_size), dtype=torch.uint8
    )


class NoiseDataset(torch.utils.data.Dataset):
    """The noise set as a Dataset yielding (image, -1, index), shaped like ImageDataset items."""

    def __init__(self, spec: NoiseSpec) -> None:
        self.spec = spec

    def __len__(self) -> int:
        return self.spec.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return noise_image(self.spec.seed, index, self.spec.image_size), -1, index


# -- random augmentation on top of the evaluation view (distill --augment) ------------------------------------------

AUGMENTS = ("none", "flip", "pad-crop-flip")  # config.distill resolves --augment auto to one of them


def check_augment(policy: str) -> str:
    if policy not in AUGMENTS:
        raise ConfigError(f"--augment {policy!r}: choose one of auto, {', '.join(AUGMENTS)}", flag="--augment")
    return policy


def crop_pad(size: int) -> int:
    """Zero padding of ``pad-crop-flip`` for S×S views: S/8, the CIFAR recipe's 4 px at 32 px. One rule for the host
    loader, the device-resident loader and the cached views, so all three draw from the same crops."""
    return max(1, size // 8)


class Augment:
    """Random augmentation of a uint8 [3, S, S] view, run in DataLoader workers (seeded per worker by torch).

    ``flip``: horizontal flip with p = 0.5. ``pad-crop-flip``: the CIFAR recipe: zero-pad by S/8 (4 px at 32),
    random S×S crop, then flip. A cache of one fixed view does not describe augmented pixels, so distill refuses
    these with cached teachers unless ``--allow-inconsistent`` (the "fixed teacher" setting).
    """

    def __init__(self, policy: str, geometry: Geometry | None = None) -> None:
        self.policy = check_augment(policy)
        self.geometry = geometry

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.geometry is not None:
            image = self.geometry(image)
        if self.policy == "none":
            return image
        if self.policy == "pad-crop-flip":
            s = image.shape[-1]
            pad = crop_pad(s)
            padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
            top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
            image = padded[:, top : top + image.shape[-2], left : left + s]
        if bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image.contiguous()
