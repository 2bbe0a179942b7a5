"""What a cache records, as typed specs: the teacher's view, the noise images, the augmented views, the cached blocks,
the extract's timing, the teacher's weights. The manifest (featcache.cache.format) holds these dataclasses, not dicts,
from the extract that writes them to every reader. Torch-free, so that a manifest can be read (the torch-free
re-extract answer, `cache ls`) without importing torch; the code that runs them lives with its subject
(featcache.transforms, featcache.views, featcache.models.teachers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from featcache.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("shorter", "square")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
NOISE_GENERATOR = "pcg64-raw-uint8-v1"
VIEW_POLICIES = ("rrc-flip", "pad-crop-flip")
WEIGHT_SOURCES = ("random", "torchvision", "file", "module")


@dataclass(frozen=True)
class TransformSpec:
    """Deterministic evaluation view: resize, centre crop to ``image_size``, normalise.

    ``resize_mode='shorter'`` scales the shorter side to ``resize`` keeping the aspect ratio (torchvision's
    ImageNet evaluation transform); ``'square'`` scales to ``resize``x``resize`` (the NTS-Net recipe: 600x600
    then a 448 centre crop; also the natural choice for 32x32 CIFAR images).
    """

    image_size: int
    resize: int
    resize_mode: str = "shorter"
    interpolation: str = "bilinear"
    antialias: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: int = 1

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"--image-size must be positive, got {self.image_size}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"--resize-mode {self.resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
        if self.resize < self.image_size:
            raise ConfigError(
                f"--resize {self.resize} is smaller than --image-size {self.image_size}; the centre crop needs "
                "resize >= image size"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"a transform needs 3 means and 3 positive stds, got {self.mean} and {self.std}")

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformSpec":
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)

    def describe(self) -> str:
        """The whole view in one line, as a user checks it against their teacher's training view: size, resize, crop,
        interpolation and normalisation (``cache info``, distill's pre-flight)."""
        s, r = self.image_size, self.resize
        how = self.interpolation + ("" if self.antialias else ", no antialias")
        if self.resize_mode == "shorter":
            geometry = f"resize {r} (shorter side, {how}) + centre crop {s}"
        elif r == s:
            geometry = f"whole image resized to {s}x{s} ({how}; none if already {s}x{s}), no crop"
        else:
            geometry = f"resize {r}x{r} ({how}) + centre crop {s}"
        if (tuple(self.mean), tuple(self.std)) == (IMAGENET_MEAN, IMAGENET_STD):
            norm = "ImageNet mean/std"
        else:
            norm = f"mean ({', '.join(f'{v:.4g}' for v in self.mean)}) std ({', '.join(f'{v:.4g}' for v in self.std)})"
        return f"{s} px: {geometry}, {norm}"


@dataclass(frozen=True)
class NoiseSpec:
    """N random images regenerated bit-exactly from (seed, index); no pixels are stored (featcache.transforms).

    Image i is 3*S*S uniform bytes from numpy's PCG64 bit generator seeded by SeedSequence([seed, i]). The raw
    bit stream of a BitGenerator is stable across numpy versions (NEP 19), unlike Generator's distributions.
    """

    count: int
    seed: int
    image_size: int
    generator: str = NOISE_GENERATOR

    def __post_init__(self) -> None:
        if self.count < 1 or self.image_size < 1:
            raise ConfigError(f"noise images: count and image size must be >= 1, got {self.count}, {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ViewSpec:
    """K augmented views per sample (extract --views), replayed exactly by distill (featcache.views)."""

    count: int  # K, including the deterministic view 0
    policy: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 2:
            raise ConfigError(f"--views {self.count}: K >= 2 (view 0 is the evaluation view; 1 means no --views)")
        if self.policy not in VIEW_POLICIES:
            raise ConfigError(f"--view-policy {self.policy!r}: choose one of {', '.join(VIEW_POLICIES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ViewSpec | None":
        return cls(int(d["count"]), str(d["policy"]), int(d.get("seed", 0))) if d else None


@dataclass(frozen=True)
class BlockSpec:
    """One cached intermediate block (extract --blocks): its output average-pooled to pool × pool, flattened
    channel-major (C, P, P): ``dim`` = channels · pool²."""

    name: str
    channels: int
    pool: int
    dim: int

    def __post_init__(self) -> None:
        if min(self.channels, self.pool, self.dim) < 1 or self.dim != self.channels * self.pool * self.pool:
            raise ConfigError(f"block {self.name!r}: channels {self.channels} × pool {self.pool}² is not its dim "
                              f"{self.dim}")


@dataclass
class Timing:
    """How long the extract took, every attempt included (a resumed extract adds to it), and where it ran."""

    seconds: float = 0.0
    images: int = 0
    images_per_s: float | None = None
    device: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    ranks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class WeightsInfo:
    """Where a teacher's numbers come from: enough to reproduce them and to tell two caches apart."""

    source: str  # "random" | "torchvision" | "file" | "module" (a user's nn.Module: sha256 of its state_dict)
    ref: str  # enum name, file path, or "seed=N" (random: the key's spelling of the seed)
    sha256: str | None = None  # file content hash (source "file")
    url: str | None = None  # download URL (source "torchvision"; the URL embeds the file hash)
    classes: tuple[str, ...] | None = None  # class names the logits cover, when the weights say so (not recorded)
    seed: int | None = None  # source "random": the initialisation seed

    def __post_init__(self) -> None:
        if self.source not in WEIGHT_SOURCES:
            raise ConfigError(f"weights: source {self.source!r} is not one of {', '.join(WEIGHT_SOURCES)}")

    @classmethod
    def random(cls, seed: int) -> "WeightsInfo":
        return cls(source="random", ref=f"seed={seed}", seed=seed)

    def record(self) -> dict[str, Any]:
        """What a manifest keeps: the identity, the ref (for humans, and to rebuild the teacher) and the seed."""
        return {**self.identity(), "ref": self.ref, **({"seed": self.seed} if self.seed is not None else {})}

    def random_seed(self) -> int | None:
        """The seed of random weights. Manifests written before the seed was recorded (the golden fixture) say it
        only in the ref, as the key does: ``seed=N``."""
        if self.source != "random":
            return None
        if self.seed is not None:
            return self.seed
        _, _, n = self.ref.partition("seed=")
        if not n.isdigit():
            raise ConfigError(f"weights: random weights with ref {self.ref!r} do not say their seed")
        return int(n)

    def identity(self) -> dict[str, Any]:
        """The part of the cache key contributed by the weights (the path is not part of it: content is)."""
        if self.source == "file":
            return {"source": "file", "sha256": self.sha256}
        if self.source == "torchvision":
            return {"source": "torchvision", "ref": self.ref, "url": self.url}
        if self.source == "module":  # a user's nn.Module (featcache.api): the hash of its state_dict
            return {"source": "module", "sha256": self.sha256}
        return {"source": "random", "ref": self.ref}
