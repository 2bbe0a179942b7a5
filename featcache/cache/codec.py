"""Compressed feature rows: the int8 codec (extract --dtype int8) and the linear projection (extract --project N).

int8 rows hold q = round(f / s) with one float32 scale per row, s = max|f| / 127, so |f - q·s| <= s/2 for every
element (per-row scales beat one scale per channel on real features, docs/benchmarks.md "Compressed rows"). Readers
hand methods ``q · s`` as FEATURE_READ_DTYPE, computed as late as they can: the loaders move the int8 rows and their
scales to the device and multiply there (half the bytes of float16 rows through the copy).

A projection maps a teacher's D-dimensional features to N: ``(f - mean) @ components.T``, with ``components`` the top N
principal axes of a seeded sample of the split's features (orthonormal rows). It is fitted before any shard is
written (featcache.extract.project) and stored beside the shards in PROJECTION_FILE.

Numpy at module level; torch is imported by the functions that take tensors (the cache commands stay torch-free).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import h5py
import numpy as np

from featcache.cache.format import (
    FEATURE_READ_DTYPE,
    FEATURE_SCALE,
    FEATURES,
    INT8_CODEC,
    PROJECTION_COMPONENTS,
    PROJECTION_MEAN,
    TMP_SUFFIX,
    Manifest,
    fsync_dir,
)

QMAX = 127  # symmetric int8: -127..127 (-128 is never written, so negation is exact)


def is_int8(manifest: Manifest) -> bool:
    return manifest.feature_codec == INT8_CODEC


def dequantise_np(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Stored int8 rows [n, D] and their scales [n] -> float rows (FEATURE_READ_DTYPE), one rounding."""
    out = q.astype(np.float32)
    out *= scale.astype(np.float32, copy=False)[:, None]
    with np.errstate(over="ignore"):  # a row beyond float16 reads as inf, as first_nonfinite then reports
        return out.astype(FEATURE_READ_DTYPE)


def decode_rows(manifest: Manifest, rows: dict[str, np.ndarray], keep_scale: bool = False) -> dict[str, np.ndarray]:
    """``rows`` (a reader's fields) with int8 features dequantised; the scales are dropped unless ``keep_scale``."""
    if not is_int8(manifest) or FEATURES not in rows:
        return rows
    out = dict(rows)
    out[FEATURES] = dequantise_np(rows[FEATURES], rows[FEATURE_SCALE])
    if not keep_scale:
        out.pop(FEATURE_SCALE)
    return out


def quantise(x):
    """Float rows (a torch tensor [B, D]) -> (int8 rows, float32 scales [B]); a zero row gets scale 0."""
    import torch

    x = x.float()
    scale = x.abs().amax(dim=1) / QMAX  # NaN or inf rows keep a non-finite scale: the writer refuses them
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / safe[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantise(q, scale):
    """int8 rows and their scales (torch, on any device) -> FEATURE_READ_DTYPE rows on that device."""
    import torch

    # One float32 copy multiplied in place: a mixed int8 × float32 multiply takes torch's slow casting path (7x
    # slower on the CPU, and it allocates twice). On the CPU on one thread (featcache.util.runtime.one_cpu_thread).
    from featcache.util.runtime import one_cpu_thread

    with one_cpu_thread() if q.device.type == "cpu" else contextlib.nullcontext():
        out = q.float()
        out.mul_(scale.float()[:, None])
        return out.to(getattr(torch, FEATURE_READ_DTYPE))


class RowEncoder:
    """What an extract stores for the teacher's features: projected (if the cache is), then cast or quantised.
    ``encode`` gives (stored rows, scales or None); ``roundtrip`` gives the rows a reader hands back (distill
    --online computes its rows through it, so the online and cached arms see the same numbers)."""

    def __init__(self, manifest: Manifest, projection: tuple[np.ndarray, np.ndarray] | None, device) -> None:
        import torch

        self.int8 = is_int8(manifest)
        self.dtype = getattr(torch, manifest.dtype)
        self.mean = self.components = None
        if projection is not None:
            self.mean = torch.from_numpy(projection[0]).to(device)
            self.components = torch.from_numpy(projection[1]).to(device)

    def project(self, features):
        if self.components is None:
            return features
        return (features.float() - self.mean) @ self.components.T

    def encode(self, features):
        features = self.project(features)
        if self.int8:
            return quantise(features)
        return features.to(self.dtype), None

    def roundtrip(self, features):
        stored, scale = self.encode(features)
        return dequantise(stored, scale) if scale is not None else stored


# -- the projection file -------------------------------------------------------------------------------------------


def fit_pca(features, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], components [dim, D]) of float rows [S, D] (a torch tensor): the top ``dim`` eigenvectors of their
    covariance, in float64, each signed so that its largest entry is positive (a deterministic choice)."""
    import torch

    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues, orthonormal columns
    top = vectors[:, torch.argsort(values, descending=True)[:dim]].T.contiguous()
    pick = top.abs().argmax(dim=1)
    top *= torch.sign(top[torch.arange(dim), pick])[:, None]
    return mean.float().cpu().numpy(), top.float().cpu().numpy()


def write_projection(path: Path, mean: np.ndarray, components: np.ndarray) -> None:
    """The projection file, crash-safe like a shard: written to ``.tmp``, fsynced, renamed."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(PROJECTION_MEAN, data=np.asarray(mean, dtype=np.float32))
            f.create_dataset(PROJECTION_COMPONENTS, data=np.asarray(components, dtype=np.float32))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_projection_file(path: Path, dim: int, source_dim: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(mean, components) from the projection file, or a few words saying what is wrong with it."""
    try:
        with h5py.File(path, "r") as f:
            arrays = []
            for name, shape in ((PROJECTION_MEAN, (source_dim,)), (PROJECTION_COMPONENTS, (dim, source_dim))):
                if name not in f:
                    return f"dataset {name!r} missing"
                if f[name].shape != shape or f[name].dtype != np.float32:
                    return f"{name} is {f[name].dtype} {f[name].shape}, expected float32 {shape}"
                arrays.append(f[name][()])
    except OSError as exc:
        return f"HDF5 cannot open it ({' '.join(str(exc).split())[:120]})"
    if not all(np.isfinite(a).all() for a in arrays):
        return "it holds NaN or inf"
    return arrays[0], arrays[1]
