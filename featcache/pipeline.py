"""`featcache run RECIPE.toml`: teachers → extracts → distill runs → report, reusing whatever is already done.

A recipe (TOML, read with the standard library's tomllib) names a dataset, its teachers (each trained with
`train-teacher` or loaded from weights), the distill runs (students × methods × seeds) and the report. `run` first
prints the plan — every stage with its state: ``done`` (outputs exist: teacher.pt, a complete cache, a finished
run's summary.json), ``resume`` (an interrupted run with a last checkpoint) or ``run`` — then executes what is not
done. Re-running a finished recipe does nothing but the report. See docs/pipelines.md for the format.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache.config import DistillConfig, ExtractConfig, TeacherConfig
from featcache.rundir import LAST, METRICS, SUMMARY
from featcache.errors import ConfigError, FeatcacheError
from featcache.flags import field_of_flag, recipe_fields
from featcache.progress import Reporter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# What a recipe table may set is declared by each config field's Flag (featcache.config): everything but what the
# recipe itself sets (its dataset, teacher names, run directories) and the machine it runs on (featcache run's
# --device / --workers). A field added to a config is accepted here without touching this file.
_DISTILL_FIELDS = recipe_fields(DistillConfig)
_TRAIN_FIELDS = recipe_fields(TeacherConfig)
_EXTRACT_FIELDS = recipe_fields(ExtractConfig)


@dataclass
class TeacherSpec:
    name: str  # the name distill runs refer to it by (default: the teacher)
    teacher: str
    weights: str | None = None  # extract --weights, when not trained here
    train: dict[str, Any] | None = None  # train-teacher options, when trained here
    extract: dict[str, Any] = field(default_factory=dict)  # extract options (image_size, noise, batch_size, ...)


@dataclass
class DistillSpec:
    students: list[str]
    methods: list[str]
    teachers: list[str]
    seeds: list[int]
    options: dict[str, Any]
    tag: str = ""  # tells apart blocks with the same students/methods/teachers but other options


@dataclass
class Pipeline:
    name: str
    path: Path | None
    runs_dir: Path
    dataset: str
    data_root: Path | None
    dataset_options: dict[str, Any]
    teachers: list[TeacherSpec]
    distill: list[DistillSpec]
    report: dict[str, Any]
    description: str = ""
    class_parts: dict[str, Any] | None = None  # [classes]: {parts, seed} — named parts part1..partN
    amalgamate: dict[str, Any] | None = None  # [amalgamate]: dual-stage aka over some of the teachers

    def parts(self) -> dict[str, list[str]]:
        """The named class parts of [classes], split from the dataset's classes (needs the data)."""
        if not self.class_parts:
            return {}
        from featcache.datasets import get_dataset
        from featcache.datasets.base import split_classes

        ds = get_dataset(self.dataset, self.data_root, "train", **self.dataset_options)
        split = split_classes(ds.classes, int(self.class_parts["parts"]), int(self.class_parts.get("seed", 0)))
        return {f"part{k}": names for k, names in enumerate(split, start=1)}

    def resolve_classes(self, value: Any) -> list[str]:
        """A teacher's ``train.classes`` / a task: a part name of [classes], a list of names, or a file of names."""
        if isinstance(value, list):
            return [str(v) for v in value]
        parts = self.parts()
        if value in parts:
            return parts[value]
        from featcache.datasets.base import read_class_list

        return read_class_list(Path(_expand(str(value))))


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def _table(d: dict, key: str, where: str, kind=dict, default: Any = None) -> Any:
    value = d.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__ if isinstance(kind, type) else 'a value'}, "
                          f"got {value!r}")
    return value


