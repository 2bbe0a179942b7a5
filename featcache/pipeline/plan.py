"""The plan of a recipe: every stage with its state (done, resume, run, waits, stale) and the configs it runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import AbstractSet, Any

from featcache.config import DistillConfig, TeacherConfig
from featcache.config.distill import RECIPE_DEFAULTS
from featcache.config.flags import runtime_fields
from featcache.errors import ConfigError
from featcache.pipeline.jobs import DistillJob, TeacherSpec, distill_jobs
from featcache.pipeline.recipe import Pipeline
from featcache.runs.rundir import CONFIG, LAST, SUMMARY
from featcache.util.fileio import printable

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


def _differences(expected: Any, recorded: dict[str, Any], skip: AbstractSet[str] = frozenset()) -> list[str]:
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
    return any(t.base in d.teachers and d.options.get("noise_per_batch") for d in p.distill)


def extract_config(p: Pipeline, t: TeacherSpec, cache_dir: Path | None, device: str, workers: int | None):
    from featcache.extract import ExtractConfig

    opts = dict(t.extract)
    if _needs_noise(p, t) and not opts.get("noise"):
        raise ConfigError(f"recipe {p.path}: a distill run uses noise_per_batch with teacher {t.name!r}; "
                          "set its extract.noise")
    return ExtractConfig(teacher=t.teacher, dataset=p.dataset, data_root=p.data_root,
                         dataset_options=dict(p.dataset_options), weights=_teacher_weights(p, t), cache_dir=cache_dir,
                         stores=list(p.stores), device=device, workers=workers, **opts)



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
                         tag=job.spec.tag, stores=list(p.stores), **runtime,
                         **{**RECIPE_DEFAULTS, **job.spec.options})


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
    from featcache.runs.rundir import read_config
    from featcache.teach import default_lr, validate

    info = read_config(run_dir)
    tc = teacher_config(p, t, run_dir=run_dir)
    record = _teacher_record(run_dir)
    done_init = record.get("init")  # what --init resolved to when it trained
    out = _draw_differs(tc, record.get("draw"), info.get("threads"))
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


def _draw_differs(tc: TeacherConfig, draw: Any, threads: Any) -> list[str]:
    """What changes a teacher's bits beyond its flags: the thread count the recipe pins (against teacher.pt's
    record, else the loop's config.json of a half-trained one) and the torch/torchvision versions it trained with
    (recorded since teacher.pt records its draw; an older record is not compared)."""
    import torch
    import torchvision

    draw = draw if isinstance(draw, dict) else {}
    out = []
    done = draw.get("threads", threads)
    if tc.threads is not None and isinstance(done, int) and done != tc.threads:
        out.append(f"threads {done} → {tc.threads}")
    for name, now in (("torch", str(torch.__version__)), ("torchvision", str(torchvision.__version__))):
        if isinstance(draw.get(name), str) and draw[name] != now:
            out.append(f"{name} {printable(draw[name], 24)} → {now}")
    return out


def job_differs(p: Pipeline, job: DistillJob, run_dir: Path, keys: dict[str, str] | None) -> list[str]:
    """What a distill run did that the recipe no longer asks; ``keys``: the teachers' cache keys as planned now
    (a teacher missing from it is trained anew first), or None not to compare the caches."""
    from featcache.runs.rundir import read_config

    info = read_config(run_dir)
    recorded, expected = info["config"], job_config(p, job)
    ids = _is_ids(recorded.get("labels")) and _is_ids(expected.labels)
    out = _differences(expected, recorded, skip={"teachers", "labels"} if ids else {"teachers"})
    if ids:
        out += _ids_file_differs(p, recorded["labels"], expected.labels, info.get("labels"))
    if keys is not None and job.teachers:
        anew = [t for t in job.teachers if t not in keys]
        if anew:
            out.append(f"teacher {anew[0]!r} is trained anew first")
        elif _plain(recorded.get("teachers")) != [keys[t] for t in job.teachers]:
            out.append(f"teachers {_show(recorded.get('teachers'))} → {_show([keys[t] for t in job.teachers])}")
    return out


def _is_ids(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith("ids:")


def _ids_file_differs(p: Pipeline, before: str, now: str, record: Any) -> list[str]:
    """``labels = "ids:FILE"``: what the run read is the file's contents, not its path: a run is stale when the file
    was edited since (its recorded sha256). A run whose record lacks the hash is compared by the path, a relative
    one taken from the working directory or the recipe's folder (where it may have been resolved from)."""
    from featcache.distill.labels import ids_file, read_ids_file

    path = ids_file(now)
    digest = record.get("file_sha256") if isinstance(record, dict) else None
    if isinstance(digest, str):
        now_digest = read_ids_file(path)[1]
        return [] if now_digest == digest else [f"labels: ids file {printable(str(path))} edited since the run "
                                                f"(sha256 {printable(digest[:12])}… → {now_digest[:12]}…)"]
    old = ids_file(before)
    folders = [Path.cwd()] + ([Path(p.path).resolve().parent] if p.path else [])
    if any(os.path.abspath(f / old) == os.path.abspath(path) for f in folders):
        return []
    return [f"labels {_show(before)} → {_show(now)}"]


