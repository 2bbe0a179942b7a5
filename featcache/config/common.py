"""Names and help texts shared by the configs (torch-free, so that ``featcache --help`` starts fast)."""

from __future__ import annotations

DEFAULT_SHARD_ROWS = 4096  # rows per HDF5 shard (extract --shard-rows)

# Kept literal so that --help needs no torch import; tests/test_cli.py checks they name every registered student and
# method.
STUDENTS_HELP = ("alexnet, convnet_small, inceptionv3, lenet5, mobilenetv2, mobilenetv3, mobilenetv3_small, resnet18 "
                 "(`featcache students` describes them), or timm:NAME with featcache[timm].")

# Shared stores: searched after the personal one for every cache a command reads; recipes set them in [pipeline]
# stores = [...], `featcache run` and the cache commands take the same --store.
STORES_HELP = "A shared cache store searched after the personal one (repeat; also FEATCACHE_PATH=/a:/b)."

METHODS_HELP = "ce, kd, fitnets, ts, ts-translator, multi, aka (default: ts with a teacher, ce without)."
