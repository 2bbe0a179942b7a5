"""`featcache distill`'s options, in sections owned by the code that reads them.

Each section is a dataclass whose fields carry their flags (config.flags); ``DistillConfig`` is all of them at once
(flat: ``--lr`` is ``config.lr``, as the CLI, recipes and the Python API have always spelled it), and
``config.section(KDOptions)`` is the typed view the owner reads. ``--help`` lists the flags by section. A method's
own options are its section (``KDOptions`` for ``kd``, ``AKAOptions`` for ``aka``, ...): the method declares it
(``Method.options``) and receives only it (featcache.distill.methods.base.MethodParams).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from featcache.config.common import (
    METHODS_HELP,
    STUDENTS_HELP,
    bn_recalibrate_field,
    cache_dir_field,
    data_root_field,
    dataset_field,
    dataset_options_field,
    device_field,
    log_field,
    offline_field,
    stores_field,
    workers_field,
)
from featcache.config.flags import opt

S = TypeVar("S")


@dataclass
class StudentOptions:
    """The network trained (featcache.models.students)."""

    # The default is the first run a new user makes, on a CPU and the synthetic set: convnet_small trains there to
    # ~50 % in under a minute, where mobilenetv3 takes ~10 min and memorises the 2,000 images (docs/results.md).
    student: str = opt("convnet_small", STUDENTS_HELP, short="-s", recipe=False, section="Student")
    feature_dim: int | None = opt(None, "Width of the student's feature layer (ts sets it to the teacher's).",
                                  section="Student")
    small_input: bool | None = opt(None, "CIFAR-style stems (default: when images are <= 64 px).", negatable=True,
                                   section="Student")
    image_size: int | None = opt(None, "Without a teacher: input size (default: the dataset's native size or 224).",
                                 section="Student")
    zero_init_residual: bool | None = opt(None, "Start the last batch norm of every residual block at zero, so that "
                                                "each block is the identity at initialisation (default: the "
                                                "student's recipe alone, off with teachers; docs/students.md).",
                                          negatable=True, section="Student")
    bn_recalibrate: int = bn_recalibrate_field(section="Student")


# What a run recorded before a field existed did: config.json files written earlier lack these fields. (Defaults
# resolved per run, --augment auto and --epochs, are recorded resolved: see DistillConfig.resolved.)
RECORDED_BEFORE: dict[str, Any] = {"bn_recalibrate": 0, "warmup_epochs": 0, "zero_init_residual": False}


def as_recorded(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json's ``config`` with the fields it predates filled in with what the run did (RECORDED_BEFORE)."""
    return {**RECORDED_BEFORE, **config}


@dataclass
class DataOptions:
    """Which images and labels the run trains on (featcache.datasets, featcache.distill.labels)."""

    # None: the data the teachers' caches were extracted from (featcache.distill.resolve.with_data), else synthetic.
    dataset: str | None = dataset_field("cifar10, cifar100, cub200, sod, folder or synthetic (default: the data the "
                                        "--teacher caches were extracted from, else synthetic).", default=None,
                                        recipe=False, section="Data")
    data_root: Path | None = data_root_field("Directory holding the dataset in its official layout (default with "
                                             "--teacher and no --dataset: the one its cache was extracted from).",
                                             recipe=False, section="Data")
    dataset_options: dict[str, Any] = dataset_options_field("Dataset option key=value (repeatable), e.g. "
                                                            "num_train=500 for synthetic (with --teacher and no "
                                                            "--dataset: added to its cache's).",
                                                            recipe=False, section="Data")
    labels: str = opt("all", "Which training labels the run reads: all, none, N/class (the first N of each class), a "
                             "fraction in (0, 1) of each class, or ids:FILE. The others train through the teacher "
                             "terms only (docs/methods.md).", section="Data")
    labeled_share: float | None = opt(None, "Part of every batch drawn from the labelled samples (default: the "
                                            "natural mix, each sample once per epoch).", section="Data")
    unlabeled: bool = opt(False, "Never read the training labels (aka; implied by it). The same as --labels none.",
                          section="Data")
    content_check: str = opt("sample", "Re-hash images against the digests the caches recorded: sample (256 images, "
                                       "default), full or off.", section="Data")
    # The student's head covers these classes only (an aka component net; set by amalgamate, never by a user).
    classes: list[str] | None = opt(None, cli=False, recipe=False)