def _amalgamate_differs(p: Pipeline, keys: dict[str, str], seed: int) -> list[str]:
    """What one seed's finished amalgamation nets did that the recipe's [amalgamate] table no longer asks (each
    net's config built as featcache.distill.amalgamate builds it)."""
    from featcache.distill.amalgamate import AmalgamateConfig
    from featcache.runs.rundir import read_config

    a, root = p.amalgamate, p.amalgamate_dirs()[seed]
    nets = sorted(d for d in root.glob("*") if _has_results(d)) if root.is_dir() else []
    if not nets:
        return []
    anew = [t for t in a["teachers"] if t not in keys]
    if anew:
        return [f"source teacher {anew[0]!r} is trained anew first"]
    student, epochs = a.get("student", AmalgamateConfig.student), a.get("epochs", AmalgamateConfig.epochs)
    # As the amalgamation builds its runs (featcache.distill.amalgamate): every one learns from teachers, so what it
    # leaves unset resolves to the papers' setting ("teachers" itself is compared below, by source cache).
    base = dict(dataset=p.dataset, data_root=p.data_root, dataset_options=dict(p.dataset_options), method="aka",
                seed=seed, teachers=["(the sources)"],
                **{"augment": RECIPE_DEFAULTS["augment"], "lr": a.get("lr", AmalgamateConfig.lr),
                   "batch_size": a.get("batch_size", AmalgamateConfig.batch_size), **a.get("options", {})})
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
        out += [f"{d.name}: {x}" for x in _differences(expected.resolved(), recorded, skip={"teachers"})]
        if d.name != "target" and not set(recorded.get("teachers") or []) <= sources:
            out.append(f"{d.name}: trained from other source caches")
    return out


def _teacher_stages(p: Pipeline) -> list[Stage]:
    """The stages of the teachers trained here, each with its state."""
    from featcache.teach import TEACHER_FILE

    stages = []
    for t in p.teachers:
        if t.train is not None:
            d = _teacher_dir(p, t)
            what = f"train-teacher {t.teacher}" + (f", seed {t.draw}" if t.draw is not None else "")
            stage = Stage("teacher", t.name, _run_state(d, TEACHER_FILE), d, what, t)
            if stage.state != "run" and (d / CONFIG).is_file():
                stage.differs = _teacher_differs(p, t, d)
            if stage.differs:
                stage.state, stage.detail = "stale", f"{stage.detail}: {'; '.join(stage.differs)}"
            stages.append(stage)
    return stages


