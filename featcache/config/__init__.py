"""One schema per stage: the configs of extract, distill and train-teacher, and the flags they declare.

Each field carries its CLI flag, help and recipe rules (featcache.config.flags); the CLI, recipe validation and the
reproducing command lines are derived from here. Torch-free, so that ``featcache --help`` starts fast.

    extract.py   ExtractConfig                    teacher.py   TeacherConfig
    distill.py   DistillConfig, in sections       common.py    names and help texts the configs share
    commands.py  eval, run, demo, report, ...     bench.py     the `featcache bench` commands
"""

from featcache.config.bench import (  # noqa: F401
    BenchDistillConfig,
    BenchExtractConfig,
    BenchJoinConfig,
    BenchPeersConfig,
    BenchScaleConfig,
    BenchStoreConfig,
    BenchTrustConfig,
)
from featcache.config.commands import (  # noqa: F401
    AmalgamateConfig,
    DemoConfig,
    EvalConfig,
    ReportConfig,
    RunConfig,
    SplitClassesConfig,
    StoreOptions,
)
from featcache.config.common import (  # noqa: F401 - the package's public names
    DEFAULT_SHARD_ROWS,
    METHODS_HELP,
    STORES_HELP,
    STUDENTS_HELP,
)
from featcache.config.distill import (  # noqa: F401
    SECTIONS,
    AKAOptions,
    DataOptions,
    DistillConfig,
    FitNetsOptions,
    KDOptions,
    LoaderOptions,
    LossOptions,
    OptimOptions,
    RunOptions,
    StudentOptions,
    TeacherOptions,
    TranslatorOptions,
)
from featcache.config.extract import ExtractConfig  # noqa: F401
from featcache.config.teacher import TeacherConfig  # noqa: F401
