"""`featcache extract`: its options are ExtractConfig's fields (featcache.config), generated, never listed here."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Optional

import typer

from featcache.cli.app import app, err, human_bytes, main_rank, out, parse_options, user_errors
from featcache.config import ExtractConfig
from featcache.config.flags import as_command, cli_parameters, config_from_cli, runtime_fields

# CLI conveniences that become dataset options (they are not fields of their own).
DATASET_SHORTCUTS = [
    inspect.Parameter("split_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--split-file", help="Pin your own train/test split (sod): lines '<split> <id>'.")),
    inspect.Parameter("download", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--download", help="Download the dataset where supported (cifar) and the network allows.")),
]


def with_shortcuts(params: list[inspect.Parameter], shortcuts: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """``params`` with the dataset shortcuts placed right after --data-root (where --help shows them)."""
    at = next(i for i, p in enumerate(params) if p.name == "data_root") + 1
    return params[:at] + shortcuts + params[at:]


def extract(*, split_file: Path | None = None, download: bool = False, **values: Any) -> None:
    from featcache.cache import requests
    from featcache.cache.store import default_cache_dir

    options = parse_options(values["dataset_options"], "--dataset-opt")
    if split_file is not None:
        options["split_file"] = split_file
    if download:
        options["download"] = True
    # What determines the cache (everything but how the work is done: workers, waiting, where the store is).
    request = {k: v for k, v in values.items() if k not in runtime_fields(ExtractConfig)}
    request.update(data_root=str(values["data_root"].expanduser().resolve()) if values["data_root"] else None,
                   dataset_options={k: str(v) for k, v in options.items()})
    store = (values["cache_dir"] or default_cache_dir()).expanduser()
    alone = "WORLD_SIZE" not in os.environ  # under torchrun every rank takes the full path together
    if alone and not values["force"]:
        hit = requests.recall(store, request)
        if hit is not None:  # answered without importing torch (see featcache/cache/requests.py)
            noise_part = f" + {hit['noise_rows']:,} noise" if hit["noise_rows"] else ""
            out.print(f"cache [bold]{hit['key']}[/] exists ({hit['rows']:,} rows{noise_part}, "
                      f"{human_bytes(hit['bytes'])}); nothing to do (--force to redo)", highlight=False)
            return
    inputs = requests.tree_signature(requests.request_inputs(request)) if alone else None  # before anything is read

    from featcache.extract import extract as run_extract
    from featcache.util.progress import RichReporter

    config = config_from_cli(ExtractConfig, values, dataset_options=options)
    main = main_rank()
    result = run_extract(config, reporter=RichReporter(err) if main else None)
    if not main:
        return
    if inputs is not None:
        _remember_request(store, request, result, config, inputs)
    m = result.manifest
    noise_part = f" + {result.noise_rows:,} noise" if result.noise_rows else ""
    if result.reused:
        out.print(f"cache [bold]{result.key}[/] exists ({result.rows:,} rows{noise_part}, "
                  f"{human_bytes(result.bytes)}); nothing to do (--force to redo)", highlight=False)
        return
    acc = f" · teacher top-1 {m.teacher_accuracy:.2%}" if m.teacher_accuracy is not None else ""
    out.print(
        f"cache [bold]{result.key}[/]: {result.rows:,} rows{noise_part} · {m.feature_dim}-d {m.dtype} · "
        f"{human_bytes(result.bytes)} · {m.timing.images_per_s or 0:,.0f} img/s over "
        f"{m.timing.seconds:.1f} s on {m.timing.device}"
        f"{f' (this run finished {result.images:,} of them)' if result.images < result.rows else ''}{acc}"
        + (f" · blocks {', '.join(b.name for b in m.blocks)}: "
           f"+{human_bytes(sum(b.dim for b in m.blocks) * (2 if m.dtype == 'float16' else 4))} per sample"
           if m.blocks else "")
        + (f" · {m.views.count} views ({m.views.policy}): "
           f"{human_bytes(sum(sh.bytes for sh in m.shards if sh.part == 'view1'))} per extra view" if m.views else ""),
        highlight=False,
    )


as_command(extract, with_shortcuts(cli_parameters(ExtractConfig), DATASET_SHORTCUTS),
           doc="Run a teacher once over a dataset split and cache its features and logits.")
app.command("extract")(user_errors(extract))


def _remember_request(store: Path, request: dict, result, config, inputs: str) -> None:
    """Let the next identical extract answer without torch (featcache/cache/requests.py): file datasets with a
    sample of rows to re-hash, datasets with no files (synthetic) as they are; pixel-array datasets (CIFAR
    pickles) are fingerprinted by their pixels, which only the full path computes, so they are not remembered."""
    import numpy as np

    from featcache.cache import requests
    from featcache.cache.reader import CONTENT_SAMPLE
    from featcache.datasets import get_dataset

    ds = get_dataset(config.dataset, config.data_root, config.split, **config.dataset_options)
    paths = ds.image_paths()
    if paths is None and ds.root is not None:
        return
    sample = None
    if paths is not None:
        rows = np.random.default_rng().choice(len(paths), size=min(CONTENT_SAMPLE, len(paths)), replace=False)
        sample = [(int(r), paths[r]) for r in np.sort(rows)]
    requests.remember(store, request, result.key, inputs, sample)
