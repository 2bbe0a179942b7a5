"""`featcache report`: compare finished runs — a table of test accuracies and a PNG of the accuracy curves.

A run directory (from `distill` or `train-teacher`) holds config.json, metrics.jsonl and, once finished,
summary.json. Runs that differ only in --seed are grouped into one row (mean ± std over seeds), the way the papers
report repeated runs. Plots need matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from featcache.config.distill import as_recorded
from featcache.errors import ConfigError
from featcache import rundir
from featcache.rundir import CONFIG, METRICS, SUMMARY


@dataclass
class RunRecord:
    """What a report needs from one run directory."""

    run_dir: Path
    kind: str  # "student" or "teacher"
    model: str
    method: str
    teachers: list[str]  # teacher names (name@hash where the report holds two caches of one teacher)
    dataset: str
    seed: int
    epochs_planned: int
    curve: list[float]  # test accuracy per finished epoch
    best_acc: float
    best_epoch: int
    final_acc: float
    finished: bool
    images_per_s: float | None = None
    label: str = ""  # the method column: method, plus tag / noise images where set
    labels: str = "all"  # the training labels it read (--labels): "all", or "3,000 of 50,000"
    signature: str = ""  # the run's whole configuration except its seed and where it ran
    teacher_keys: list[str] = field(default_factory=list)  # the caches read, in the order of ``teachers``

    def group(self) -> tuple:
        return (self.kind, self.signature)


def percent(values: list[float]) -> str:
    """Accuracies (0-1) as a percentage, over several seeds ``mean ± std`` (the sample std, as every table here)."""
    sd = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.2f}{sd}"


def load_record(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    info = rundir.read_config(run_dir)
    config = info["config"]
    records = [r for r in rundir.read_metrics(run_dir) if isinstance(r.get("test_acc"), (int, float))]
    if not records:
        raise ConfigError(f"{run_dir / METRICS}: no finished epoch yet; wait for the run or drop {run_dir} from the "
                          "report")
    curve = [float(r["test_acc"]) for r in records]
    best = max(range(len(curve)), key=lambda i: curve[i])
    summary = rundir.read_json(run_dir / SUMMARY, "run summary") if (run_dir / SUMMARY).is_file() else None
    kind = info.get("kind", "student")
    teachers = [t.get("teacher", t["key"]) for t in info.get("teachers", [])]
    rate = [r["images_per_s"] for r in records if r.get("images_per_s")]
    method = info.get("method", config.get("method") or "?")
    label = method
    if config.get("noise_per_batch"):
        label += f" +{config['noise_per_batch']} noise/batch"
    if config.get("tag"):
        label += f" [{config['tag']}]"
    ignore = {"seed", "run_dir", "resume", "workers", "device", "cache_dir", "data_root", "log"}
    # The classes the head covers are part of what a run is: two teachers of different class parts (train-teacher
    # --classes, which subsets the dataset rather than setting config.classes) are two arms, never one mean.
    head = info.get("head_classes")
    test_params = ((info.get("dataset") or {}).get("test") or {}).get("params") or {}
    part = test_params.get("class_subset") or config.get("classes")
    if part:
        label += f" [{len(part)} classes: {', '.join(part[:2])}{', …' if len(part) > 2 else ''}]"
    recorded = as_recorded(config)  # a run recorded before a field existed is the same arm as one setting its old value
    signature = json.dumps({**{k: v for k, v in recorded.items() if k not in ignore},
                            "teacher_keys": [t["key"] for t in info.get("teachers", [])], "head_classes": head},
                           sort_keys=True, default=str)
    return RunRecord(
        run_dir=run_dir, kind=kind, model=config["student"], method=info.get("method", config.get("method") or "?"),
        teachers=teachers, teacher_keys=[t["key"] for t in info.get("teachers", [])], dataset=config["dataset"],
        seed=int(config.get("seed", 0)),
        epochs_planned=summary["epochs"] if summary else len(curve), curve=curve, best_acc=curve[best],
        best_epoch=best + 1, final_acc=curve[-1], finished=summary is not None,
        images_per_s=statistics.mean(rate) if rate else None, label=label, signature=signature,
        labels=_labels_cell(info.get("labels")),
    )


def _labels_cell(record: dict | None) -> str:
    if not record or record.get("labeled") == record.get("total"):
        return "all"
    return f"{record.get('labeled', 0):,} of {record.get('total', 0):,}"


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named directly, or found one level below a directory of runs (e.g. ``runs/``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / CONFIG).is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / CONFIG).is_file())
            if not found:
                raise ConfigError(f"{p}: neither a run directory nor a directory of runs (no {CONFIG} found)")
            out.extend(found)
        else:
            raise ConfigError(f"{p}: no such run directory")
    return out


@dataclass
class Row:
    """One line of the table: a run, or the runs that differ only in their seed."""

    runs: list[RunRecord] = field(default_factory=list)

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    def cells(self) -> dict[str, str]:
        r = self.first
        epochs = {len(x.curve) for x in self.runs}
        planned = {x.epochs_planned for x in self.runs}
        ep = "/".join(map(str, sorted(epochs))) + ("" if epochs == planned else f" of {max(planned)}")
        return {
            "model": r.model + (" (teacher)" if r.kind == "teacher" else ""),
            "method": (r.label or r.method) if r.kind == "student" else "fine-tune" + r.label[len(r.method):],
            "teachers": ", ".join(r.teachers) or "—",
            "labels": r.labels,
            "dataset": r.dataset,
            "seeds": str(len(self.runs)),
            "epochs": ep,
            "best acc %": percent([x.best_acc for x in self.runs]),
            "final acc %": percent([x.final_acc for x in self.runs]),
        }


COLUMNS = ("model", "method", "teachers", "labels", "dataset", "seeds", "epochs", "best acc %", "final acc %")


def _tell_caches_apart(records: list[RunRecord]) -> None:
    """Where arms read different caches of one teacher (float16 vs int8 rows, another view...), name each cache
    by its key's hash, so the table and the curves' legend do not show two arms as the same."""
    keys: dict[str, set[str]] = {}
    for r in records:
        for name, key in zip(r.teachers, r.teacher_keys):
            keys.setdefault(name.split("@")[0], set()).add(key)
    for r in records:
        r.teachers = [f"{n.split('@')[0]}@{k.rsplit('-', 1)[-1][:6]}" if len(keys[n.split('@')[0]]) > 1 else n
                      for n, k in zip(r.teachers, r.teacher_keys)] + r.teachers[len(r.teacher_keys):]


def build_rows(records: list[RunRecord], group_seeds: bool = True) -> list[Row]:
    _tell_caches_apart(records)
    rows: dict[Any, Row] = {}
    for i, r in enumerate(records):
        key = r.group() if group_seeds else i
        rows.setdefault(key, Row()).runs.append(r)
    return list(rows.values())


def columns(rows: list[Row]) -> tuple[str, ...]:
    """The table's columns: "labels" only when a run read the labels of a subset (--labels)."""
    if any(r.first.labels != "all" for r in rows):
        return COLUMNS
    return tuple(c for c in COLUMNS if c != "labels")


