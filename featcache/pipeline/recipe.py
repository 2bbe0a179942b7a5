"""Recipes: a TOML file parsed into a checked :class:`Pipeline` (every value as strictly as its CLI flag), and
the distill runs its blocks expand to."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache.cache.remote import store_url
from featcache.config import DistillConfig, ExtractConfig, TeacherConfig
from featcache.config.flags import check_type, check_value, field_of_flag, recipe_fields
from featcache.errors import SEED_MAX, ConfigError, FeatcacheError
from featcache.pipeline.jobs import DistillSpec, TeacherSpec, block_draws, distill_jobs, teacher_draws
from featcache.pipeline.paths import Recipe, check_names, expand, inside_runs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


# What a recipe table may set is declared by each config field's Flag (featcache.config): everything but what the
# recipe itself sets (its dataset, teacher names, run directories) and the machine it runs on (featcache run's
# --device / --workers). A field added to a config is accepted here without touching this file, and its values are
# checked against the field's type (flags.check_value) and by the stage's own validate() at plan time.
_RUN_FLAGS = {"device", "workers"}  # featcache run's own flags: one machine for every stage
DISTILL_FIELDS = recipe_fields(DistillConfig) - _RUN_FLAGS
TRAIN_FIELDS = recipe_fields(TeacherConfig)
EXTRACT_FIELDS = recipe_fields(ExtractConfig)


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

    def amalgamate_dirs(self) -> dict[int, Path]:
        """seed -> the directory of that seed's amalgamation nets: RUNS/amalgamate for seed 0 (where they lived
        before [amalgamate] took seeds), RUNS/amalgamate-s<N> for seed N."""
        seeds = (self.amalgamate or {}).get("seeds", [0])
        return {s: self.runs_dir / ("amalgamate" if s == 0 else f"amalgamate-s{s}") for s in seeds}

    def resolve_classes(self, value: Any) -> list[str]:
        """A teacher's ``train.classes`` / a task: a part name of [classes], a list of names, or a file of names."""
        if isinstance(value, list):
            return [str(v) for v in value]
        parts = self.parts()
        if value in parts:
            return parts[value]
        from featcache.datasets.base import read_class_list

        return read_class_list(Path(expand(str(value))))


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


def parse_pipeline(data: dict[str, Any], *, path: Path | None = None, data_root: Path | None = None,
                   runs_dir: Path | None = None) -> Pipeline:
    """Validate a recipe: every table, key and value — the stages' options with the types and checks of their CLI
    flags — so that a mistake is one line now, not a traceback after a teacher has trained. Names of students,
    teachers and methods are checked against the registries; relative paths resolve against the recipe's folder."""
    recipe = Recipe(path)
    where = recipe.where
    _unknown(data, {"pipeline", "dataset", "teachers", "distill", "report", "classes", "amalgamate"}, where)
    meta = _parse_meta(data, recipe)
    ds = _parse_dataset(data, recipe, data_root)
    class_parts, part_names = _parse_classes(data, where)
    teacher_tables = _table(data, "teachers", f"{where}: teachers", kind=list, default=[])
    teachers = [_parse_teacher(t, f"{where}: [[teachers]] #{i + 1}", recipe, ds, part_names, teacher_tables)
                for i, t in enumerate(teacher_tables)]
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two [[teachers]] share the name "
                          f"{next(n for n in names if names.count(n) > 1)!r}; set 'name'")
    teachers = teacher_draws(teachers, where)
    runs = [_parse_distill(d, f"{where}: [[distill]] #{i + 1}", ds, names, recipe)
            for i, d in enumerate(_table(data, "distill", f"{where}: distill", kind=list, default=[]))]
    for i, block in enumerate(runs):
        block.draws = block_draws(block.teachers, teachers, f"{where}: [[distill]] #{i + 1}")
    dirs = [job.name for job in distill_jobs(runs)]
    if len(set(dirs)) != len(dirs):
        clash = next(x for x in dirs if dirs.count(x) > 1)
        raise ConfigError(f"{where}: two [[distill]] runs would share the run directory {clash!r}; give the blocks "
                          "different 'tag's")
    report = _table(data, "report", f"{where}: [report]", default={})
    _unknown(report, {"title", "markdown", "plot"}, f"{where}: [report]")
    report = _keys(report, {"title": str, "markdown": str, "plot": str}, f"{where}: [report] ")
    for key in ("markdown", "plot"):
        if key in report:
            inside_runs(report[key], f"{where}: [report] {key}")
    amalgamate = _table(data, "amalgamate", f"{where}: [amalgamate]")
    drawn = [t.base for t in teachers if t.draw is not None]
    if amalgamate is not None and drawn and set(drawn) & set(amalgamate.get("teachers") or []):
        raise ConfigError(f"{where}: [amalgamate] teachers: {sorted(set(drawn))[0]!r} lists seeds, which an "
                          "amalgamation does not take yet; give it one teacher without seeds")
    if amalgamate is not None:
        amalgamate = _amalgamate_table(amalgamate, f"{where}: [amalgamate]", names, class_parts, part_names, recipe,
                                       ds.name, ds.options)
    name = meta.get("name") or (path.stem if path else "pipeline")
    # The default (no runs_dir) is runs/<name> under the working directory, as a flag's default would be.
    out_dir = runs_dir or (recipe.path(meta["runs_dir"]) if meta.get("runs_dir") else Path("runs") / name)
    joined = "the names its [[distill]] block joins (students, methods, teachers, tag)"
    check_names(out_dir, "--runs-dir" if runs_dir else f"{where}: [pipeline] runs_dir",
                {**{t.name: "the teacher's name" for t in teachers}, **dict.fromkeys(dirs, joined)}, where)
    return Pipeline(name, path, out_dir, ds.name, ds.root, ds.options, teachers, runs, report,
                    meta.get("description", ""), class_parts, amalgamate, meta.get("stores", []))


