"""Stage 2: train a student from cached teacher rows.

    >>> from featcache.distill.trainer import DistillConfig, distill
    >>> summary = distill(DistillConfig(student="lenet5", dataset="synthetic", teachers=["resnet18"], method="ts"))

The stage is four modules: ``setup`` (what the run is, checked), ``engine`` (what a training step is made of),
``loop`` (the epoch loop, shared with train-teacher) and ``evaluation`` (test accuracy; a finished run rebuilt and
tested). This module is the entry point and re-exports their public names. No teacher network is built in any of
them (except ``--online``, for the losslessness comparison).
"""

from __future__ import annotations

from featcache.cache.leases import Lease
from featcache.cache.store import CacheStore, default_cache_dir
from featcache.cache.usage import record_use
from featcache.config import DistillConfig
from featcache.distill import resume
from featcache.distill.engine import (  # noqa: F401 - re-exported
    DistillSummary,
    TrainingParts,
    TrainStep,
    claim_run_dir,
    training_parts,
)
from featcache.distill.evaluation import eval_loader, evaluate, evaluate_run, load_run  # noqa: F401 - re-exported
from featcache.distill.loop import train  # noqa: F401 - re-exported
from featcache.distill.optim import OPTIMIZERS, SCHEDULES, make_optimizer  # noqa: F401 - re-exported
from featcache.distill.resolve import with_data
from featcache.distill.setup import (  # noqa: F401 - re-exported
    COMPILE_MODES,
    Setup,
    default_run_dir,
    resident_default,
    setup,
)
from featcache.runs.rundir import BEST, CONFIG, LAST, METRICS, SUMMARY  # noqa: F401 - the run's files (re-exported)
from featcache.util.progress import Reporter


def distill(config: DistillConfig, reporter: Reporter | None = None) -> DistillSummary:
    """Train a student per ``config``; writes config.json, metrics.jsonl, checkpoints and summary.json. The caches
    are leased while the run reads them (`cache rm` and `cache gc` leave them alone) and their use is recorded."""
    # The data first (the teachers' when no --dataset): it names the run directory and --resume compares it; so do
    # the defaults resolved per run (config.json records them resolved).
    store = CacheStore(config.cache_dir, config.stores, offline=config.offline, reporter=reporter)  # shows a pull
    config, data_from = with_data(resume.resolved(config), store)
    with claim_run_dir(config), Lease(what="distill") as lease:
        s = setup(config, lease=lease, data_from=data_from, reporter=reporter)
        record_use(config.cache_dir if config.cache_dir is not None else default_cache_dir(),
                   [c.key for c in s.caches])
        return train(s, reporter)