@dataclass
class TeacherOptions:
    """Which cached teachers, by which method, and how their rows are used (featcache.distill.resolve, loader)."""

    teachers: list[str] = opt(factory=list, help="A cached teacher: NAME (looked up for this dataset), KEY (or unique "
                                                 "prefix) or NAME:KEY. Repeat for several.",
                              name="--teacher", short="-t", form="repeat", recipe=False, section="Teachers")
    method: str | None = opt(None, METHODS_HELP, short="-m", recipe=False, section="Teachers")
    views: bool = opt(True, "Replay the caches' augmented views (extract --views), one per sample per epoch.",
                      negatable=True, section="Teachers")
    allow_inconsistent: bool = opt(False, "Allow augmentation/views the cached rows do not describe (the "
                                          "fixed-teacher setting).", section="Teachers")
    noise_per_batch: int = opt(0, "Add N cached random images per batch (TS-Learning augmentation).",
                               section="Teachers")
    # Run the caches' teachers on every batch instead of reading their rows: the losslessness comparison only (it
    # costs what the cache saves); the caches still name the teachers and are checked against the dataset.
    online: bool = opt(False, "Run the caches' teachers on every batch instead of reading their rows (to compare "
                              "with the cache; costs what the cache saves).", section="Teachers")


@dataclass
class LossOptions:
    """The weights every method's terms share (featcache.distill.methods)."""

    lambda_xent: float = opt(1.0, "Weight of the cross-entropy terms with the labels (λ_xent; docs/methods.md).",
                             section="Loss")
    lambda_mse: float = opt(1.0, "Weight of the feature-regression (MSE) terms: ts, fitnets, ts-translator, multi "
                                 "(λ_mse).", section="Loss")
    lambda_kd: float = opt(1.0, "kd: weight of the T²-scaled KL term to the teacher's softened logits (λ_kd).",
                           section="Loss")


@dataclass
class KDOptions:
    """kd's own option (featcache.distill.methods.kd)."""

    temperature: float = opt(4.0, "kd: softmax temperature.", section="Method kd")


@dataclass
class TranslatorOptions:
    """ts-translator's and multi's own options (featcache.models.translators)."""

    translator: str = opt("linear", "ts-translator/multi: linear or upsample.", section="Method ts-translator, multi")
    translator_lr: float | None = opt(None, "Learning rate of the translator optimizer (default: --lr).",
                                      section="Method ts-translator, multi")


@dataclass
class FitNetsOptions:
    """fitnets' own option (featcache.distill.methods.fitnets)."""

    hint_epochs: int | None = opt(None, "fitnets: epochs of the hint stage (default: --epochs).",
                                  section="Method fitnets")


@dataclass
class AKAOptions:
    """aka's own options (featcache.distill.methods.aka)."""

    aka_dim: int | None = opt(None, "aka: width of the aligned features (default: the student's).",
                              section="Method aka")
    student_blocks: list[str] = opt(factory=list, help="aka: student body modules matched, in order, to the "
                                                       "teachers' cached --blocks (e.g. layer2,layer3).",
                                    form="comma", section="Method aka")