@dataclass
class _Dataset:
    """A recipe's [dataset], checked: its name, root (resolved) and options (checked against the builder's)."""

    name: str
    root: Path | None
    options: dict[str, Any]


def _parse_meta(data: dict, recipe: Recipe) -> dict[str, Any]:
    where = recipe.where
    meta = _table(data, "pipeline", f"{where}: [pipeline]", default={})
    _unknown(meta, {"name", "description", "runs_dir", "stores"}, f"{where}: [pipeline]")
    meta = _keys(meta, {"name": str, "description": str, "runs_dir": str}, f"{where}: [pipeline] ")
    if "stores" in meta:  # the same declaration as distill's --store; a URL stays a URL (featcache.cache.remote)
        meta["stores"] = [Path(str(v)) if store_url(v) else recipe.path(str(v))
                          for v in check_value(DistillConfig, "stores", meta["stores"], f"{where}: [pipeline] stores")]
    return meta


def _parse_dataset(data: dict, recipe: Recipe, data_root: Path | None) -> _Dataset:
    from featcache.datasets import list_datasets as dataset_names

    where = recipe.where
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
    options = recipe.dataset_options(ds["name"], ds.get("options", {}), f"{where}: [dataset] options")
    return _Dataset(ds["name"], root, options)


def _parse_classes(data: dict, where: str) -> tuple[dict[str, Any] | None, set[str]]:
    """[classes] (parsed first: teachers' train.classes may name its parts) and the part names it defines."""
    class_parts = _table(data, "classes", f"{where}: [classes]")
    if class_parts is None:
        return None, set()
    _unknown(class_parts, {"parts", "seed"}, f"{where}: [classes]")
    class_parts = _keys(class_parts, {"parts": int, "seed": int}, f"{where}: [classes] ")
    if not isinstance(class_parts.get("parts"), int) or class_parts["parts"] < 2:
        raise ConfigError(f"{where}: [classes] parts must be an integer >= 2 (named part1, part2, ...)")
    return class_parts, {f"part{k}" for k in range(1, class_parts["parts"] + 1)}