def markdown_table(rows: list[Row]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |",
             "| " + " | ".join("---:" if c.endswith("%") else "---" for c in cols) + " |"]
    for row in rows:
        cells = row.cells()
        lines.append("| " + " | ".join(cells[c] for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(records: list[RunRecord], path: str | Path, title: str | None = None) -> Path:
    """Test accuracy per epoch of every run (like Figure 6 of the multi-teacher paper): one colour per arm, its seeds
    as thin lines and their mean as a thick one."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install -e \".[plot]\" (or pip install matplotlib), or drop --plot"
        ) from None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    # One colour per arm (runs that differ only in their seed): each seed a thin line, their mean a thick one.
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, row in enumerate(build_rows(records)):
        colour = colours[k % len(colours)]
        r0 = row.runs[0]
        who = f"{r0.model} {(r0.label or r0.method) if r0.kind == 'student' else 'teacher' + r0.label[len(r0.method):]}"
        if r0.teachers:
            who += " ← " + "+".join(r0.teachers)
        for r in row.runs:
            ax.plot(range(1, len(r.curve) + 1), [100 * a for a in r.curve], color=colour, linewidth=0.7, alpha=0.5)
        length = min(len(r.curve) for r in row.runs)
        if length:
            mean = [100 * sum(r.curve[e] for r in row.runs) / len(row.runs) for e in range(length)]
            seeds = f"mean of {len(row.runs)} seeds" if len(row.runs) > 1 else f"seed {r0.seed}"
            ax.plot(range(1, length + 1), mean, color=colour, linewidth=2.0, label=f"{who} ({seeds})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "test accuracy per epoch", fontsize=10, wrap=True)
    # Below the axes, never over a curve (inside, "best" still covered one once there were 7 arms).
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
