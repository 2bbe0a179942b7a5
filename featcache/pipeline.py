"""`featcache run RECIPE.toml`: teachers → extracts → distill runs → report, reusing whatever is already done.

A recipe (TOML, read with the standard library's tomllib) names a dataset, its teachers (each trained with
`train-teacher` or loaded from weights), the distill runs (students × methods × seeds) and the report. Parsing checks
every value as its CLI flag is checked (type, then the stage's own validate), and resolves relative paths against
the recipe's folder. `run` first prints the plan — every stage with its state: ``done`` (outputs exist: teacher.pt, a
complete cache, a finished run's summary.json), ``resume`` (an interrupted run with a last checkpoint), ``run``, or
``stale`` (outputs made with other values than the recipe now asks, refused unless moved aside) — then executes what
is not done. Re-running a finished recipe does nothing but the report. See docs/pipelines.md for the format.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from featcache.config import DistillConfig, ExtractConfig, TeacherConfig
from featcache.rundir import CONFIG, LAST, METRICS, SUMMARY
from featcache.errors import ConfigError, FeatcacheError
from featcache.flags import check_type, check_value, field_of_flag, recipe_fields, runtime_fields
from featcache.progress import Reporter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# What a recipe table may set is declared by each config field's Flag (featcache.config): everything but what the
# recipe itself sets (its dataset, teacher names, run directories) and the machine it runs on (featcache run's
# --device / --workers). A field added to a config is accepted here without touching this file, and its values are
# checked against the field's type (flags.check_value) and by the stage's own validate() at plan time.
_RUN_FLAGS = {"device", "workers"}  # featcache run's own flags: one machine for every stage
_DISTILL_FIELDS = recipe_fields(DistillConfig) - _RUN_FLAGS
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
    stores: list[Path] = field(default_factory=list)  # [pipeline] stores: shared cache stores (DistillConfig.stores)

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


def _table(d: dict, key: str, label: str, kind=dict, default: Any = None) -> Any:
    value = d.get(key, default)
    if value is not None and not isinstance(value, kind):
        want = "a table" if kind is dict else f"an array of tables ([[{key}]])"
        raise ConfigError(f"{label}: expected {want}, got {value!r}")
    return value


def _unknown(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra and extra[0] in _RUN_FLAGS and where.endswith("options"):
        raise ConfigError(f"{where}.{extra[0]}: the machine a recipe runs on is `featcache run`'s to say "
                          f"(--{extra[0]}), not the recipe's")
    if extra:
        raise ConfigError(f"{where}: unknown field {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _keys(table: dict, schema: dict[str, Any], label: str) -> dict:
    """A copy of ``table`` whose values are checked against the ``schema``'s type hints (``label`` + key names
    them in errors); run after ``_unknown``, so every key is in the schema."""
    return {k: check_type(schema[k], v, label + k) if k in schema else v for k, v in table.items()}


def _config_values(cls: type, table: dict, label: str) -> dict:
    """A stage's option table checked as its CLI flags are: each value against its config field's type."""
    return {k: check_value(cls, k, v, label + k) for k, v in table.items()}


def _is_path_type(tp: Any) -> bool:
    return tp is Path or Path in typing.get_args(tp)


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")  # what resolve_weights takes for a file


class _Recipe:
    """Where a recipe's errors point and its relative paths resolve: the recipe file's own folder (a recipe given
    as data, e.g. the demo's, keeps them relative to the working directory)."""

    def __init__(self, path: Path | None) -> None:
        self.where = f"recipe {path}" if path else "recipe"
        self.folder = Path(os.path.abspath(path)).parent if path else None

    def path(self, value: str) -> Path:
        p = Path(_expand(value))
        return p if p.is_absolute() or self.folder is None or "$" in str(p) else self.folder / p

    def weights(self, value: str, teacher: str) -> str:
        """``weights``: a file (or a run directory for the ``run`` teacher) resolves against the recipe's folder;
        torchvision weight names, ``random`` and ``teacher:NAME`` stay as written."""
        from featcache.models.registry import get_entry

        expanded = _expand(value)
        if value.startswith("teacher:") or value == "random" or "$" in expanded:
            return expanded  # an unset variable is left for --weights' own error
        entry = get_entry("teacher", teacher)
        pathlike = (("/" in expanded or os.sep in expanded or Path(expanded).suffix in _CHECKPOINT_SUFFIXES)
                    or (entry is not None and entry.weights_are_run)
                    or (self.folder is not None and (self.folder / expanded).exists()))
        return str(self.path(expanded)) if pathlike else expanded

    def dataset_options(self, dataset: str, options: dict, label: str) -> dict:
        """Dataset options checked against the builder's declared options and types; path options resolved."""
        from featcache.datasets.registry import dataset_option_types

        declared = dataset_option_types(dataset)
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise ConfigError(f"{label}: dataset {dataset!r} does not take option {unknown[0]!r}; its options: "
                              f"{', '.join(sorted(declared)) or 'none'}")
        out = {}
        for k, v in options.items():
            v = check_type(declared[k], v, f"{label}.{k}")
            out[k] = str(self.path(v)) if _is_path_type(declared[k]) and isinstance(v, str) else v
        return out

    def classes(self, value: Any, parts: set[str], label: str) -> Any:
        """A teacher's ``train.classes`` / a task: a part name of [classes], a list of names, or a file of names
        (resolved, and required to exist now rather than after the stages before it have run)."""
        value = check_type(str | list[str], value, label)
        if isinstance(value, list) or value in parts:
            return value
        path = self.path(value)
        if not path.is_file():
            known = f"a part of [classes] ({', '.join(sorted(parts))}), " if parts else ""
            raise ConfigError(f"{label} {value!r}: neither {known}a list of class names nor a file of them")
        return str(path)


def parse_pipeline(data: dict[str, Any], *, path: Path | None = None, data_root: Path | None = None,
                   runs_dir: Path | None = None) -> Pipeline:
    """Validate a recipe: every table, key and value — the stages' options with the types and checks of their CLI
    flags — so that a mistake is one line now, not a traceback after a teacher has trained. Names of students,
    teachers and methods are checked against the registries; relative paths resolve against the recipe's folder."""
    from featcache.datasets import list_datasets as dataset_names
    from featcache.distill.methods import METHODS
    from featcache.distill.setup import validate as validate_distill
    from featcache.extract.plan import validate as validate_extract
    from featcache.models.classifier import INITS
    from featcache.models.registry import get_entry, list_models
    from featcache.models.teachers import torchvision_classifiers
    from featcache.teach import validate as validate_teacher

    recipe = _Recipe(path)
    where = recipe.where
    _unknown(data, {"pipeline", "dataset", "teachers", "distill", "report", "classes", "amalgamate"}, where)
    meta = _table(data, "pipeline", f"{where}: [pipeline]", default={})
    _unknown(meta, {"name", "description", "runs_dir", "stores"}, f"{where}: [pipeline]")
    meta = _keys(meta, {"name": str, "description": str, "runs_dir": str}, f"{where}: [pipeline] ")
    if "stores" in meta:  # the same declaration as distill's --store
        meta["stores"] = [recipe.path(str(v)) for v in check_value(DistillConfig, "stores", meta["stores"],
                                                                      f"{where}: [pipeline] stores")]
    ds = _table(data, "dataset", f"{where}: [dataset]")
    if not ds or "name" not in ds:
        raise ConfigError(f"{where}: [dataset] with a name is required (e.g. name = \"cifar10\")")
    _unknown(ds, {"name", "data_root", "options"}, f"{where}: [dataset]")
    ds = _keys(ds, {"name": str, "data_root": str, "options": dict}, f"{where}: [dataset] ")
    if ds["name"] not in dataset_names():
        raise ConfigError(f"{where}: [dataset] name {ds['name']!r}: choose one of {', '.join(dataset_names())}")
    # --data-root is a flag: it stays relative to the working directory; the recipe's own is relative to its folder
    root = data_root if data_root is not None else (recipe.path(ds["data_root"]) if ds.get("data_root") else None)
    if root is not None and "$" in str(root):
        raise ConfigError(f"{where}: [dataset] data_root {ds['data_root']!r} uses an unset variable; "
                          "pass --data-root DIR")
    dataset_options = recipe.dataset_options(ds["name"], ds.get("options", {}), f"{where}: [dataset] options")

    # [classes] first: teachers' train.classes may name its parts
    class_parts = _table(data, "classes", f"{where}: [classes]")
    part_names: set[str] = set()
    if class_parts is not None:
        _unknown(class_parts, {"parts", "seed"}, f"{where}: [classes]")
        class_parts = _keys(class_parts, {"parts": int, "seed": int}, f"{where}: [classes] ")
        if not isinstance(class_parts.get("parts"), int) or class_parts["parts"] < 2:
            raise ConfigError(f"{where}: [classes] parts must be an integer >= 2 (named part1, part2, ...)")
        part_names = {f"part{k}" for k in range(1, class_parts["parts"] + 1)}

    teachers: list[TeacherSpec] = []
    teacher_tables = _table(data, "teachers", f"{where}: teachers", kind=list, default=[])
    for i, t in enumerate(teacher_tables):
        w = f"{where}: [[teachers]] #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"{w}: expected a table, got {t!r}")
        _unknown(t, {"name", "teacher", "weights", "train", "extract"}, w)
        t = _keys(t, {"name": str, "teacher": str, "weights": str, "train": dict, "extract": dict}, f"{w} ")
        if "teacher" not in t:
            raise ConfigError(f"{w}: 'teacher' (a registered teacher or torchvision classifier) is required")
        if get_entry("teacher", t["teacher"]) is None and t["teacher"] not in torchvision_classifiers():
            raise ConfigError(f"{w}: unknown teacher {t['teacher']!r}; see `featcache teachers --all`")
        if t.get("train") is not None and t.get("weights") is not None:
            raise ConfigError(f"{w}: give either 'train' (fine-tune here) or 'weights' (load), not both")
        train = t.get("train")
        if train is not None:
            _unknown(train, _TRAIN_FIELDS, f"{w} train")
            train = _config_values(TeacherConfig, train, f"{w} train.")
            if "dataset_options" in train:
                train["dataset_options"] = recipe.dataset_options(ds["name"], train["dataset_options"],
                                                                  f"{w} train.dataset_options")
            if "classes" in train:
                train["classes"] = recipe.classes(train["classes"], part_names, f"{w} train.classes")
            if isinstance(train.get("init"), str) and train["init"] not in INITS:  # a checkpoint path
                train["init"] = str(recipe.path(train["init"]))
            tc = TeacherConfig(teacher=t["teacher"], dataset=ds["name"], data_root=root,
                               **{**train, "dataset_options": {**dataset_options, **train.get("dataset_options", {})},
                                  "classes": None})
            with _recipe_terms(TeacherConfig, f"{w} train.", context=f"{w} train"):
                validate_teacher(tc)
        extract = t.get("extract", {})
        _unknown(extract, _EXTRACT_FIELDS, f"{w} extract")
        extract = _config_values(ExtractConfig, extract, f"{w} extract.")
        with _recipe_terms(ExtractConfig, f"{w} extract.", context=f"{w} extract"):
            validate_extract(ExtractConfig(teacher=t["teacher"], dataset=ds["name"], **extract))
        weights = recipe.weights(t["weights"], t["teacher"]) if t.get("weights") is not None else None
        if isinstance(weights, str) and weights.startswith("teacher:"):
            ref = weights.split(":", 1)[1]
            if not any(isinstance(x, dict) and x.get("name", x.get("teacher")) == ref and x.get("train")
                       for x in teacher_tables):
                raise ConfigError(f"{w}: weights {weights!r} must name a [[teachers]] entry that is trained here")
        teachers.append(TeacherSpec(t.get("name", t["teacher"]), t["teacher"], weights, train, extract))
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two [[teachers]] share the name "
                          f"{next(n for n in names if names.count(n) > 1)!r}; set 'name'")

    runs: list[DistillSpec] = []
    for i, d in enumerate(_table(data, "distill", f"{where}: distill", kind=list, default=[])):
        w = f"{where}: [[distill]] #{i + 1}"
        if not isinstance(d, dict):
            raise ConfigError(f"{w}: expected a table, got {d!r}")
        _unknown(d, {"students", "methods", "teachers", "seeds", "options", "tag"}, w)
        d = _keys(d, {"students": list[str], "methods": list[str], "teachers": list[str], "seeds": list[int] | int,
                      "options": dict, "tag": str}, f"{w} ")
        students, methods, block_teachers = d.get("students", []), d.get("methods", []), d.get("teachers", [])
        if not students or not methods:
            raise ConfigError(f"{w}: 'students' and 'methods' must list at least one each")
        for s in students:
            if get_entry("student", s) is None:
                raise ConfigError(f"{w}: unknown student {s!r}; choose one of {', '.join(list_models('student'))}")
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"{w}: unknown method {m!r}; choose one of {', '.join(METHODS)}")
        for t in block_teachers:
            if t not in names:
                raise ConfigError(f"{w}: teacher {t!r} is not one of the recipe's [[teachers]] "
                                  f"({', '.join(names) or 'none'})")
        for m in methods:
            _check_teacher_count(METHODS[m], 0 if m == "ce" else len(block_teachers), w)
        seeds = d.get("seeds", [0])
        seeds = [seeds] if isinstance(seeds, int) else seeds  # one seed may be written bare
        if not seeds:
            raise ConfigError(f"{w}: 'seeds' must list at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{w}: seeds lists {next(x for x in seeds if seeds.count(x) > 1)} twice")
        options = d.get("options", {})
        _unknown(options, _DISTILL_FIELDS, f"{w} options")
        options = _config_values(DistillConfig, options, f"{w} options.")
        tag = d.get("tag", "")
        if tag and not tag.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{w}: tag {tag!r} may hold only letters, digits, - and _ (it names run directories)")
        with _recipe_terms(DistillConfig, f"{w} options.", context=f"{w} options"):
            validate_distill(DistillConfig(student=students[0], dataset=ds["name"], dataset_options=dataset_options,
                                           teachers=list(block_teachers), method=methods[0], seed=seeds[0], tag=tag,
                                           **options))
        runs.append(DistillSpec(list(students), list(methods), list(block_teachers), list(seeds), options, tag))
    dirs = [job.name for job in distill_jobs(runs)]
    if len(set(dirs)) != len(dirs):
        clash = next(x for x in dirs if dirs.count(x) > 1)
        raise ConfigError(f"{where}: two [[distill]] runs would share the run directory {clash!r}; give the blocks "
                          "different 'tag's")

    report = _table(data, "report", f"{where}: [report]", default={})
    _unknown(report, {"title", "markdown", "plot"}, f"{where}: [report]")
    report = _keys(report, {"title": str, "markdown": str, "plot": str}, f"{where}: [report] ")
    amalgamate = _table(data, "amalgamate", f"{where}: [amalgamate]")
    if amalgamate is not None:
        amalgamate = _amalgamate_table(amalgamate, f"{where}: [amalgamate]", names, class_parts, part_names, recipe,
                                       ds["name"], dataset_options)
    name = meta.get("name") or (path.stem if path else "pipeline")
    # The default (no runs_dir) is runs/<name> under the working directory, as a flag's default would be.
    out_dir = runs_dir or (recipe.path(meta["runs_dir"]) if meta.get("runs_dir") else Path("runs") / name)
    return Pipeline(name, path, out_dir, ds["name"], root, dataset_options, teachers, runs, report,
                    meta.get("description", ""), class_parts, amalgamate, meta.get("stores", []))