def _unknown(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown field {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")


def parse_pipeline(data: dict[str, Any], *, path: Path | None = None, data_root: Path | None = None,
                   runs_dir: Path | None = None) -> Pipeline:
    """Validate a recipe's tables; names of students, teachers and methods are checked against the registries."""
    from featcache.datasets import list_datasets as dataset_names
    from featcache.distill.methods import METHODS
    from featcache.models.registry import get_entry, list_models
    from featcache.models.teachers import torchvision_classifiers

    where = str(path) if path else "recipe"
    _unknown(data, {"pipeline", "dataset", "teachers", "distill", "report", "classes", "amalgamate"}, where)
    meta = _table(data, "pipeline", where, default={})
    _unknown(meta, {"name", "description", "runs_dir"}, f"{where}: [pipeline]")
    ds = _table(data, "dataset", where)
    if not ds or "name" not in ds:
        raise ConfigError(f"{where}: [dataset] with a name is required (e.g. name = \"cifar10\")")
    _unknown(ds, {"name", "data_root", "options"}, f"{where}: [dataset]")
    if ds["name"] not in dataset_names():
        raise ConfigError(f"{where}: [dataset] name {ds['name']!r}: choose one of {', '.join(dataset_names())}")
    root = data_root if data_root is not None else (Path(_expand(ds["data_root"])) if ds.get("data_root") else None)
    if root is not None and "$" in str(root):
        raise ConfigError(f"{where}: [dataset] data_root {ds['data_root']!r} uses an unset variable; "
                          "pass --data-root DIR")

    teachers: list[TeacherSpec] = []
    for i, t in enumerate(_table(data, "teachers", where, kind=list, default=[])):
        w = f"{where}: [[teachers]] #{i + 1}"
        _unknown(t, {"name", "teacher", "weights", "train", "extract"}, w)
        if "teacher" not in t:
            raise ConfigError(f"{w}: 'teacher' (a registered teacher or torchvision classifier) is required")
        if get_entry("teacher", t["teacher"]) is None and t["teacher"] not in torchvision_classifiers():
            raise ConfigError(f"{w}: unknown teacher {t['teacher']!r}; see `featcache teachers --all`")
        if t.get("train") is not None and t.get("weights") is not None:
            raise ConfigError(f"{w}: give either 'train' (fine-tune here) or 'weights' (load), not both")
        train = _table(t, "train", w)
        if train is not None:
            _unknown(train, _TRAIN_FIELDS, f"{w}.train")
        extract = _table(t, "extract", w, default={})
        _unknown(extract, _EXTRACT_FIELDS, f"{w}.extract")
        weights = _expand(t["weights"]) if isinstance(t.get("weights"), str) else t.get("weights")
        if isinstance(weights, str) and weights.startswith("teacher:"):
            ref = weights.split(":", 1)[1]
            if not any(x.get("name", x.get("teacher")) == ref and x.get("train") for x in data.get("teachers", [])):
                raise ConfigError(f"{w}: weights {weights!r} must name a [[teachers]] entry that is trained here")
        teachers.append(TeacherSpec(t.get("name", t["teacher"]), t["teacher"], weights, train, dict(extract)))
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two [[teachers]] share the name "
                          f"{next(n for n in names if names.count(n) > 1)!r}; set 'name'")

    runs: list[DistillSpec] = []
    for i, d in enumerate(_table(data, "distill", where, kind=list, default=[])):
        w = f"{where}: [[distill]] #{i + 1}"
        _unknown(d, {"students", "methods", "teachers", "seeds", "options", "tag"}, w)
        students, methods = d.get("students", []), d.get("methods", [])
        if not students or not methods:
            raise ConfigError(f"{w}: 'students' and 'methods' must list at least one each")
        for s in students:
            if get_entry("student", s) is None:
                raise ConfigError(f"{w}: unknown student {s!r}; choose one of {', '.join(list_models('student'))}")
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"{w}: unknown method {m!r}; choose one of {', '.join(METHODS)}")
        for t in d.get("teachers", []):
            if t not in names:
                raise ConfigError(f"{w}: teacher {t!r} is not one of the recipe's [[teachers]] "
                                  f"({', '.join(names) or 'none'})")
        options = _table(d, "options", w, default={})
        _unknown(options, _DISTILL_FIELDS, f"{w}.options")
        seeds = d.get("seeds", [0])
        tag = str(d.get("tag", ""))
        if tag and not tag.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{w}: tag {tag!r} may hold only letters, digits, - and _ (it names run directories)")
        runs.append(DistillSpec(list(students), list(methods), list(d.get("teachers", [])), [int(s) for s in seeds],
                                dict(options), tag))
    dirs = [job.name for job in distill_jobs(runs)]
    if len(set(dirs)) != len(dirs):
        clash = next(x for x in dirs if dirs.count(x) > 1)
        raise ConfigError(f"{where}: two [[distill]] runs would share the run directory {clash!r}; give the blocks "
                          "different 'tag's")

    report = _table(data, "report", where, default={})
    _unknown(report, {"title", "markdown", "plot"}, f"{where}: [report]")
    class_parts = _table(data, "classes", where)
    if class_parts is not None:
        _unknown(class_parts, {"parts", "seed"}, f"{where}: [classes]")
        if not isinstance(class_parts.get("parts"), int) or class_parts["parts"] < 2:
            raise ConfigError(f"{where}: [classes] parts must be an integer >= 2 (named part1, part2, ...)")
    amalgamate = _table(data, "amalgamate", where)
    if amalgamate is not None:
        w = f"{where}: [amalgamate]"
        _unknown(amalgamate, {"teachers", "tasks", "student", "component_student", "epochs", "component_epochs",
                              "options"}, w)
        for t in amalgamate.get("teachers", []):
            if t not in names:
                raise ConfigError(f"{w}: teacher {t!r} is not one of the recipe's [[teachers]] ({', '.join(names)})")
        if not amalgamate.get("teachers"):
            raise ConfigError(f"{w}: 'teachers' must list the source teachers")
        if not amalgamate.get("tasks") and class_parts is None:
            raise ConfigError(f"{w}: give 'tasks' (name -> classes) or a [classes] table to split")
        if get_entry("student", amalgamate.get("student", "resnet18")) is None:
            raise ConfigError(f"{w}: unknown student {amalgamate.get('student')!r}")
        _unknown(amalgamate.get("options", {}), _DISTILL_FIELDS, f"{w}.options")
    name = meta.get("name") or (path.stem if path else "pipeline")
    out_dir = runs_dir or Path(_expand(meta.get("runs_dir", f"runs/{name}")))
    return Pipeline(name, path, out_dir, ds["name"], root, dict(ds.get("options", {})), teachers, runs, dict(report),
                    meta.get("description", ""), class_parts, amalgamate)


