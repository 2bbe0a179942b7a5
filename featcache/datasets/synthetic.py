"""A procedurally generated shape-classification set: no files, deterministic, quick to render.

Class = which shape is drawn (circle, square, triangle, cross, ring, star, hexagon, crescent, heart, half disk,
square frame, bar). Everything else is nuisance, drawn independently of the class: the shape's colour, position,
scale and rotation, and a textured background (stripes, checker or smooth colour blobs) in random colours, plus
pixel noise. So the mean colour says nothing about the class while the shape is learnable by a small CNN.

Sample ``i`` of a split is rendered from ``np.random.default_rng([seed, split_code, i])`` alone, so any index can
be produced independently (in any worker, in any order) and bit-exactly. Labels are ``i % num_classes``: balanced
and known without rendering. The shape is rasterised at 2x and box-filtered, which anti-aliases its edges.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from featcache.datasets.base import ImageDataset, check_split
from featcache.datasets.registry import register_dataset
from featcache.errors import DatasetError

SPLIT_CODES = {"train": 0, "test": 1}
NOISE_AMPLITUDE = 0.07  # uniform in [-a, a], std ~0.04
TEXTURE_CONTRAST = 0.3  # per-channel max difference between the two background colours
MIN_CONTRAST = 0.4  # min L2 distance (in [0,1] RGB) between the shape colour and every background colour


# -- shapes: (u, v) in the shape's own frame, the shape fits the unit disk ---------------------------------------
# Polygons are intersections of half-planes (no arctan2: that alone would double the render time).
def _half_plane_count(u: np.ndarray, v: np.ndarray, sides: int, offset: float) -> np.ndarray:
    """How many of the ``sides`` half-planes ``u cos t + v sin t <= offset`` (t = 2 pi k / sides) hold."""
    count = np.zeros(u.shape, dtype=np.uint8)
    for k in range(sides):
        t = 2 * math.pi * k / sides
        count += u * np.float32(math.cos(t)) + v * np.float32(math.sin(t)) <= offset
    return count


def _polygon(u: np.ndarray, v: np.ndarray, sides: int, radius: float) -> np.ndarray:
    """Regular polygon with the given circumradius."""
    return _half_plane_count(u, v, sides, radius * math.cos(math.pi / sides)) == sides


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pentagram {5/2}: the points inside at least 4 of the 5 lines joining every second vertex."""
    return _half_plane_count(u, v, 5, math.cos(2 * math.pi / 5)) >= 4


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Two round lobes on a square standing on its corner."""
    lobes = ((np.abs(u) - 0.33) ** 2 + (v + 0.22) ** 2) <= 0.41**2
    return lobes | (np.abs(u) + np.abs(v - 0.1) <= 0.74)


def _disk(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    return u * u + v * v <= r * r


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    return (np.abs(u) <= half_u) & (np.abs(v) <= half_v)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: _disk(u, v, 0.85),
    "square": lambda u, v: _box(u, v, 0.66, 0.66),
    "triangle": lambda u, v: _polygon(u, v, 3, 1.0),
    "cross": lambda u, v: _box(u, v, 0.26, 0.92) | _box(u, v, 0.92, 0.26),
    "ring": lambda u, v: _disk(u, v, 0.9) & ~_disk(u, v, 0.5),
    "star": _star,
    "hexagon": lambda u, v: _polygon(u, v, 6, 0.92),
    "crescent": lambda u, v: _disk(u, v, 0.9) & ~_disk(u - 0.45, v, 0.72),
    "heart": _heart,
    "half_disk": lambda u, v: _disk(u, v + 0.35, 0.9) & (v >= -0.35),
    "frame": lambda u, v: _box(u, v, 0.68, 0.68) & ~_box(u, v, 0.42, 0.42),
    "bar": lambda u, v: _box(u, v, 0.92, 0.22),
}
SHAPE_NAMES = tuple(SHAPES)


# -- backgrounds: a weight map w in [0,1] mixing two colours --------------------------------------------------------
def _rotated(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = rng.uniform(0, np.pi)
    c, s = math.cos(t), math.sin(t)
    return xs * c + ys * s, ys * c - xs * s


def _stripes(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    a, _ = _rotated(rng, xs, ys)
    period = rng.uniform(0.1, 0.3) * size
    return 0.5 + 0.5 * np.tanh(3 * np.sin((2 * math.pi) * (a / period + rng.random())))


def _checker(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    a, b = _rotated(rng, xs, ys)
    cell = rng.uniform(0.12, 0.3) * size
    return (np.floor(a / cell) + np.floor(b / cell)) % 2


@lru_cache(maxsize=64)
def _upsampler(size: int, g: int) -> np.ndarray:
    """[size, g] bilinear interpolation matrix from a g-point grid to ``size`` pixels."""
    pos = np.linspace(0, g - 1, size)
    lo = np.minimum(pos.astype(int), g - 2)
    frac = pos - lo
    m = np.zeros((size, g), dtype=np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    m.flags.writeable = False
    return m


def _blobs(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Smooth noise: a coarse random grid upsampled bilinearly (two small matrix products)."""
    g = int(rng.integers(3, 6))
    m = _upsampler(size, g)
    w = m @ rng.random((g, g), dtype=np.float32) @ m.T
    lo, hi = float(w.min()), float(w.max())
    return (w - np.float32(lo)) * np.float32(1 / max(hi - lo, 1e-6))


