"""`featcache report`: compare finished runs — a table of test accuracies and a PNG of the accuracy curves.

A run directory (from `distill` or `train-teacher`) holds config.json, metrics.jsonl and, once finished,
summary.json. Runs that differ only in --seed are grouped into one row (mean ± std over seeds), the way the papers
report repeated runs: their recorded flags, method, teachers' caches, labels read and data (each split's identity and
fingerprint) must agree. Runs that would look alike in the table but differ in one of those stay in rows of their
own, marked with what differs, and a line under the table says what was kept apart. Plots need matplotlib
(``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from featcache.config.distill import as_recorded
from featcache.config.flags import runtime_fields
from featcache.errors import ConfigError
from featcache.runs import rundir
from featcache.runs.rundir import CONFIG, METRICS, SUMMARY
from featcache.util.fileio import printable


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
    facts: dict[str, Any] = field(default_factory=dict)  # what ``signature`` holds, by name (compared exactly)
    data: dict[str, Any] = field(default_factory=dict)  # each split's recorded identity ("train fingerprint": ...)
    apart: list[str] = field(default_factory=list)  # set by build_rows: what tells its row from look-alike rows

    def group(self) -> tuple:
        return (self.kind, self.signature)

    @property
    def mark(self) -> str:
        """What keeps this run's row apart from rows that look the same (``" [train fingerprint 0c31dd]"``)."""
        return f" [{', '.join(self.apart)}]" if self.apart else ""

    @property
    def arm(self) -> str:
        """The method column as shown: the label and its mark."""
        return self.label + self.mark


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
    # The classes the head covers are part of what a run is: two teachers of different class parts (train-teacher
    # --classes, which subsets the dataset rather than setting config.classes) are two arms, never one mean.
    head = info.get("head_classes")
    test_params = ((info.get("dataset") or {}).get("test") or {}).get("params") or {}
    part = test_params.get("class_subset") or config.get("classes")
    if part:
        label += f" [{len(part)} classes: {', '.join(part[:2])}{', …' if len(part) > 2 else ''}]"
    facts = _facts(info, kind, method, head)
    return RunRecord(
        run_dir=run_dir, kind=kind, model=config["student"], method=info.get("method", config.get("method") or "?"),
        teachers=teachers, teacher_keys=[t["key"] for t in info.get("teachers", [])], dataset=config["dataset"],
        seed=int(config.get("seed", 0)),
        epochs_planned=summary["epochs"] if summary else len(curve), curve=curve, best_acc=curve[best],
        best_epoch=best + 1, final_acc=curve[-1], finished=summary is not None,
        images_per_s=statistics.mean(rate) if rate else None, label=label,
        signature=json.dumps(facts, sort_keys=True, default=str), facts=facts, data=_data_facts(info),
        labels=_labels_cell(info.get("labels")),
    )


# What says where and how a run ran, never what it trained: a run differing in these alone is another seed's twin.
_WHERE = {"seed", "data_root"}
# The fields of a split's identity (datasets.base.ImageDataset.identity) that must agree within a row.
_DATA_FIELDS = ("name", "split", "num_samples", "num_classes", "ids_sha256", "labels_sha256", "classes_sha256",
                "params", "fingerprint")


def _facts(info: dict[str, Any], kind: str, method: str, head: Any) -> dict[str, Any]:
    """Everything recorded that changes what a run trains, except its seed: its flags (a field an older config.json
    lacks counts as what the run did: RECORDED_BEFORE, else the default), the method it resolved to, the caches it
    read, the classes its head covers and the labels it read (which samples, not how the flag spelled them)."""
    from featcache.config import DistillConfig, TeacherConfig

    cls = TeacherConfig if kind == "teacher" else DistillConfig
    config = {**_defaults(cls), **as_recorded(info["config"])}
    skip = runtime_fields(cls) | _WHERE | {"teachers", "method", "labels"}  # the three: as resolved, below
    facts = {k: v for k, v in config.items() if k not in skip}
    facts.update(method=method, teachers=[t.get("key") for t in info.get("teachers", [])], head_classes=head,
                 labels=_labels_fact(info.get("labels"), config.get("labels")))
    return json.loads(json.dumps(facts, default=str))


def _defaults(cls: type) -> dict[str, Any]:
    from dataclasses import MISSING, fields

    out = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    out.update({f.name: f.default_factory() for f in fields(cls) if f.default_factory is not MISSING})
    return out


def _labels_fact(record: dict | None, spec: Any) -> Any:
    """The training labels a run read: "all", or which samples (``ids_sha256`` of the labelled ids, so that two
    specs choosing the same samples are one arm and an ids file changed between seeds is two)."""
    if not record:
        return spec or "all"  # recorded before labels were: the flag says it
    if record.get("labeled") == record.get("total"):
        return "all"
    if not record.get("labeled"):
        return "none"
    return f"{record.get('labeled')} of {record.get('total')}, ids {record.get('ids_sha256')}"


def _data_facts(info: dict[str, Any]) -> dict[str, Any]:
    """Each split's recorded identity by field ("train fingerprint", "test ids_sha256", ...). A field an older
    config.json lacks is unknown, never a difference."""
    out: dict[str, Any] = {}
    for split, ident in sorted((info.get("dataset") or {}).items()):
        if isinstance(ident, dict):
            out.update({f"{split} {k}": ident[k] for k in _DATA_FIELDS if k in ident})
    return json.loads(json.dumps(out, default=str))