def load_pipeline(path: str | Path, *, data_root: Path | None = None, runs_dir: Path | None = None) -> Pipeline:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path}: invalid TOML ({exc})") from None
    return parse_pipeline(data, path=path, data_root=data_root, runs_dir=runs_dir)


# -- the plan --------------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    kind: str  # teacher | extract | distill | report
    name: str
    state: str  # done | resume | run | waits
    run_dir: Path | None = None
    detail: str = ""
    payload: Any = None


def _run_state(run_dir: Path, final_file: str = SUMMARY) -> str:
    if (run_dir / final_file).is_file():
        return "done"
    return "resume" if (run_dir / LAST).is_file() else "run"


def _teacher_dir(p: Pipeline, t: TeacherSpec) -> Path:
    return p.runs_dir / "teachers" / t.name


def _teacher_weights(p: Pipeline, t: TeacherSpec) -> str | None:
    from featcache.teach import TEACHER_FILE

    if t.train is not None:
        return str(_teacher_dir(p, t) / TEACHER_FILE)
    if isinstance(t.weights, str) and t.weights.startswith("teacher:"):  # the weights another [[teachers]] trains
        other = next(x for x in p.teachers if x.name == t.weights.split(":", 1)[1])
        return str(_teacher_dir(p, other) / TEACHER_FILE)
    return t.weights


def _trained_here(p: Pipeline, t: TeacherSpec) -> bool:
    return t.train is not None or (isinstance(t.weights, str) and t.weights.startswith("teacher:"))


def _needs_noise(p: Pipeline, t: TeacherSpec) -> bool:
    return any(t.name in d.teachers and d.options.get("noise_per_batch") for d in p.distill)


def extract_config(p: Pipeline, t: TeacherSpec, cache_dir: Path | None, device: str, workers: int | None):
    from featcache.extract import ExtractConfig

    opts = dict(t.extract)
    if _needs_noise(p, t) and not opts.get("noise"):
        raise ConfigError(f"recipe {p.path}: a distill run uses noise_per_batch with teacher {t.name!r}; "
                          "set its extract.noise")
    return ExtractConfig(teacher=t.teacher, dataset=p.dataset, data_root=p.data_root,
                         dataset_options=dict(p.dataset_options), weights=_teacher_weights(p, t), cache_dir=cache_dir,
                         device=device, workers=workers, **opts)