def _check_teacher_count(method: Any, n: int, where: str) -> None:
    lo, hi = method.min_teachers, method.max_teachers
    if n >= lo and (hi is None or n <= hi):
        return
    want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
    raise ConfigError(f"{where}: method {method.name!r} takes {want} teacher(s) but 'teachers' lists {n}")


def _amalgamate_table(a: dict, w: str, names: list[str], class_parts, part_names: set[str], recipe: _Recipe,
                      dataset: str, dataset_options: dict) -> dict[str, Any]:
    from featcache.distill.setup import validate as validate_distill
    from featcache.models.registry import get_entry

    _unknown(a, {"teachers", "tasks", "student", "component_student", "epochs", "component_epochs", "options"}, w)
    a = _keys(a, {"teachers": list[str], "tasks": dict, "student": str, "component_student": str, "epochs": int,
                  "component_epochs": int, "options": dict}, f"{w} ")
    for t in a.get("teachers", []):
        if t not in names:
            raise ConfigError(f"{w}: teacher {t!r} is not one of the recipe's [[teachers]] ({', '.join(names)})")
    if not a.get("teachers"):
        raise ConfigError(f"{w}: 'teachers' must list the source teachers")
    if not a.get("tasks") and class_parts is None:
        raise ConfigError(f"{w}: give 'tasks' (name -> classes) or a [classes] table to split")
    if a.get("tasks"):
        a["tasks"] = {k: recipe.classes(v, part_names, f"{w} tasks.{k}") for k, v in a["tasks"].items()}
    for key in ("student", "component_student"):
        if key in a and get_entry("student", a[key]) is None:
            raise ConfigError(f"{w} {key}: unknown student {a[key]!r}")
    for key in ("epochs", "component_epochs"):
        if key in a and a[key] < 1:
            raise ConfigError(f"{w} {key} must be >= 1, got {a[key]}")
    options = a.get("options", {})
    if "epochs" in options:  # the amalgamation sets each net's epochs itself; this one would be ignored
        raise ConfigError(f"{w} options.epochs: set [amalgamate] epochs (and component_epochs) instead")
    _unknown(options, _DISTILL_FIELDS, f"{w} options")
    a["options"] = _config_values(DistillConfig, options, f"{w} options.")
    with _recipe_terms(DistillConfig, f"{w} options.", context=f"{w} options"):
        validate_distill(DistillConfig(student=a.get("student", "resnet18"), dataset=dataset,
                                       dataset_options=dataset_options, method="aka", **a["options"]))
    return a


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
    kind: str  # teacher | extract | distill | amalgamate | report
    name: str
    state: str  # done | resume | run | waits | stale
    run_dir: Path | None = None
    detail: str = ""
    payload: Any = None
    differs: list[str] = field(default_factory=list)  # stale: what the recipe now asks that the outputs did not do


