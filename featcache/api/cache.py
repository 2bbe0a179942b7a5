"""One cache as a user sees it: :func:`open_cache` gives a :class:`Cache` — its typed manifest, its rows by dataset
index, and the student-side view that matches them (a ``torchvision.transforms.v2`` pipeline for the evaluation view;
with K cached views, the exact replay of view k of sample i)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from featcache.cache.format import AUG, FEATURES, LOGITS, PART_DATA, Manifest, TeacherInfo
from featcache.cache.reader import FeatureCache
from featcache.errors import ConfigError
from featcache.specs import TransformSpec, ViewSpec


def student_view(spec: TransformSpec):
    """A ``torchvision.transforms.v2`` pipeline giving the student the view a cache describes: PIL image or uint8
    tensor [3, H, W] -> float32 [3, S, S], resized, centre-cropped and normalised exactly as the extract did."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(spec.interpolation)
    size = [spec.resize] if spec.resize_mode == "shorter" else [spec.resize, spec.resize]
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, interpolation=mode, antialias=spec.antialias),
        v2.CenterCrop([spec.image_size, spec.image_size]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ])


class Cache:
    """A complete cache: ``manifest`` (typed: featcache.cache.format.Manifest), ``teacher``, ``dataset``,
    ``transform``, ``rows(indices)``, ``view`` (the student's transform) and, with K cached views, ``views`` (K),
    ``view_spec`` and ``view_image(image, index, view)``."""

    def __init__(self, reader: FeatureCache) -> None:
        self.reader = reader

    @property
    def manifest(self) -> Manifest:
        """The manifest, typed (featcache.cache.format.Manifest): what was cached, how, from what."""
        return self.reader.manifest

    @property
    def key(self) -> str:
        """The cache's key: teacher-dataset-split-hash."""
        return self.reader.key

    @property
    def directory(self) -> Path:
        """Where the cache lives (its store's directory of that key)."""
        return self.reader.directory

    @property
    def teacher(self) -> TeacherInfo:
        """Who made the rows: name, weights (source, sha256), feature layer, widths, classes."""
        return self.manifest.teacher

    @property
    def dataset(self) -> dict:
        """The dataset the rows describe, as its identity was hashed: name, split, sample count, ids and labels
        digests, parameters."""
        return dict(self.manifest.dataset)

    @property
    def transform(self) -> TransformSpec:
        """The evaluation view the rows describe (featcache.specs.TransformSpec)."""
        return self.manifest.transform

    @property
    def view(self):
        """The student's ``torchvision.transforms.v2`` transform for the view the rows describe (view 0)."""
        return student_view(self.transform)

    @property
    def view_spec(self) -> ViewSpec | None:
        """The cached views' policy, count and seed (featcache.specs.ViewSpec), or None."""
        return self.manifest.views

    @property
    def views(self) -> int:
        """K, the cached views per sample (1 without ``views=K``)."""
        return self.view_spec.count if self.view_spec else 1

    def __len__(self) -> int:
        return self.reader.num_rows()

    def __repr__(self) -> str:
        return f"Cache({self.key!r}, rows={len(self)}, views={self.views})"

    def rows(self, indices: Sequence[int] | np.ndarray | torch.Tensor,
             view: int | Sequence[int] | np.ndarray | torch.Tensor = 0) -> dict[str, torch.Tensor]:
        """``{"features": [B, D], "logits": [B, C], "view": [B]}`` for dataset rows ``indices`` in the cached view
        ``view`` (one number for all, or one per row; 0 is the evaluation view): one sorted read per view and
        touched shard."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        which = np.broadcast_to(np.asarray(view.cpu() if isinstance(view, torch.Tensor) else view, dtype=np.int64),
                                idx.shape)
        if len(which) and (which.min() < 0 or which.max() >= self.views):
            raise ConfigError(f"view: cache {self.key} holds views 0..{self.views - 1}, got {int(which.max())}"
                              + ("" if self.views > 1 else " (extract with views=K to cache augmented views)"))
        out = {f: torch.from_numpy(a) for f, a in self.reader.gather(idx, PART_DATA, (FEATURES, LOGITS)).items()}
        for v in np.unique(which[which > 0]):
            sel = np.flatnonzero(which == v)
            got = self.reader.gather(idx[sel], _view_part(int(v)), (FEATURES, LOGITS))
            for f, a in got.items():
                out[f][torch.from_numpy(sel)] = torch.from_numpy(a)
        out["view"] = torch.from_numpy(which.copy())
        return out

    def view_image(self, image: torch.Tensor, index: int, view: int = 0) -> torch.Tensor:
        """Sample ``index``'s decoded uint8 image [3, H, W] in cached view ``view``, normalised (float32 [3, S, S]):
        the pixels the teacher saw for ``rows([index], view)``, as ``featcache distill`` replays them."""
        from featcache.transforms import Geometry, Normalizer
        from featcache.views import apply_view, view_params

        if not 0 <= view < self.views:
            raise ConfigError(f"view: cache {self.key} holds views 0..{self.views - 1}, got {view}")
        spec = self.view_spec
        if view == 0 or spec is None:  # (a cache without views has view 0 only: checked above)
            pixels = Geometry(self.transform)(image)
        else:
            params = view_params(spec, view, index, image.shape[-2], image.shape[-1],
                                 self.transform.image_size)
            pixels = apply_view(image, params, spec, self.transform)
        return Normalizer(self.transform)(pixels[None], channels_last=False)[0]

    def view_params(self, indices: Sequence[int] | np.ndarray, view: int) -> np.ndarray:
        """The recorded augmentation of view ``view`` (>= 1) of rows ``indices``: float32 [B, 5] (top, left, height,
        width, flip; featcache.views)."""
        return self.reader.gather(np.asarray(indices, dtype=np.int64), _view_part(view), (AUG,))[AUG]


def _view_part(view: int) -> str:
    from featcache.views import view_part

    return view_part(view)


def open_cache(key_or_prefix: str | Path, stores: Sequence[str | Path] | None = None,
               cache_dir: str | Path | None = None) -> Cache:
    """The complete cache named by a key, a unique key prefix, a teacher-dataset-split prefix, or a directory; found
    in the personal store (``cache_dir``, else ``$FEATCACHE_HOME``) and the shared ``stores`` (else
    ``$FEATCACHE_PATH``). Its use is recorded (``cache ls``, ``cache gc``)."""
    from featcache.cache.store import open_cache as open_reader

    return Cache(open_reader(key_or_prefix, cache_dir=cache_dir, stores=stores))
