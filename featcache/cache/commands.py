"""The `featcache extract` command that makes a cache, for the hints that tell a user how to redo or repair it.

A manifest records the command line of its extract (``command``), but a manifest may come from anyone (a shared
store, an imported archive): its text is never shown as it is. It is shown only as ``flags.command_line`` writes
what it parses to, when that is an extract of exactly what the manifest's own fields say (teacher, data, dtype,
shards, noise, views, blocks, projection, weights); otherwise the command is rebuilt from those fields alone, and a
cache that no `featcache extract` command makes (one written through the Python API or a benchmark) gets none.
Standard library only (and featcache's torch-free config): `cache info` shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featcache.cache.format import Manifest
from featcache.config.extract import ExtractConfig
from featcache.config.flags import parse_command_line
from featcache.util.fileio import printable

UNKNOWN = "the featcache extract command that made it"  # what a hint says when no command can be shown


def extract_command(m: Manifest) -> str | None:
    """The extract command that makes ``m``'s cache (see the module's docstring), or None."""
    recorded = recorded_extract(m)
    if recorded is not None:
        return printable(recorded.command(), limit=None)
    rebuilt = _rebuilt(m)
    return printable(rebuilt.command(), limit=None) if rebuilt is not None else None


def recorded_extract(m: Manifest) -> ExtractConfig | None:
    """The extract ``m``'s recorded command stands for, when it parses as one and agrees with the manifest's own
    fields (its data root and dataset options are then the ones the images were read with); else None."""
    recorded = parse_command_line(ExtractConfig, "extract", m.command) if m.command else None
    return recorded if recorded is not None and not _disagreement(recorded, m) else None


def command_or(m: Manifest, fallback: str = UNKNOWN) -> str:
    """:func:`extract_command`; for a cache of the Python API, the call that makes it, rebuilt from its fields; else
    ``fallback`` words."""
    command = extract_command(m)
    if command is None and m.teacher.weights.source == "module":
        command = printable(f"featcache.extract_from(<your model>, <your dataset>, name={m.teacher.name!r}, "
                            f"dataset_name={m.dataset.get('name')!r}, split={m.dataset.get('split')!r})", limit=None)
    return command or fallback


def _weights_flag(m: Manifest) -> tuple[str | None, int] | None:
    """(--weights, --seed) that give the teacher's recorded weights; None when no flag does (a user's module)."""
    w = m.teacher.weights
    if w.source == "random":
        seed = w.seed if w.seed is not None else _seed_of(w.ref)
        return ("random", seed) if seed is not None else None
    if w.source == "torchvision":
        return w.ref.rpartition(".")[2], 0  # ResNet50_Weights.IMAGENET1K_V2 -> IMAGENET1K_V2
    if w.source == "file":
        return w.ref, 0
    return None


def _seed_of(ref: str) -> int | None:
    _, _, n = ref.partition("seed=")
    return int(n) if n.isdigit() else None


def _shape(m: Manifest) -> dict[str, Any]:
    """The ExtractConfig fields that the manifest's own fields determine."""
    return dict(teacher=m.teacher.name, dataset=m.dataset.get("name"), split=m.dataset.get("split"),
                image_size=m.transform.image_size, dtype=m.dtype, logits_dtype=m.logits_dtype,
                shard_rows=m.shard_rows, noise=m.noise.count if m.noise else 0,
                noise_seed=m.noise.seed if m.noise else 0, topk_logits=m.topk_logits,
                views=m.views.count if m.views else 1, view_seed=m.views.seed if m.views else 0,
                blocks=[b.name for b in m.blocks], pool=m.blocks[0].pool if m.blocks else 4,
                project=m.projection.dim if m.projection else None)


def _disagreement(cfg: ExtractConfig, m: Manifest) -> str | None:
    """The first field where the parsed command and the manifest disagree, else None."""
    shape = _shape(m)
    if cfg.image_size is None:
        shape.pop("image_size")  # the teacher's default size: the manifest's transform says which
    for name, want in shape.items():
        if getattr(cfg, name) != want:
            return name
    if m.views and cfg.view_policy not in (None, m.views.policy):
        return "view_policy"
    params = m.dataset.get("params")
    params = params if isinstance(params, dict) else {}
    if any(k in params and str(params[k]) != str(v) for k, v in cfg.dataset_options.items()):
        return "dataset_options"
    return None if _same_weights(cfg, m) else "weights"


def _same_weights(cfg: ExtractConfig, m: Manifest) -> bool:
    w, flag = m.teacher.weights, _weights_flag(m)
    if flag is None:
        return False
    if w.source == "random":
        return cfg.weights == "random" and cfg.seed == flag[1]
    if w.source == "torchvision":
        return cfg.weights in (None, "DEFAULT", flag[0])
    try:  # a checkpoint file or a run directory: the manifest records the resolved path
        return cfg.weights is not None and str(Path(cfg.weights).expanduser().resolve()) == flag[0]
    except (OSError, RuntimeError, ValueError):
        return False


def _rebuilt(m: Manifest) -> ExtractConfig | None:
    """The extract command rebuilt from the manifest's fields (its data root is not recorded: the user's own), for a
    cache of the extract's form whose names are names; None otherwise."""
    if not isinstance(m.identity.get("teacher"), dict) or not isinstance(m.identity.get("dataset"), dict):
        return None  # not made by `featcache extract` (a benchmark's synthetic cache)
    weights = _weights_flag(m)
    shape = _shape(m)
    if weights is None or not all(isinstance(shape[k], str) and shape[k].isprintable()
                                  for k in ("teacher", "dataset", "split")):
        return None
    params = m.dataset.get("params")
    # Only the synthetic dataset's parameters are its options (the others record how they were read: a layout).
    options = {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool))} \
        if shape["dataset"] == "synthetic" and isinstance(params, dict) else {}
    return ExtractConfig(**shape, weights=weights[0], seed=weights[1], dataset_options=options,
                         view_policy=m.views.policy if m.views else None)