STALE_DIR = ".stale"  # RUNS/.stale/: where --rerun-stale moves the outputs of stale stages (kept, never deleted)
# Not compared: where the data lives (distill checks the data's identity itself), besides the runtime flags.
_NOT_COMPARED = {"data_root"}


def _run_state(run_dir: Path, final_file: str = SUMMARY) -> str:
    if (run_dir / final_file).is_file():
        return "done"
    return "resume" if (run_dir / LAST).is_file() else "run"


def _has_results(run_dir: Path) -> bool:
    """A run whose outputs a plan would reuse (finished) or continue (a last checkpoint), with its config.json."""
    return (run_dir / CONFIG).is_file() and ((run_dir / SUMMARY).is_file() or (run_dir / LAST).is_file())


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    text = (f"[{', '.join(map(str, value))}]" if isinstance(value, list)
            else repr(value) if isinstance(value, str) else str(value))
    return text if len(text) <= 48 else text[:47] + "…"


def _differences(expected: Any, recorded: dict[str, Any], skip: set[str] = frozenset()) -> list[str]:
    """``field old → new`` for every field of the DistillConfig a run recorded (config.json's ``config``) that
    differs from what the recipe now asks, runtime flags aside. A field the record lacks (one added since) counts
    as its default, which is what the run did."""
    before = DistillConfig.from_dict(recorded)
    ignored = runtime_fields(DistillConfig) | _NOT_COMPARED | set(skip)
    out = []
    for f in fields(DistillConfig):
        old, new = _plain(getattr(before, f.name)), _plain(getattr(expected, f.name))
        if f.name not in ignored and old != new:
            out.append(f"{f.name} {_show(old)} → {_show(new)}")
    return out


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
                         stores=list(p.stores), device=device, workers=workers, **opts)


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