@dataclass(frozen=True)
class DistillJob:
    """One distill run of a recipe: a student × method × seed of a [[distill]] block."""

    student: str
    method: str
    teachers: tuple[str, ...]  # empty for ce, which ignores the block's teachers
    seed: int
    spec: DistillSpec

    @property
    def name(self) -> str:
        """The run directory's name: <student>-<method>-<teachers or alone>[-<tag>]-s<seed>."""
        who = "+".join(self.teachers) if self.teachers else "alone"
        return f"{self.student}-{self.method}-{who}{'-' + self.spec.tag if self.spec.tag else ''}-s{self.seed}"


def distill_jobs(blocks: list[DistillSpec]):
    """Every run of the recipe's [[distill]] blocks, in recipe order."""
    for d in blocks:
        for student in d.students:
            for method in d.methods:
                teachers = () if method == "ce" else tuple(d.teachers)
                for seed in d.seeds:
                    yield DistillJob(student, method, teachers, seed, d)


def plan(p: Pipeline, *, cache_dir: Path | None = None, device: str = "auto",
         workers: int | None = None) -> list[Stage]:
    from featcache.extract import plan_extract
    from featcache.teach import TEACHER_FILE

    stages: list[Stage] = []
    for t in p.teachers:
        if t.train is not None:
            d = _teacher_dir(p, t)
            stages.append(Stage("teacher", t.name, _run_state(d, TEACHER_FILE), d, f"train-teacher {t.teacher}", t))
    for t in p.teachers:
        cfg = extract_config(p, t, cache_dir, device, workers)
        if cfg.weights and not Path(cfg.weights).is_file() and _trained_here(p, t):
            stages.append(Stage("extract", t.name, "waits", None, "after its teacher is trained", t))
            continue
        ep = plan_extract(cfg)
        from featcache.cache import CacheStore

        entry = next((e for e in CacheStore(cache_dir).entries() if e.key == ep.key), None)
        done = entry is not None and entry.manifest is not None and entry.manifest.complete
        stages.append(Stage("extract", t.name, "done" if done else "run", ep.directory, ep.key, t))
    for job in distill_jobs(p.distill):
        rd = p.runs_dir / job.name
        stages.append(Stage("distill", job.name, _run_state(rd), rd, "", job))
    if p.amalgamate is not None:
        target = p.runs_dir / "amalgamate" / "target"
        stages.append(Stage("amalgamate", "components → target", _run_state(target), target,
                            f"aka over {', '.join(p.amalgamate['teachers'])}"))
    stages.append(Stage("report", p.name, "run", p.runs_dir, ", ".join(f"{k}={v}" for k, v in p.report.items())))
    return stages


def describe_plan(stages: list[Stage]) -> list[str]:
    return [f"{s.state:>6}  {s.kind:<10} {s.name}" + (f"  ({s.detail})" if s.detail else "") for s in stages]


# -- execution -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _recipe_terms(cls: type, where: str):
    """Errors about an option name it as the recipe spells it (``[[distill]] ... options.cache_ram``), not as a flag
    the recipe's user never typed."""
    try:
        yield
    except FeatcacheError as exc:
        name = field_of_flag(cls, exc.flag) if exc.flag else None
        if name is None:
            raise
        raise exc.reworded(where + name) from None