@dataclass
class OptimOptions:
    """How the student is trained (featcache.distill.optim: the optimizers and the schedule)."""

    # Left unset, epochs, batch size, lr, optimizer, weight decay and warm-up are the student's recipe alone when no
    # teacher is given (featcache.models.registry.AloneRecipe; docs/students.md) and the papers' with teachers.
    epochs: int | None = opt(None, "Epochs of student training (default: 30 with teachers; alone, the student's "
                                   "recipe, docs/students.md).", section="Optimisation")
    batch_size: int | None = opt(None, "Images per step, per GPU under torchrun (default: 128 with teachers; "
                                       "alone, the student's recipe).", short="-b", section="Optimisation")
    lr: float | None = opt(None, "Learning rate of the student (default: 1e-3 with teachers; alone, the student's "
                                 "recipe).", section="Optimisation")
    optimizer: str = opt("auto", "auto, adam, adamw or sgd (auto: adam with teachers; alone, the student's recipe).",
                         section="Optimisation")
    momentum: float = opt(0.9, "sgd: momentum.", section="Optimisation")
    weight_decay: float | None = opt(None, "Weight decay of the optimizer (default: 0 with teachers; alone, the "
                                           "student's recipe).", section="Optimisation")
    warmup_epochs: int | None = opt(None, "Epochs over whose steps the learning rate rises linearly from near 0 "
                                          "(default: 0 with teachers; alone, the student's recipe).",
                                    section="Optimisation")
    schedule: str = opt("cosine", "cosine, step or none.", section="Optimisation")
    step_size: int = opt(50, "step schedule: epochs between decays.", section="Optimisation")
    gamma: float = opt(0.1, "step schedule: decay factor.", section="Optimisation")
    augment: str = opt("auto", "auto, none, flip or pad-crop-flip. auto: pad-crop-flip without a teacher, none with "
                               "cached teachers (their rows describe one view; cached views are replayed instead); "
                               "explicit augmentation with teachers needs --allow-inconsistent.",
                       section="Optimisation")


@dataclass
class LoaderOptions:
    """Where rows and images live and how an epoch visits them (featcache.distill.loader, resident, runtime)."""

    workers: int | None = workers_field(section="Loader")
    cache_ram: str = opt("auto", "Budget for rows and images, e.g. 8G: teacher tables in RAM, the resident split "
                         "(auto: half of the available RAM).", runtime=True,
                         section="Loader")
    cache_mode: str = opt("auto", "auto, ram or disk (out of core).", runtime=True, section="Loader")
    shuffle: str = opt("auto", "auto, full, block or none.", section="Loader")
    # Images, labels and rows held on the device; None = auto: on the CPU when the split fits (see resident_default).
    resident: bool | None = opt(None, "Hold images, labels and teacher rows on the device, augmentation there too "
                                      "(default: on the CPU when the split fits in RAM; never on a GPU unless asked).",
                                negatable=True, runtime=True, section="Loader")


@dataclass
class RunOptions:
    """Where and how the run happens (featcache.distill.engine, featcache.util.runtime, featcache.cache.store)."""

    seed: int = opt(0, "Seed of the student's initialisation, the epoch order and augmentation.", recipe=False,
                    section="Run")
    device: str = device_field(runtime=True, section="Run")
    precision: str = opt("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.", section="Run")
    compile: str = opt("none", "torch.compile the training step: none, default, reduce-overhead (CUDA graphs), "
                               "max-autotune.", runtime=True, section="Run")
    cache_dir: Path | None = cache_dir_field(recipe=False, section="Run")
    stores: list[Path] = stores_field(recipe=False, section="Run")
    offline: bool = offline_field(section="Run")
    run_dir: Path | None = opt(None, "Where metrics and checkpoints go (default "
                                     "runs/<dataset>-<student>-<method>-s<seed>-<time>).", runtime=True, recipe=False,
                               section="Run")
    resume: bool = opt(False, "Continue the run in --run-dir from its last checkpoint.", runtime=True, recipe=False,
                       section="Run")
    log: list[str] = log_field(section="Run")
    tag: str = opt("", "A label for reports and run-directory names (recipes set it per [[distill]] block).",
                   cli=False, recipe=False)
    channels_last: bool = True  # a layout switch for experiments (library only)


AUGMENT_AUTO = "auto"
# A student trained alone has no cached view to keep consistent: the CIFAR recipe (pad S/8, random crop, flip) keeps a
# 4M-parameter network from learning the synthetic set's 2,000 images by heart (docs/students.md).
AUGMENT_ALONE = "pad-crop-flip"
OPTIMIZER_AUTO = "auto"
DEFAULT_EPOCHS = 30  # with teachers, and a student the registry does not know (a timm name, an nn.Module)
# The options resolved per run from the recipe (AloneRecipe's fields of the same names), "unset" being None or auto.
PER_STUDENT_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_epochs",
                      "zero_init_residual")