def _weights_source(p: Pipeline, t: TeacherSpec) -> str | None:
    """The [[teachers]] entry whose training here gives ``t`` its weights (``t`` itself, or ``weights = teacher:X``)."""
    if t.train is not None:
        return t.name
    if isinstance(t.weights, str) and t.weights.startswith("teacher:"):
        return t.weights.split(":", 1)[1]
    return None


def teacher_config(p: Pipeline, t: TeacherSpec, **runtime: Any) -> TeacherConfig:
    """The train-teacher config of a [[teachers]] entry trained here (``runtime``: run_dir, device, ...)."""
    train = dict(t.train or {})
    options = {**p.dataset_options, **train.pop("dataset_options", {})}
    if "classes" in train:
        train["classes"] = p.resolve_classes(train["classes"])
    return TeacherConfig(teacher=t.teacher, dataset=p.dataset, data_root=p.data_root, dataset_options=options,
                         **runtime, **train)


def job_config(p: Pipeline, job: DistillJob, keys: dict[str, str] | None = None, **runtime: Any) -> DistillConfig:
    """The distill config of one run of the recipe; ``keys`` gives each teacher's cache key (else its name)."""
    teachers = [keys[t] for t in job.teachers] if keys is not None else list(job.teachers)
    return DistillConfig(student=job.student, dataset=p.dataset, data_root=p.data_root,
                         dataset_options=dict(p.dataset_options), teachers=teachers, method=job.method, seed=job.seed,
                         tag=job.spec.tag, stores=list(p.stores), **runtime, **job.spec.options)


