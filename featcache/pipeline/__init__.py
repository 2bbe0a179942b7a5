"""`featcache run RECIPE.toml`: teachers → extracts → distill runs → report, reusing whatever is already done.

A recipe (TOML, read with the standard library's tomllib) names a dataset, its teachers (each trained with
`train-teacher` or loaded from weights), the distill runs (students × methods × seeds) and the report. Parsing checks
every value as its CLI flag is checked (type, then the stage's own validate), and resolves relative paths against
the recipe's folder. `run` first prints the plan — every stage with its state: ``done`` (outputs exist: teacher.pt, a
complete cache, a finished run's summary.json), ``resume`` (an interrupted run with a last checkpoint), ``run``, or
``stale`` (outputs made with other values than the recipe now asks, refused unless moved aside) — then executes what
is not done. Re-running a finished recipe does nothing but the report. See docs/pipelines.md for the format.
"""

from featcache.pipeline.jobs import DistillJob, DistillSpec, TeacherSpec, distill_jobs, draw_name  # noqa: F401
from featcache.pipeline.plan import (  # noqa: F401 - the package's public names
    STALE_DIR,
    Stage,
    describe_plan,
    extract_config,
    job_config,
    plan,
    stale_message,
    teacher_config,
)
from featcache.pipeline.recipe import (  # noqa: F401
    DISTILL_FIELDS,
    EXTRACT_FIELDS,
    TRAIN_FIELDS,
    Pipeline,
    load_pipeline,
    parse_pipeline,
)
from featcache.pipeline.run import distill_runs, run_pipeline, write_report  # noqa: F401