def plan(p: Pipeline, *, cache_dir: Path | None = None, device: str = "auto",
         workers: int | None = None) -> list[Stage]:
    """Every stage with its state. A stage whose outputs exist but no longer match the recipe (config.json records
    other values than the recipe now asks: an edited option, a retrained teacher) is ``stale``, with what differs;
    run_pipeline refuses to go on while any is."""
    from featcache.extract import plan_extract

    stages = _teacher_stages(p)
    retrained = {s.name for s in stages if s.state != "done"}  # teachers whose teacher.pt is missing or stale
    keys: dict[str, str] = {}  # each teacher's cache key, where it can be planned now
    draws: dict[str, str] = {}  # each teacher trained here: which draw (its seed, its weights' hash)
    for t in p.teachers:
        cfg = extract_config(p, t, cache_dir, device, workers)
        source = _weights_source(p, t)
        if source is not None:
            seed = (next(x for x in p.teachers if x.name == source).train or {}).get("seed", TeacherConfig.seed)
            draws[t.name] = f"{t.name} seed {seed}, trained first"
        if source is not None and (source in retrained or not Path(cfg.weights).is_file()):
            stages.append(Stage("extract", t.name, "waits", None, "after its teacher is trained", t))
            continue
        ep = plan_extract(cfg)
        keys[t.name] = ep.key
        if source is not None:
            draws[t.name] = f"{t.name} seed {seed}, weights {(ep.weights.sha256 or '?')[:8]}"
        from featcache.cache import CacheStore

        copies = CacheStore(cache_dir, p.stores).copies(ep.key)  # a complete copy in any store will be reused
        done = any(e.manifest is not None and e.manifest.complete for e in copies)
        stages.append(Stage("extract", t.name, "done" if done else "run", ep.directory, ep.key, t))
    for job in distill_jobs(p.distill):
        rd = p.runs_dir / job.name
        shown = [draws[t] for t in job.teachers if t in draws]
        stage = Stage("distill", job.name, _run_state(rd), rd, f"teacher draw {'; '.join(shown)}" if shown else "", job)
        if _has_results(rd):
            stage.differs = job_differs(p, job, rd, keys)
        if stage.differs:
            stage.state, stage.detail = "stale", "; ".join(filter(None, [stage.detail, *stage.differs]))
        stages.append(stage)
    for seed, root in (p.amalgamate_dirs() if p.amalgamate is not None else {}).items():
        target = root / "target"
        stage = Stage("amalgamate", f"components → target, seed {seed}", _run_state(target), target,
                      f"aka over {', '.join(p.amalgamate['teachers'])}", seed)
        stage.differs = _amalgamate_differs(p, keys, seed)
        if stage.differs:
            stage.state, stage.detail = "stale", f"{stage.detail}: {'; '.join(stage.differs)}"
        stages.append(stage)
    stages.append(Stage("report", p.name, "run", p.runs_dir, ", ".join(f"{k}={v}" for k, v in p.report.items())))
    return stages


def describe_plan(stages: list[Stage]) -> list[list[str]]:
    """The plan as rows: each stage's name (its run directory's, or the teacher's), kind, state and detail."""
    return [[s.name, s.kind, s.state, s.detail] for s in stages]


def stale_message(p: Pipeline, stale: list[Stage]) -> str:
    """One line: which finished stages no longer match the recipe, what differs, and how to go on."""
    shown = "; ".join(f"{s.kind} {s.name}: {', '.join(s.differs[:3])}{', …' if len(s.differs) > 3 else ''}"
                      for s in stale[:3])
    more = f"; and {len(stale) - 3} more" if len(stale) > 3 else ""
    return (f"{'recipe ' + str(p.path) if p.path else 'pipeline ' + p.name}: {len(stale)} stage(s) already have "
            f"outputs made with other values than the recipe now asks ({shown}{more}); set the values they were "
            f"made with in the recipe to keep them (a default of a newer featcache differs too), delete those run "
            f"directories, or pass --rerun-stale to move them to {p.runs_dir / STALE_DIR} and run them again")


def move_stale(p: Pipeline, stale: list[Stage]) -> list[tuple[Path, Path]]:
    """Move the outputs of stale stages under RUNS/.stale/ (nothing is deleted), each after taking its run
    directories' locks, so that a run another process is training is never moved from under it."""
    import datetime as _dt

    from featcache.errors import RunLockedError
    from featcache.util.locks import DirLock

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = []
    for s in stale:
        src = s.run_dir.parent if s.kind == "amalgamate" else s.run_dir  # the amalgamation's nets move together
        name = {"teacher": f"teacher-{s.name}", "amalgamate": src.name}.get(s.kind, s.name)
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