def _teacher_record(run_dir: Path) -> dict[str, Any]:
    """teacher.pt's ``featcache`` record (its resolved --init); memory-mapped, so its weights are not read."""
    from featcache.teach import TEACHER_FILE

    try:
        import torch

        record = torch.load(run_dir / TEACHER_FILE, map_location="cpu", weights_only=True, mmap=True)["featcache"]
        return record if isinstance(record, dict) else {}
    except Exception:  # noqa: BLE001 - no or an unreadable teacher.pt: compare what config.json records
        return {}


def _teacher_differs(p: Pipeline, t: TeacherSpec, run_dir: Path) -> list[str]:
    """What a trained (or half-trained) teacher did that the recipe's ``train`` table no longer asks."""
    from dataclasses import replace

    from featcache.models.classifier import resolve_init
    from featcache.rundir import read_config
    from featcache.teach import default_lr, validate

    info = read_config(run_dir)
    tc = teacher_config(p, t, run_dir=run_dir)
    done_init = _teacher_record(run_dir).get("init")  # what --init resolved to when it trained
    out = []
    # --init auto means "ImageNet weights if they are at hand": what it found then stands; an explicit one must match
    now_init = done_init if tc.init == "auto" and done_init else resolve_init(tc.teacher, tc.init)
    if done_init and now_init != done_init:
        out.append(f"init {_show(done_init)} → {_show(now_init)}")
    expected = validate(replace(tc, lr=tc.lr if tc.lr is not None else default_lr(now_init)))
    out += _differences(expected, info["config"])
    params = ((info.get("dataset") or {}).get("train") or {}).get("params") or {}
    subset = params.get("class_subset")  # train-teacher --classes subsets the dataset: its identity records them
    if _plain(subset) != _plain(tc.classes):
        out.append(f"classes {_show(subset or 'all')} → {_show(tc.classes or 'all')}")
    return out