def _parse_teacher(t: Any, w: str, recipe: Recipe, ds: _Dataset, part_names: set[str],
                   teacher_tables: list) -> TeacherSpec:
    from featcache.extract.plan import validate as validate_extract
    from featcache.models.registry import get_entry
    from featcache.models.teachers import torchvision_classifiers

    if not isinstance(t, dict):
        raise ConfigError(f"{w}: expected a table, got {t!r}")
    _unknown(t, {"name", "teacher", "weights", "train", "extract", "seeds"}, w)
    t = _keys(t, {"name": str, "teacher": str, "weights": str, "train": dict, "extract": dict,
                  "seeds": list[int] | int}, f"{w} ")
    if "teacher" not in t:
        raise ConfigError(f"{w}: 'teacher' (a registered teacher or torchvision classifier) is required")
    if get_entry("teacher", t["teacher"]) is None and t["teacher"] not in torchvision_classifiers():
        raise ConfigError(f"{w}: unknown teacher {t['teacher']!r}; see `featcache teachers --all`")
    if t.get("train") is not None and t.get("weights") is not None:
        raise ConfigError(f"{w}: give either 'train' (fine-tune here) or 'weights' (load), not both")
    train = _parse_train(t["train"], t["teacher"], w, recipe, ds, part_names) if t.get("train") is not None else None
    extract = t.get("extract", {})
    _unknown(extract, EXTRACT_FIELDS, f"{w} extract")
    extract = _config_values(ExtractConfig, extract, f"{w} extract.")
    with recipe_terms(ExtractConfig, f"{w} extract.", context=f"{w} extract"):
        validate_extract(ExtractConfig(teacher=t["teacher"], dataset=ds.name, **extract))
    weights = recipe.weights(t["weights"], t["teacher"]) if t.get("weights") is not None else None
    if isinstance(weights, str) and weights.startswith("teacher:"):
        ref = weights.split(":", 1)[1]
        if not any(isinstance(x, dict) and x.get("name", x.get("teacher")) == ref and x.get("train")
                   for x in teacher_tables):
            raise ConfigError(f"{w}: weights {weights!r} must name a [[teachers]] entry that is trained here")
    seeds = None
    if "seeds" in t:
        if train is None:
            raise ConfigError(f"{w}: 'seeds' draws teachers trained here: give a 'train' table (a teacher loading "
                              "'teacher:NAME' weights follows that teacher's seeds)")
        if "seed" in train:
            raise ConfigError(f"{w}: give either 'seeds' (one teacher per seed) or train.seed, not both")
        seeds = _seeds(t, w)
    return TeacherSpec(t.get("name", t["teacher"]), t["teacher"], weights, train, extract, seeds)


def _parse_train(train: dict, teacher: str, w: str, recipe: Recipe, ds: _Dataset,
                 part_names: set[str]) -> dict[str, Any]:
    """A teacher's ``train`` table: train-teacher's options, checked as its flags are (validate) at parse time."""
    from featcache.models.classifier import INITS
    from featcache.teach import validate as validate_teacher

    _unknown(train, TRAIN_FIELDS, f"{w} train")
    train = _config_values(TeacherConfig, train, f"{w} train.")
    if "dataset_options" in train:
        train["dataset_options"] = recipe.dataset_options(ds.name, train["dataset_options"],
                                                          f"{w} train.dataset_options")
    if "classes" in train:
        train["classes"] = recipe.classes(train["classes"], part_names, f"{w} train.classes")
    if isinstance(train.get("init"), str) and train["init"] not in INITS:  # a checkpoint path
        train["init"] = str(recipe.path(train["init"]))
    tc = TeacherConfig(teacher=teacher, dataset=ds.name, data_root=ds.root,
                       **{**train, "dataset_options": {**ds.options, **train.get("dataset_options", {})},
                          "classes": None})
    with recipe_terms(TeacherConfig, f"{w} train.", context=f"{w} train"):
        validate_teacher(tc)
    return train