def run_pipeline(p: Pipeline, *, cache_dir: Path | None = None, device: str = "auto", workers: int | None = None,
                 reporter: Reporter | None = None, log=print) -> dict[str, Any]:
    """Execute every stage that is not done, in order; returns the report paths and the distill run directories."""
    from featcache.extract import extract
    from featcache.teach import TeacherConfig, train_teacher
    from featcache.distill.trainer import distill

    reporter = reporter or Reporter()
    keys: dict[str, str] = {}
    for stage in plan(p, cache_dir=cache_dir, device=device, workers=workers):
        if stage.kind == "teacher" and stage.state != "done":
            t: TeacherSpec = stage.payload
            log(f"[teacher] {t.name}: {'resuming' if stage.state == 'resume' else 'training'} {t.teacher}")
            train = dict(t.train)
            options = {**p.dataset_options, **train.pop("dataset_options", {})}
            if "classes" in train:
                train["classes"] = p.resolve_classes(train["classes"])
            tc = TeacherConfig(teacher=t.teacher, dataset=p.dataset, data_root=p.data_root, dataset_options=options,
                               device=device, workers=workers, run_dir=stage.run_dir, resume=stage.state == "resume",
                               **train)
            with _recipe_terms(TeacherConfig, f"[[teachers]] {t.name!r} train."):
                train_teacher(tc, reporter)
        elif stage.kind == "extract":
            t = stage.payload
            cfg = extract_config(p, t, cache_dir, device, workers)
            with _recipe_terms(ExtractConfig, f"[[teachers]] {t.name!r} extract."):
                result = extract(cfg, reporter)
            keys[t.name] = result.key
            log(f"[extract] {t.name}: {'cache ' + result.key + ' reused' if result.reused else 'wrote ' + result.key}")
        elif stage.kind == "distill":
            job = stage.payload
            student, method, teachers, seed, spec = job.student, job.method, job.teachers, job.seed, job.spec
            if stage.state == "done":
                continue
            log(f"[distill] {stage.name}: {'resuming' if stage.state == 'resume' else 'starting'}")
            config = DistillConfig(student=student, dataset=p.dataset, data_root=p.data_root,
                                   dataset_options=dict(p.dataset_options), teachers=[keys[t] for t in teachers],
                                   method=method, seed=seed, run_dir=stage.run_dir, resume=stage.state == "resume",
                                   cache_dir=cache_dir, device=device, workers=workers, tag=spec.tag, **spec.options)
            with _recipe_terms(DistillConfig, f"[[distill]] {stage.name} options."):
                summary = distill(config, reporter)
            log(f"[distill] {stage.name}: {summary.line()}")
        elif stage.kind == "amalgamate":
            result = _amalgamate(p, keys, cache_dir, device, workers, reporter, log)
    report = write_report(p)
    if p.amalgamate is not None:
        report["amalgamate"] = result.table
        report["amalgamate_markdown"] = _write_task_table(p, result.table)
    return report


def _amalgamate(p: Pipeline, keys: dict[str, str], cache_dir, device, workers, reporter, log) -> dict[str, Any]:
    from featcache.amalgamate import AmalgamateConfig, amalgamate

    a = p.amalgamate
    tasks = {k: p.resolve_classes(v) for k, v in a["tasks"].items()} if a.get("tasks") else p.parts()
    cfg = AmalgamateConfig(
        teachers=[keys[t] for t in a["teachers"]], parts=tasks, student=a.get("student", "resnet18"),
        component_student=a.get("component_student"), dataset=p.dataset, data_root=p.data_root,
        dataset_options=dict(p.dataset_options), epochs=a.get("epochs", 30), component_epochs=a.get("component_epochs"),
        options=dict(a.get("options", {})), cache_dir=cache_dir, run_dir=p.runs_dir / "amalgamate", device=device,
        workers=workers,
    )
    return amalgamate(cfg, reporter, log=log)


def distill_runs(p: Pipeline) -> list[Path]:
    """The recipe's distill run directories that have finished at least one epoch."""
    dirs = [p.runs_dir / job.name for job in distill_jobs(p.distill)]
    return [d for d in dirs if (d / SUMMARY).is_file() or (d / METRICS).is_file()]


def _write_task_table(p: Pipeline, table) -> Path:
    """The amalgamation's per-task table as markdown next to the runs (amalgamate.md)."""
    lines = ["| task | classes | source teacher(s) % | component % | target % |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in table]
    path = p.runs_dir / "amalgamate.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {p.report.get('title', p.name)}: per-task test accuracy\n\n" + "\n".join(lines) + "\n")
    return path


def write_report(p: Pipeline) -> dict[str, Any]:
    from featcache.report import build_rows, load_record, markdown_table, plot_curves

    records = [load_record(d) for d in distill_runs(p)]
    out: dict[str, Any] = {"runs": [str(r.run_dir) for r in records], "rows": build_rows(records)}
    if not records:
        return out
    md = p.runs_dir / p.report.get("markdown", "report.md")
    md.parent.mkdir(parents=True, exist_ok=True)
    title = p.report.get("title", p.name)
    md.write_text(f"# {title}\n\n{markdown_table(out['rows'])}")
    out["markdown"] = md
    if p.report.get("plot"):
        out["plot"] = plot_curves(records, p.runs_dir / p.report["plot"], title)
    return out