def _job_differs(p: Pipeline, job: DistillJob, run_dir: Path, keys: dict[str, str] | None) -> list[str]:
    """What a distill run did that the recipe no longer asks; ``keys``: the teachers' cache keys as planned now
    (a teacher missing from it is trained anew first), or None not to compare the caches."""
    from featcache.rundir import read_config

    recorded = read_config(run_dir)["config"]
    out = _differences(job_config(p, job), recorded, skip={"teachers"})
    if keys is not None and job.teachers:
        anew = [t for t in job.teachers if t not in keys]
        if anew:
            out.append(f"teacher {anew[0]!r} is trained anew first")
        elif _plain(recorded.get("teachers")) != [keys[t] for t in job.teachers]:
            out.append(f"teachers {_show(recorded.get('teachers'))} → {_show([keys[t] for t in job.teachers])}")
    return out


def _amalgamate_differs(p: Pipeline, keys: dict[str, str]) -> list[str]:
    """What the amalgamation's finished nets did that the recipe's [amalgamate] table no longer asks (each net's
    config built as featcache.amalgamate builds it)."""
    from featcache.amalgamate import AmalgamateConfig
    from featcache.rundir import read_config

    a, root = p.amalgamate, p.runs_dir / "amalgamate"
    nets = sorted(d for d in root.glob("*") if _has_results(d)) if root.is_dir() else []
    if not nets:
        return []
    anew = [t for t in a["teachers"] if t not in keys]
    if anew:
        return [f"source teacher {anew[0]!r} is trained anew first"]
    student, epochs = a.get("student", AmalgamateConfig.student), a.get("epochs", AmalgamateConfig.epochs)
    base = dict(dataset=p.dataset, data_root=p.data_root, dataset_options=dict(p.dataset_options), method="aka",
                **a.get("options", {}))
    tasks = a.get("tasks") or {f"part{k}": f"part{k}" for k in range(1, int(p.class_parts["parts"]) + 1)}
    sources = {keys[t] for t in a["teachers"]}
    out = []
    for d in nets:
        if d.name == "target":
            expected = DistillConfig(student=student, epochs=epochs, **base)
        elif d.name.startswith("component-") and d.name[len("component-"):] in tasks:
            expected = DistillConfig(student=a.get("component_student") or student,
                                     epochs=a.get("component_epochs") or epochs,
                                     classes=p.resolve_classes(tasks[d.name[len("component-"):]]), **base)
        else:
            out.append(f"{d.name}: not a task of the recipe")
            continue
        recorded = read_config(d)["config"]
        out += [f"{d.name}: {x}" for x in _differences(expected, recorded, skip={"teachers"})]
        if d.name != "target" and not set(recorded.get("teachers") or []) <= sources:
            out.append(f"{d.name}: trained from other source caches")
    return out


