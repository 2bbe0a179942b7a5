"""A cache's identity: everything that changes what its rows hold, hashed into its key (``format.make_key``).

The same inputs give the same identity, so the same key, so a finished cache is reused. An optional product (top-k
logits, views, blocks, the int8 codec, a projection) enters the identity only when it is used: the keys of caches
without it stay what they were (tests/test_golden.py holds a cache written by an earlier version to that promise).
"""

from __future__ import annotations

from typing import Any

from featcache.cache.format import FORMAT_VERSION, INT8_CODEC


def teacher_identity(name: str, weights: dict[str, Any], num_classes: int | None, feature_layer: str,
                     image_size: int) -> dict[str, Any]:
    """The teacher's part: which network, which weights (their hash), which layer, at which input size."""
    return {"name": name, "weights": weights, "num_classes": num_classes, "feature_layer": feature_layer,
            "image_size": image_size}


def cache_identity(*, teacher: dict[str, Any], dataset: dict[str, Any], transform: dict[str, Any], dtype: str,
                   logits_dtype: str, precision: str, noise: dict[str, Any] | None, topk_logits: int | None = None,
                   views: dict[str, Any] | None = None, blocks: dict[str, Any] | None = None,
                   projection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The identity of a cache (docs/cache-format.md, "The key"); ``--dtype int8`` adds the codec that lays out its
    scales (``feature_codec``), ``projection`` how the projection is fitted (``format.projection_identity``)."""
    feature_codec = INT8_CODEC if dtype == "int8" else None
    identity = {
        "format_version": FORMAT_VERSION,
        "teacher": teacher,
        "dataset": dataset,  # ImageDataset.identity(): ids, labels, classes, params, content fingerprint
        "transform": transform,
        "dtype": dtype,
        "logits_dtype": logits_dtype,
        "precision": precision,
        "noise": noise,
    }
    for name, value in (("topk_logits", topk_logits), ("views", views), ("blocks", blocks),
                        ("feature_codec", feature_codec), ("projection", projection)):
        if value is not None:  # only then: the keys of caches without it stay what they were
            identity[name] = value
    return identity
