"""extract --project N: the projection, fitted before the sweep writes anything.

The projection is the top N principal axes of the teacher's features on a seeded sample of the split (PROJECT_SAMPLE
rows, PROJECT_SEED), fitted once per cache and written beside the shards (cache/codec.py). A resumed extract reuses the
recorded file; a damaged one is fitted again and every shard redone (featcache.extract.manifest.prepare_directory), so
all shards of a cache always hold rows of the one projection its manifest records.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from featcache.cache.codec import fit_pca, write_projection
from featcache.cache.format import PROJECTION_FILE, PROJECTION_METHOD, Manifest, ProjectionInfo
from featcache.errors import ConfigError
from featcache.extract.plan import ExtractPlan
from featcache.extract.sweep import Batches, DigestedSamples
from featcache.models.teachers import Teacher
from featcache.transforms import Geometry, Normalizer
from featcache.util.hashing import file_sha256
from featcache.util.progress import Reporter
from featcache.util.runtime import autocast, default_workers


def ensure_projection(plan: ExtractPlan, teacher: Teacher, manifest: Manifest, reporter: Reporter) -> None:
    """Fit and record the projection of a --project extract, unless the manifest already records one."""
    spec = plan.identity.get("projection")
    if spec is None or manifest.projection is not None:
        return
    dim, width = spec["dim"], int(teacher.num_features)
    if dim > width:
        raise ConfigError(f"--project {dim}: teacher {teacher.name} has {width} features; project to at most "
                          f"{width} dims", flag="--project")
    rows = np.sort(np.random.default_rng(spec["seed"]).choice(len(plan.dataset), spec["sample"], replace=False))
    reporter.message(f"extract {teacher.name}: fitting the --project {dim} projection ({PROJECTION_METHOD}) on "
                     f"{len(rows):,} rows of the split")
    mean, components = fit_pca(sample_features(plan, teacher, rows), dim)
    path = plan.work / PROJECTION_FILE
    write_projection(path, mean, components)
    manifest.projection = ProjectionInfo(file=PROJECTION_FILE, bytes=path.stat().st_size, sha256=file_sha256(path),
                                         method=PROJECTION_METHOD, dim=dim, source_dim=width, sample=len(rows),
                                         seed=spec["seed"])


def sample_features(plan: ExtractPlan, teacher: Teacher, rows: np.ndarray) -> torch.Tensor:
    """The teacher's float32 features of dataset ``rows`` on the extract's device, computed as the sweep computes
    them (the same view, normalisation, precision and layout)."""
    cfg, device = plan.config, plan.device
    model = teacher.model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    normalize = Normalizer(plan.transform, device)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    loader = DataLoader(Batches(DigestedSamples(plan.dataset, Geometry(plan.transform)), rows, cfg.batch_size),
                        batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
    out = []
    with torch.inference_mode():
        for batch, *_ in loader:
            x = normalize(batch, channels_last=cfg.channels_last)
            with autocast(device, plan.precision):
                features, _ = model(x)
            out.append(features.float())
    return torch.cat(out)

