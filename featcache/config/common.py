"""Names and help texts shared by the configs (torch-free, so that ``featcache --help`` starts fast)."""

from __future__ import annotations

from featcache.config.flags import opt

DEFAULT_SHARD_ROWS = 4096  # rows per HDF5 shard (extract --shard-rows)

# Kept literal so that --help needs no torch import; tests/test_cli.py checks they name every registered student and
# method.
STUDENTS_HELP = ("alexnet, convnet_small, inceptionv3, lenet5, mobilenetv2, mobilenetv3, mobilenetv3_small, resnet18 "
                 "(`featcache students` describes them), or timm:NAME with featcache[timm].")

# Shared stores: searched after the personal one for every cache a command reads; recipes set them in [pipeline]
# stores = [...], `featcache run` and the cache commands take the same --store.
STORES_HELP = ("A shared cache store searched after the personal one: a directory, or a URL (https://host/dir, "
               "s3://bucket/prefix) read-only, its caches pulled on use (repeat; also FEATCACHE_PATH=/a:https://b).")

METHODS_HELP = "ce, kd, fitnets, ts, ts-translator, multi, aka (default: ts with a teacher, ce without)."


# -- options several commands take, declared once ------------------------------------------------------------------
# Each returns a fresh dataclass field carrying the option's flag (config.flags.opt); ``help`` and ``**flag`` adjust
# where a command differs (its recipe rules, its --help panel, an eval's default batch).
DEFAULT_DATASET = "synthetic"  # a command's data when it is given none (distill: when no teacher's cache says)


def dataset_field(help: str = "cifar10, cifar100, cub200, sod, folder or synthetic.",
                  default: str | None = DEFAULT_DATASET, **flag):
    return opt(default, help, short="-d", **flag)


def data_root_field(help: str = "Directory holding the dataset in its official layout.", **flag):
    return opt(None, help, **flag)


def dataset_options_field(help: str = "Dataset option key=value (repeatable), e.g. num_train=500 for synthetic.",
                          **flag):
    return opt(factory=dict, help=help, name="--dataset-opt", short="-o", form="keyvalue", **flag)


def device_field(help: str = "auto, cpu, cuda, cuda:N.", **flag):
    return opt("auto", help, **flag)


def workers_field(help: str = "DataLoader worker processes (default: min(8, cores) on a GPU, 0 on a small CPU).",
                  **flag):
    return opt(None, help, runtime=True, **flag)


def cache_dir_field(**flag):
    return opt(None, "The personal cache store (default $FEATCACHE_HOME or ~/.cache/featcache).", runtime=True,
               **flag)


def stores_field(**flag):
    return opt(factory=list, help=STORES_HELP, name="--store", form="repeat", runtime=True, **flag)


def offline_field(**flag):
    return opt(False, "Read no remote store (a URL among the stores): only caches already here are used, and a missing "
                      "one is named with the `cache pull` that fetches it (also FEATCACHE_OFFLINE=1).", runtime=True,
               **flag)


def _log_default() -> list[str]:
    return ["jsonl"]


def bn_recalibrate_field(**flag):
    # distill and train-teacher evaluate the same way (featcache/distill/bn.py).
    return opt(1024, "Before each evaluation, re-estimate batch-norm statistics over N training images (a fixed "
                     "seeded sample; 0: keep the running averages).", **flag)


def log_field(**flag):
    # How the run is logged, never what it trains (runtime): --resume and recipes' up-to-date checks ignore it.
    return opt(factory=_log_default, help="Where each epoch's numbers go besides metrics.jsonl (always written), "
                                          "comma-separated: jsonl, tensorboard (RUN_DIR/tensorboard/; pip install "
                                          "tensorboard), or MODULE:CLASS of your own (docs/pipelines.md#loggers).",
               form="comma", cli_default="jsonl", runtime=True, **flag)
