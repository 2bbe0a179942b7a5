"""Teacher draws in a report: which trained teacher each run learnt from, and the spread between teachers.

A teacher trained with another seed (or on another thread count, torch, CPU) is another draw: other weights, so
other caches, so its students' runs land in rows of their own. Two caches are draws of one teacher when everything
that made them agrees but the weights (the cache's identity without them), and their weights are the teacher.pt of
train-teacher runs whose configurations agree but the seed. The rows of one arm that differ only in their teachers'
draws are then summarised together: mean ± std over all their runs, and the std of the per-teacher means (the
between-teacher spread) apart, since a student seed's "± std" says nothing about another teacher.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from featcache.config.flags import runtime_fields
from featcache.errors import FeatcacheError
from featcache.runs.report import percent
from featcache.runs.rundir import CONFIG, read_config
from featcache.util.fileio import printable


@dataclass(frozen=True)
class Draw:
    """One cache's teacher draw."""

    seed: int  # the teacher's training seed
    sha: str  # its weights' sha256
    family: str  # what the cache is but for the draw (equal for every draw of one teacher)

    @property
    def label(self) -> str:
        return f"seed {self.seed}, {self.sha[:8]}"


def teacher_draws(keys: set[str], cache_dir: Path | None = None, stores: Sequence[Path] = ()) -> dict[str, Draw]:
    """The teacher draw of each cache key that can be told: its manifest is in a local store and its weights are
    a train-teacher run's teacher.pt still at hand. Remote stores are not read (a report never downloads)."""
    from featcache.cache.store import CacheStore

    try:
        store = CacheStore(cache_dir, list(stores), offline=True)
    except FeatcacheError:
        return {}
    out = {}
    for key in sorted(keys):
        manifest = next((e.manifest for e in store.copies(key) if e.manifest is not None), None)
        draw = _draw(manifest) if manifest is not None else None
        if draw is not None:
            out[key] = draw
    return out


def _draw(manifest: Any) -> Draw | None:
    weights = manifest.teacher.weights
    if weights.source != "file" or not weights.sha256:
        return None
    run = Path(weights.ref).parent  # a teacher.pt lies in the train-teacher run that wrote it
    try:
        info = read_config(run) if (run / CONFIG).is_file() else None
    except FeatcacheError:
        return None
    if info is None or info.get("kind") != "teacher":
        return None
    from featcache.config import DistillConfig

    config = {k: v for k, v in info["config"].items() if k not in runtime_fields(DistillConfig) | {"seed", "data_root"}}
    teacher = {k: v for k, v in (manifest.identity.get("teacher") or {}).items() if k != "weights"}
    family = json.dumps({"cache": {**manifest.identity, "teacher": teacher}, "teacher run": config,
                         "data": info.get("dataset")}, sort_keys=True, default=str)
    return Draw(int(info["config"].get("seed", 0)), weights.sha256, family)


@dataclass
class DrawArm:
    """Rows that differ only in their teachers' draws: one arm over several teachers."""

    rows: list[Any] = field(default_factory=list)  # report.Row, one per teacher draw

    def cells(self) -> dict[str, str]:
        r = self.rows[0].first
        best = [x.best_acc for row in self.rows for x in row.runs]
        final = [x.final_acc for row in self.rows for x in row.runs]
        means = [statistics.mean(x.best_acc for x in row.runs) for row in self.rows]
        return {
            "model": r.model, "method": r.label, "teachers": ", ".join(n.split(" (")[0] for n in r.teachers),
            "draws": str(len(self.rows)), "runs": str(len(best)),
            "best acc %": percent(best), "between teachers": f"{100 * statistics.stdev(means):.2f}",
            "final acc %": percent(final),
        }


DRAW_COLUMNS = ("model", "method", "teachers", "draws", "runs", "best acc %", "between teachers", "final acc %")


def draw_arms(rows: list[Any], draws: dict[str, Draw]) -> list[DrawArm]:
    """The arms over several teacher draws among the report's rows; each such row's teachers are named by their
    draw ("r18 (seed 1, 3f9a0c12)"), so the table says which teacher each row learnt from."""
    arms: dict[str, DrawArm] = {}
    for row in rows:
        r = row.first
        if r.kind != "student" or not r.teacher_keys or not all(k in draws for k in r.teacher_keys):
            continue
        facts = {**r.facts, "teachers": [draws[k].family for k in r.teacher_keys]}
        data = json.dumps(r.data, sort_keys=True, default=str)
        arm = arms.setdefault(json.dumps(facts, sort_keys=True, default=str) + data, DrawArm())
        arm.rows.append(row)
    out = [a for a in arms.values() if len({tuple(x.first.teacher_keys) for x in a.rows}) > 1]
    for arm in out:
        for row in arm.rows:
            for x in row.runs:
                x.teachers = [f"{n.split('@')[0]} ({printable(draws[k].label)})"
                              for n, k in zip(x.teachers, x.teacher_keys, strict=False)]
    return out


def markdown_draws(arms: list[DrawArm]) -> str:
    """The table over teacher draws, for the markdown report (empty without one)."""
    if not arms:
        return ""
    lines = ["| " + " | ".join(DRAW_COLUMNS) + " |",
             "| " + " | ".join("---:" if c.endswith("%") or c in ("draws", "runs", "between teachers") else "---"
                               for c in DRAW_COLUMNS) + " |"]
    lines += ["| " + " | ".join(a.cells()[c] for c in DRAW_COLUMNS) + " |" for a in arms]
    return ("\n## Over teacher draws\n\nMean ± std over all runs (every teacher draw × student seed); between "
            "teachers: the std of the teacher draws' mean best accuracies.\n\n" + "\n".join(lines) + "\n")