BACKGROUNDS = (_stripes, _checker, _blobs)


@lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (xs, ys) at 1x and the 2x sample positions, float32, shared read-only."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    s2 = ((np.arange(2 * size) + 0.5) / 2).astype(np.float32)
    for a in (xs, ys, s2):
        a.flags.writeable = False
    return xs, ys, s2


def render(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """One image as uint8 [size, size, 3], drawing every random choice from ``rng`` in a fixed order."""
    xs, ys, s2 = _grids(size)
    # Background.
    kind = int(rng.integers(len(BACKGROUNDS)))
    # Texture contrast is kept below the shape's contrast, so the shape (not the texture) carries the edges.
    base = rng.random(3, dtype=np.float32)
    delta = (rng.random(3, dtype=np.float32) - np.float32(0.5)) * np.float32(2 * TEXTURE_CONTRAST)
    bg_colors = np.stack([base, np.clip(base + delta, 0, 1)])
    w = BACKGROUNDS[kind](rng, xs, ys, size)[..., None]
    image = bg_colors[0] + (bg_colors[1] - bg_colors[0]) * w

    # Shape colour: the first of a few candidates that contrasts with both background colours (else the best).
    cands = rng.random((8, 3), dtype=np.float32)
    contrast = np.linalg.norm(cands[:, None, :] - bg_colors[None], axis=-1).min(axis=1)
    ok = contrast >= MIN_CONTRAST
    fg = cands[int(np.argmax(ok)) if ok.any() else int(np.argmax(contrast))]

    # Shape geometry, rasterised at 2x (pixel-centre sample points) and box-filtered to coverage in [0, 1].
    radius = rng.uniform(0.24, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    c, sn = np.float32(np.cos(angle) / radius), np.float32(np.sin(angle) / radius)
    dx, dy = s2[None, :] - np.float32(cx), s2[:, None] - np.float32(cy)
    u, v = dx * c + dy * sn, dy * c - dx * sn
    hits = SHAPES[shape](u, v).view(np.uint8).reshape(size, 2, 2 * size)
    rows = hits[:, 0] + hits[:, 1]
    cover = (rows[:, 0::2] + rows[:, 1::2]) * np.float32(0.25)
    image += (fg - image) * cover[..., None]

    # Uniform pixel noise (a third of the cost of Gaussian noise).
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(2 * NOISE_AMPLITUDE)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


class SyntheticShapes(ImageDataset):
    name = "synthetic"

    def __init__(self, *, seed: int, image_size: int, split_code: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.image_size = image_size
        self.native_size = image_size  # small centred images: resize whole, never crop
        self.split_code = split_code

    def read_image(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.split_code, index])
        shape = self.classes[int(self.targets[index])]
        hwc = render(rng, shape, self.image_size)
        return torch.from_numpy(hwc).permute(2, 0, 1).contiguous()


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high and value > high):
        bound = f"in [{low}, {high}]" if high else f">= {low}"
        raise DatasetError(f"synthetic: option {name}={value!r} must be an integer {bound}")
    return int(value)


@register_dataset("synthetic", needs_root=False)
def build_synthetic(
    root: object,
    split: str,
    seed: int = 0,
    image_size: int = 32,
    num_train: int = 2000,
    num_test: int = 500,
    num_classes: int = 10,
) -> SyntheticShapes:
    """The synthetic shapes set; ``root`` is ignored. Every option is recorded in params (and so the cache key)."""
    check_split(split)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 8, 1024)
    num_train = _check_int("num_train", num_train, 0)
    num_test = _check_int("num_test", num_test, 0)
    num_classes = _check_int("num_classes", num_classes, 2, len(SHAPE_NAMES))
    n = num_train if split == "train" else num_test
    return SyntheticShapes(
        seed=seed,
        image_size=image_size,
        split_code=SPLIT_CODES[split],
        split=split,
        root=None,
        classes=SHAPE_NAMES[:num_classes],
        sample_ids=[f"synthetic/{split}/{i:06d}" for i in range(n)],
        targets=np.arange(n) % num_classes,
        params={
            "seed": seed,
            "image_size": image_size,
            "num_train": num_train,
            "num_test": num_test,
            "num_classes": num_classes,
        },
    )