# What recipes get for options they leave out, where the command's default is resolved per run: a recipe measures what
# it says, so its student-alone arms train like its cached-teacher arms: un-augmented, Adam 1e-3, 30 epochs.
RECIPE_DEFAULTS: dict[str, Any] = {"augment": "none", "epochs": DEFAULT_EPOCHS, "batch_size": 128, "optimizer": "adam",
                                   "lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0, "zero_init_residual": False}


def student_recipe(student: str, alone: bool) -> Any:
    """The AloneRecipe a run resolves its unset options from: the registered student's own when it trains alone,
    else (with teachers, or a student the registry does not know) the papers' (featcache.models.registry)."""
    from featcache.models.registry import PAPERS_RECIPE, get_entry  # imports torch: only once a run is under way

    entry = get_entry("student", student) if alone else None
    return entry.alone if entry is not None else PAPERS_RECIPE


# The sections in the order --help lists them (a dataclass's fields follow its bases from the last to the first).
SECTIONS = (StudentOptions, DataOptions, TeacherOptions, LossOptions, KDOptions, TranslatorOptions, FitNetsOptions,
            AKAOptions, OptimOptions, LoaderOptions, RunOptions)


@dataclass
class DistillConfig(RunOptions, LoaderOptions, OptimOptions, AKAOptions, FitNetsOptions, TranslatorOptions,
                    KDOptions, LossOptions, TeacherOptions, DataOptions, StudentOptions):
    """Everything `featcache distill` takes: every section's fields, flat."""

    def section(self, cls: type[S]) -> S:
        """The typed view of one section (``config.section(KDOptions).temperature``)."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})  # type: ignore[arg-type]  # a dataclass

    def resolved(self) -> "DistillConfig":
        """This config with the defaults that depend on the run made concrete, as config.json records them and
        --resume and recipes compare them: ``--augment auto`` (the student alone augments; cached rows describe one
        view, so runs with teachers do not) and the PER_STUDENT_FIELDS left unset (the student's recipe alone, the
        papers' with teachers)."""
        changes: dict[str, Any] = {}
        if self.augment == AUGMENT_AUTO:
            changes["augment"] = "none" if self.teachers else AUGMENT_ALONE
        if self._unset():
            changes.update(self._from_recipe(student_recipe(self.student, alone=not self.teachers)))
        return replace(self, **changes) if changes else self

    def with_papers_defaults(self) -> "DistillConfig":
        """The PER_STUDENT_FIELDS left unset given the papers' values, as a run with teachers resolves them: settings
        compared side by side (a benchmark's student alone next to it with teachers) then train alike."""
        from featcache.models.registry import PAPERS_RECIPE

        return replace(self, **self._from_recipe(PAPERS_RECIPE)) if self._unset() else self

    def _unset(self) -> list[str]:
        return [name for name in PER_STUDENT_FIELDS if getattr(self, name) in (None, OPTIMIZER_AUTO)]

    def _from_recipe(self, recipe: Any) -> dict[str, Any]:
        """The unset PER_STUDENT_FIELDS as ``recipe`` (an AloneRecipe) gives them."""
        return {name: getattr(recipe, name) for name in self._unset()}

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else student_recipe(self.student, not self.teachers).epochs

    def resolved_method(self) -> str:
        return self.method or ("ts" if self.teachers else "ce")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, list):
                d[k] = [str(x) if isinstance(x, Path) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        d = as_recorded({k: v for k, v in d.items() if k in known})
        for k in ("data_root", "cache_dir", "run_dir"):
            if d.get(k) is not None:
                d[k] = Path(d[k])
        if d.get("stores"):
            d["stores"] = [Path(p) for p in d["stores"]]
        return cls(**d)