def _labels_cell(record: dict | None) -> str:
    if not record or record.get("labeled") == record.get("total"):
        return "all"
    return f"{record.get('labeled', 0):,} of {record.get('total', 0):,}"


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named directly, or found one level below a directory of runs (e.g. ``runs/``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        try:
            is_run, is_dir = (p / CONFIG).is_file(), p.is_dir()
        except OSError as exc:  # a name no file system takes, no permission to look
            raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc}); name a run directory or a folder of "
                              "them") from None
        if is_run:
            out.append(p)
        elif is_dir:
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
    notes: list[str] = field(default_factory=list)  # what was kept apart from this row (said under the table)

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
            "method": (r.arm or r.method) if r.kind == "student" else "fine-tune" + r.arm[len(r.method):],
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
        for name, key in zip(r.teachers, r.teacher_keys, strict=False):
            keys.setdefault(name.split("@")[0], set()).add(key)
    for r in records:
        r.teachers = [f"{n.split('@')[0]}@{k.rsplit('-', 1)[-1][:6]}" if len(keys[n.split('@')[0]]) > 1 else n
                      for n, k in zip(r.teachers, r.teacher_keys, strict=False)] + r.teachers[len(r.teacher_keys):]


def build_rows(records: list[RunRecord], group_seeds: bool = True) -> list[Row]:
    """The table's rows: runs whose recorded configuration and data agree except for the seed share a row (a data
    field one run's config.json lacks is not a difference); look-alike rows are marked with what tells them apart."""
    _tell_caches_apart(records)
    rows: list[Row] = []
    arms: dict[Any, list[Row]] = {}
    for i, r in enumerate(records):
        arm = arms.setdefault(r.group() if group_seeds else i, [])
        row = next((x for x in arm if all(_agree(r.data, y.data) for y in x.runs)), None)
        if row is None:
            row = Row()
            arm.append(row)
            rows.append(row)
        row.runs.append(r)
    _tell_rows_apart(rows)
    return rows


def _agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _tell_rows_apart(rows: list[Row]) -> None:
    """Rows the table would show alike (same model, method, teachers, labels, dataset) but whose runs differ in a
    recorded flag or data: mark each with its values of what differs, and note the split under the table."""
    for row in rows:
        row.notes = []
        for r in row.runs:
            r.apart = []
    alike: dict[tuple, list[Row]] = {}
    for row in rows:
        r = row.first
        alike.setdefault((r.kind, r.model, r.label, tuple(r.teachers), r.labels, r.dataset), []).append(row)
    for group in alike.values():
        if len(group) < 2:
            continue
        facts = [row.first.facts for row in group]
        data = [{k: v for r in row.runs for k, v in r.data.items()} for row in group]
        # A flag one run's record lacks is a difference (an unknown one); a data field, only where both record it.
        differ = [k for k in sorted({k for v in facts for k in v}) if len({_key(v.get(k, "—")) for v in facts}) > 1]
        differ += [k for k in sorted({k for v in data for k in v}) if len({_key(v[k]) for v in data if k in v}) > 1]
        if not differ:
            continue
        values = [{**d, **f} for d, f in zip(data, facts, strict=True)]
        for row, v in zip(group, values, strict=True):
            shown = [f"{printable(k)} {_short(v.get(k, '—'))}" for k in differ[:2]] + (["…"] if len(differ) > 2 else [])
            for r in row.runs:
                r.apart = shown
        r, n = group[0].first, sum(len(x.runs) for x in group)
        group[0].notes.append(f"kept apart: {n} runs of {printable(r.model)} {printable(r.label)} on "
                              f"{printable(r.dataset)} differ in {', '.join(map(printable, differ))}: "
                              f"{len(group)} rows, each marked with its own value")


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> str:
    """A recorded value short enough for a table cell: a hash by its first 6 digits, anything else cut at 24."""
    if isinstance(value, str) and len(value) >= 16 and all(c in "0123456789abcdef" for c in value):
        return value[:6]
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return printable(text, 24)


def kept_apart(rows: list[Row]) -> list[str]:
    """The lines that say which runs the table keeps in separate rows although they look alike."""
    return [note for row in rows for note in row.notes]


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
    notes = [f"- {note}" for note in kept_apart(rows)]  # after a blank line: a line right below would join the table
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def plot_curves(records: list[RunRecord], path: str | Path, title: str | None = None, flag: str = "--plot") -> Path:
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
        who = f"{r0.model} {(r0.arm or r0.method) if r0.kind == 'student' else 'teacher' + r0.arm[len(r0.method):]}"
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
    _save(fig, path, flag)
    plt.close(fig)
    return path


def _save(fig, path: Path, flag: str) -> None:
    """The figure rendered in memory, then written like every output (fileio.write_atomic: a new temporary file,
    renamed; a FIFO, device or link at ``path`` refused); the format is the file's suffix (png by default)."""
    import io

    from featcache.util.fileio import write_atomic

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix[1:].lower() or "png", bbox_inches="tight")
    except ValueError as exc:  # a suffix matplotlib cannot write
        raise ConfigError(f"{flag} {path}: {exc}; name a .png, .pdf or .svg file") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: its folder cannot be made ({exc.strerror or exc})") from None
    write_atomic(path, buffer.getvalue(), flag=flag)