def _parse_distill(d: Any, w: str, ds: _Dataset, names: list[str], recipe: Recipe) -> DistillSpec:
    from featcache.distill.methods import METHODS
    from featcache.distill.setup import validate as validate_distill

    if not isinstance(d, dict):
        raise ConfigError(f"{w}: expected a table, got {d!r}")
    _unknown(d, {"students", "methods", "teachers", "seeds", "options", "tag"}, w)
    d = _keys(d, {"students": list[str], "methods": list[str], "teachers": list[str], "seeds": list[int] | int,
                  "options": dict, "tag": str}, f"{w} ")
    students, methods, block_teachers = d.get("students", []), d.get("methods", []), d.get("teachers", [])
    _check_names(w, students, methods, block_teachers, names)
    for m in methods:
        _check_teacher_count(METHODS[m], 0 if m == "ce" else len(block_teachers), w)
    seeds = _seeds(d, w)
    options = d.get("options", {})
    _unknown(options, DISTILL_FIELDS, f"{w} options")
    options = _config_values(DistillConfig, options, f"{w} options.")
    if isinstance(options.get("labels"), str) and options["labels"].startswith("ids:"):
        options["labels"] = recipe.ids_file(options["labels"], f"{w} options.labels")
    tag = d.get("tag", "")
    if tag and not tag.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{w}: tag {tag!r} may hold only letters, digits, - and _ (it names run directories)")
    with recipe_terms(DistillConfig, f"{w} options.", context=f"{w} options"):
        validate_distill(DistillConfig(student=students[0], dataset=ds.name, dataset_options=ds.options,
                                       teachers=list(block_teachers), method=methods[0], seed=seeds[0], tag=tag,
                                       **options))
    return DistillSpec(list(students), list(methods), list(block_teachers), list(seeds), options, tag)


def _check_names(w: str, students: list[str], methods: list[str], teachers: list[str], names: list[str]) -> None:
    """A block's students and methods are registered, its teachers are the recipe's."""
    from featcache.distill.methods import METHODS
    from featcache.models.registry import get_entry, list_models

    if not students or not methods:
        raise ConfigError(f"{w}: 'students' and 'methods' must list at least one each")
    for s in students:
        if get_entry("student", s) is None:
            raise ConfigError(f"{w}: unknown student {s!r}; choose one of {', '.join(list_models('student'))}")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"{w}: unknown method {m!r}; choose one of {', '.join(METHODS)}")
    for t in teachers:
        if t not in names:
            raise ConfigError(f"{w}: teacher {t!r} is not one of the recipe's [[teachers]] "
                              f"({', '.join(names) or 'none'})")


def _check_teacher_count(method: Any, n: int, where: str) -> None:
    lo, hi = method.min_teachers, method.max_teachers
    if n >= lo and (hi is None or n <= hi):
        return
    want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
    raise ConfigError(f"{where}: method {method.name!r} takes {want} teacher(s) but 'teachers' lists {n}")


def _seeds(table: dict, w: str) -> list[int]:
    """A table's ``seeds``: a list of distinct integers >= 0 (one may be written bare); [0] when absent."""
    seeds = table.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds  # one seed may be written bare
    if not seeds:
        raise ConfigError(f"{w}: 'seeds' must list at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{w}: seeds lists {next(x for x in seeds if seeds.count(x) > 1)} twice")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise ConfigError(f"{w}: seeds must lie in [0, {SEED_MAX}], got {bad[0]}")
    return list(seeds)


def _amalgamate_table(a: dict, w: str, names: list[str], class_parts, part_names: set[str], recipe: Recipe,
                      dataset: str, dataset_options: dict) -> dict[str, Any]:
    from featcache.distill.setup import validate as validate_distill
    from featcache.models.registry import get_entry

    _unknown(a, {"teachers", "tasks", "student", "component_student", "epochs", "component_epochs", "seeds",
                 "options"}, w)
    a = _keys(a, {"teachers": list[str], "tasks": dict, "student": str, "component_student": str, "epochs": int,
                  "component_epochs": int, "seeds": list[int] | int, "options": dict}, f"{w} ")
    a["seeds"] = _seeds(a, w)
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
    _unknown(options, DISTILL_FIELDS, f"{w} options")
    a["options"] = _config_values(DistillConfig, options, f"{w} options.")
    with recipe_terms(DistillConfig, f"{w} options.", context=f"{w} options"):
        validate_distill(DistillConfig(student=a.get("student", "resnet18"), dataset=dataset,
                                       dataset_options=dataset_options, method="aka", **a["options"]))
    return a


def load_pipeline(path: str | Path, *, data_root: Path | None = None, runs_dir: Path | None = None) -> Pipeline:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path}: invalid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses per nesting level: arrays nested 100k deep are no recipe
        raise ConfigError(f"recipe {path}: invalid TOML (values nested too deep)") from None
    return parse_pipeline(data, path=path, data_root=data_root, runs_dir=runs_dir)


@contextlib.contextmanager
def recipe_terms(cls: type, where: str, context: str | None = None):
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