def plan(p: Pipeline, *, cache_dir: Path | None = None, device: str = "auto",
         workers: int | None = None) -> list[Stage]:
    """Every stage with its state. A stage whose outputs exist but no longer match the recipe (config.json records
    other values than the recipe now asks: an edited option, a retrained teacher) is ``stale``, with what differs;
    run_pipeline refuses to go on while any is."""
    from featcache.extract import plan_extract
    from featcache.teach import TEACHER_FILE

    stages: list[Stage] = []
    retrained: set[str] = set()  # teachers trained here whose teacher.pt is missing or stale
    for t in p.teachers:
        if t.train is not None:
            d = _teacher_dir(p, t)
            stage = Stage("teacher", t.name, _run_state(d, TEACHER_FILE), d, f"train-teacher {t.teacher}", t)
            if stage.state != "run" and (d / CONFIG).is_file():
                stage.differs = _teacher_differs(p, t, d)
            if stage.differs:
                stage.state, stage.detail = "stale", f"{stage.detail}: {'; '.join(stage.differs)}"
            if stage.state != "done":
                retrained.add(t.name)
            stages.append(stage)
    keys: dict[str, str] = {}  # each teacher's cache key, where it can be planned now
    for t in p.teachers:
        cfg = extract_config(p, t, cache_dir, device, workers)
        source = _weights_source(p, t)
        if source is not None and (source in retrained or not Path(cfg.weights).is_file()):
            stages.append(Stage("extract", t.name, "waits", None, "after its teacher is trained", t))
            continue
        ep = plan_extract(cfg)
        keys[t.name] = ep.key
        from featcache.cache import CacheStore

        copies = CacheStore(cache_dir, p.stores).copies(ep.key)  # a complete copy in any store will be reused
        done = any(e.manifest is not None and e.manifest.complete for e in copies)
        stages.append(Stage("extract", t.name, "done" if done else "run", ep.directory, ep.key, t))
    for job in distill_jobs(p.distill):
        rd = p.runs_dir / job.name
        stage = Stage("distill", job.name, _run_state(rd), rd, "", job)
        if _has_results(rd):
            stage.differs = _job_differs(p, job, rd, keys)
        if stage.differs:
            stage.state, stage.detail = "stale", "; ".join(stage.differs)
        stages.append(stage)
    if p.amalgamate is not None:
        target = p.runs_dir / "amalgamate" / "target"
        stage = Stage("amalgamate", "components → target", _run_state(target), target,
                      f"aka over {', '.join(p.amalgamate['teachers'])}")
        stage.differs = _amalgamate_differs(p, keys)
        if stage.differs:
            stage.state, stage.detail = "stale", f"{stage.detail}: {'; '.join(stage.differs)}"
        stages.append(stage)
    stages.append(Stage("report", p.name, "run", p.runs_dir, ", ".join(f"{k}={v}" for k, v in p.report.items())))
    return stages


def describe_plan(stages: list[Stage]) -> list[str]:
    return [f"{s.state:>6}  {s.kind:<10} {s.name}" + (f"  ({s.detail})" if s.detail else "") for s in stages]


def stale_message(p: Pipeline, stale: list[Stage]) -> str:
    """One line: which finished stages no longer match the recipe, what differs, and how to go on."""
    shown = "; ".join(f"{s.kind} {s.name}: {', '.join(s.differs[:3])}{', …' if len(s.differs) > 3 else ''}"
                      for s in stale[:3])
    more = f"; and {len(stale) - 3} more" if len(stale) > 3 else ""
    return (f"{'recipe ' + str(p.path) if p.path else 'pipeline ' + p.name}: {len(stale)} stage(s) already have "
            f"outputs made with other values than the recipe now asks ({shown}{more}); delete those run directories, "
            f"or pass --rerun-stale to move them to {p.runs_dir / STALE_DIR} and run them again")


def _move_stale(p: Pipeline, stale: list[Stage]) -> list[tuple[Path, Path]]:
    """Move the outputs of stale stages under RUNS/.stale/ (nothing is deleted), each after taking its run
    directories' locks, so that a run another process is training is never moved from under it."""
    import datetime as _dt

    from featcache.errors import RunLockedError
    from featcache.locks import DirLock

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = []
    for s in stale:
        src = s.run_dir.parent if s.kind == "amalgamate" else s.run_dir  # the amalgamation's nets move together
        name = {"teacher": f"teacher-{s.name}", "amalgamate": "amalgamate"}.get(s.kind, s.name)
        dst = p.runs_dir / STALE_DIR / f"{name}-{stamp}"
        k = 1
        while dst.exists():
            dst, k = p.runs_dir / STALE_DIR / f"{name}-{stamp}-{k}", k + 1
        locks = []
        try:
            for d in [src, *(x for x in src.iterdir() if x.is_dir() and (x / CONFIG).is_file())]:
                lock = DirLock(d, "run directory")
                lock.error = RunLockedError
                locks.append(lock.acquire(wait=False))
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)
        except RunLockedError as exc:
            raise exc.with_hint("wait for that run to end before --rerun-stale moves it") from None
        finally:
            for lock in locks:
                lock.release()
        moved.append((src, dst))
    return moved


# -- execution -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _recipe_terms(cls: type, where: str, context: str | None = None):
    """Errors about an option name it as the recipe spells it (``[[distill]] ... options.cache_ram``), not as a flag
    the recipe's user never typed. With ``context`` (plan-time checks), an error naming no option of ``cls`` is
    prefixed with it, so that it still says which table of which recipe is at fault."""
    try:
        yield
    except FeatcacheError as exc:
        name = field_of_flag(cls, exc.flag) if exc.flag else None
        if name is None:
            if context is not None:
                raise ConfigError(f"{context}: {exc}") from None
            raise
        raise exc.reworded(where + name) from None


def run_pipeline(p: Pipeline, *, cache_dir: Path | None = None, device: str = "auto", workers: int | None = None,
                 reporter: Reporter | None = None, log=print, rerun_stale: bool = False) -> dict[str, Any]:
    """Execute every stage that is not done, in order; returns the report paths and the distill run directories.

    Stale stages (outputs made with other values than the recipe now asks, see ``plan``) are refused before anything
    runs, unless ``rerun_stale``: their directories are then moved under RUNS/.stale/ and the stages run again."""
    from featcache.extract import extract
    from featcache.teach import train_teacher
    from featcache.distill.trainer import distill

    reporter = reporter or Reporter()
    stages = plan(p, cache_dir=cache_dir, device=device, workers=workers)
    stale = [s for s in stages if s.state == "stale"]
    if stale and not rerun_stale:
        raise ConfigError(stale_message(p, stale))
    if stale:
        for src, dst in _move_stale(p, stale):
            log(f"[stale] {src} moved to {dst}")
        stages = plan(p, cache_dir=cache_dir, device=device, workers=workers)
    keys: dict[str, str] = {}
    for stage in stages:
        if stage.kind == "teacher" and stage.state != "done":
            t: TeacherSpec = stage.payload
            log(f"[teacher] {t.name}: {'resuming' if stage.state == 'resume' else 'training'} {t.teacher}")
            tc = teacher_config(p, t, device=device, workers=workers, run_dir=stage.run_dir,
                                resume=stage.state == "resume")
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
            if stage.state == "done":
                continue
            log(f"[distill] {stage.name}: {'resuming' if stage.state == 'resume' else 'starting'}")
            config = job_config(p, job, keys, run_dir=stage.run_dir, resume=stage.state == "resume",
                                cache_dir=cache_dir, device=device, workers=workers)
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
        options=dict(a.get("options", {})), cache_dir=cache_dir, stores=list(p.stores),
        run_dir=p.runs_dir / "amalgamate", device=device,
        workers=workers,
    )
    return amalgamate(cfg, reporter, log=log)


def distill_runs(p: Pipeline) -> list[Path]:
    """The recipe's distill run directories that have finished at least one epoch, as the recipe now asks: a run
    made with other values (a stale one, see ``plan``) is never mixed into the report."""
    out = []
    for job in distill_jobs(p.distill):
        d = p.runs_dir / job.name
        if ((d / SUMMARY).is_file() or (d / METRICS).is_file()) and not (
                (d / CONFIG).is_file() and _job_differs(p, job, d, keys=None)):
            out.append(d)
    return out


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
