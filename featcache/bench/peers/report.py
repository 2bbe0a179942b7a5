"""The figures of `featcache bench peers` from its runs: per arm, the goals, the view check (no torch here, so the
table and its arithmetic are tested without running anything)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VIEW_TOLERANCE = 1e-5  # a cached row "describes the seen view" when it equals the teacher on those pixels this close


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    tool: str  # torchdistill, featcache, or torch for the limit
    cached: bool  # a cache made once (fill / extract), then read by each student run
    limit: bool = False  # the bare loop: a bound on every training epoch, no student to evaluate


ARMS = (
    Arm("td-online", "torchdistill, teacher online", "torchdistill", False),
    Arm("td-cache", "torchdistill, cache_output", "torchdistill", True),
    Arm("td-cache-cl", "torchdistill, cache_output + channels_last", "torchdistill", True),
    Arm("fc-kd", "featcache extract + distill --method kd", "featcache", True),
    Arm("fc-online", "featcache distill --online", "featcache", False),
    Arm("bare", "limit: the student step in a bare PyTorch loop", "torch", False, limit=True),
)
ARM_KEYS = tuple(a.key for a in ARMS)
FAIR_PEER = "td-cache-cl"  # the peer at featcache's memory layout: the speed goal's reference
GOAL_SPEEDUP = 2.0


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def view_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample results of the view check → the shares: cached output equal to the teacher on the seen view (to
    VIEW_TOLERANCE), the same top class, and the same output as epoch 1 (what an index-keyed cache returns)."""
    n = len(rows)
    share = (lambda k: sum(1 for r in rows if k(r)) / n) if n else (lambda k: 0.0)
    return {"samples": n,
            "equal_share": share(lambda r: r["max_abs_diff"] <= VIEW_TOLERANCE),
            "top1_share": share(lambda r: r["top1_agrees"]),
            "stale_share": share(lambda r: r["same_as_epoch1"]),
            "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=0.0)}


def arm_summary(arm: Arm, runs: list[dict[str, Any]], students: int) -> dict[str, Any]:
    """One arm's figures over its repeats. A student run is a ``warm``/``run`` record; a cached arm's ``setup``
    record is its fill (torchdistill: a student run whose first epoch writes the cache) or its extract."""
    mine = [r for r in runs if r["arm"] == arm.key]
    student_runs = [r for r in mine if r["phase"] in ("warm", "run")]
    setups = [r for r in mine if r["phase"] in ("fill", "extract")]
    if not student_runs:
        return {"arm": arm.key, "label": arm.label, "runs": 0}
    epoch_s = [sum(r["train_seconds"]) / len(r["train_seconds"]) for r in student_runs]
    wall = median([r["wall_s"] for r in student_runs])
    setup = median([r["wall_s"] for r in setups]) if setups else 0.0
    fill_trains = any(r["phase"] == "fill" for r in setups)  # a fill run also trains one of the S students
    total = None if arm.limit else setup + (students - 1 if fill_trains else students) * wall
    accuracies = [r["accuracy"] for r in mine if r.get("accuracy") is not None]
    rss = [r["peak_rss_bytes"] for r in mine if r.get("peak_rss_bytes")]
    in_run = [r["run_rss_bytes"] for r in mine if r.get("run_rss_bytes")]
    caches = [r for r in mine if r.get("cache_bytes") is not None]
    return {
        "arm": arm.key, "label": arm.label, "runs": len(student_runs),
        "wall_s": wall, "train_s_per_epoch": median(epoch_s),
        "images_per_s": median([r["images_per_epoch"] / s for r, s in zip(student_runs, epoch_s, strict=True)]),
        "setup_s": setup if setups else None, "total_s": total,
        "peak_rss_bytes": [min(rss), max(rss)] if rss else None,
        "student_rss_bytes": max((r["peak_rss_bytes"] or 0) for r in student_runs) or None,
        # the peak before the interpreter's teardown (absent from runs recorded without it)
        "run_rss_bytes": [min(in_run), max(in_run)] if in_run else None,
        "student_run_rss_bytes": max((r.get("run_rss_bytes") or 0) for r in student_runs) or None,
        "cache_bytes": caches[-1]["cache_bytes"] if caches else None,
        "cache_files": caches[-1]["cache_files"] if caches else None,
        "accuracy": [min(accuracies), max(accuracies)] if accuracies else None,
        "accuracies": accuracies,
    }


def goals(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """featcache's cached arm against the peer at the same layout: speed per student run (≥ GOAL_SPEEDUP), peak
    RSS (≤), accuracy (the means differ by no more than the larger spread of the two over the seeds)."""
    ours, peer = arms.get("fc-kd", {}), arms.get(FAIR_PEER, {})
    if not ours.get("runs") or not peer.get("runs"):
        return {}
    speed = peer["wall_s"] / ours["wall_s"] if ours["wall_s"] else None
    epoch = peer["train_s_per_epoch"] / ours["train_s_per_epoch"] if ours["train_s_per_epoch"] else None
    rss_ours, rss_peer = ours.get("student_rss_bytes"), peer.get("student_rss_bytes")
    run_ours, run_peer = ours.get("student_run_rss_bytes"), peer.get("student_run_rss_bytes")
    a, b = ours.get("accuracies") or [], peer.get("accuracies") or []
    noise = max(max(a) - min(a), max(b) - min(b)) if len(a) > 1 and len(b) > 1 else None
    gap = abs(sum(a) / len(a) - sum(b) / len(b)) if a and b else None
    bare = arms.get("bare", {})
    limit = bare.get("train_s_per_epoch") if bare.get("runs") else None
    return {
        "speedup_per_student_run": speed, "speedup_met": speed is not None and speed >= GOAL_SPEEDUP,
        "speedup_per_epoch": epoch,
        # no tool's epoch beats the bare loop's: the most any can gain on the peer's epoch, and featcache's share
        "speedup_ceiling_per_epoch": peer["train_s_per_epoch"] / limit if limit else None,
        "featcache_epoch_vs_limit": limit / ours["train_s_per_epoch"] if limit and ours["train_s_per_epoch"] else None,
        "rss_ratio": rss_ours / rss_peer if rss_ours and rss_peer else None,
        "rss_met": bool(rss_ours and rss_peer and rss_ours <= rss_peer),
        "run_rss_ratio": run_ours / run_peer if run_ours and run_peer else None,
        "accuracy_gap": gap, "seed_noise": noise,
        "accuracy_met": None if noise is None or gap is None else gap <= noise,
    }


def summarize(runs: list[dict[str, Any]], students: int) -> dict[str, Any]:
    arms = {a.key: arm_summary(a, runs, students) for a in ARMS}
    return {"arms": arms, "goals": goals(arms)}


def _mib(x: int | None) -> str:
    return f"{x / 2**20:,.0f}" if x else "–"


def _range(values: list[float] | None, fmt: str) -> str:
    if not values:
        return "–"
    lo, hi = values
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"


def table_rows(summary: dict[str, Any], students: int) -> list[tuple[str, ...]]:
    """The measured table: a header, then one row per arm (the arm's label first: it names the row)."""
    head = ("arm", "wall / student run", "train s / epoch", "images/s", f"1 teacher + {students} students",
            "peak RSS MiB", "before teardown", "cache on disk", "accuracy")
    rows: list[tuple[str, ...]] = [head]
    for arm in ARMS:
        x = summary["arms"].get(arm.key) or {}
        if not x.get("runs"):
            rows.append((arm.label, *("not run",) * (len(head) - 1)))
            continue
        rss, in_run = x["peak_rss_bytes"], x.get("run_rss_bytes")
        cache = (f"{x['cache_files']:,} files, {x['cache_bytes'] / 1e6:,.1f} MB" if x.get("cache_bytes") is not None
                 else "–")
        rows.append((arm.label, f"{x['wall_s']:.1f} s", f"{x['train_s_per_epoch']:.2f}", f"{x['images_per_s']:,.0f}",
                     "–" if x["total_s"] is None else f"{x['total_s']:.0f} s", "–" if not rss else
                     (_mib(rss[0]) if rss[0] == rss[1] else f"{_mib(rss[0])}–{_mib(rss[1])}"),
                     "–" if not in_run else
                     (_mib(in_run[0]) if in_run[0] == in_run[1] else f"{_mib(in_run[0])}–{_mib(in_run[1])}"),
                     cache, _range(x["accuracy"], ".3f")))
    return rows


def goal_lines(summary: dict[str, Any]) -> list[str]:
    g = summary.get("goals") or {}
    if not g:
        return ["goals: not evaluated (featcache's cached arm or the fair-layout peer did not run)"]
    ok = {True: "met", False: "NOT met", None: "n/a (one repeat)"}
    speed, rss = g["speedup_per_student_run"], g["rss_ratio"]
    lines = [f"speed per student run vs the peer at the same layout (cache + channels_last): "
             f"{speed:.2f}x (goal >= {GOAL_SPEEDUP:g}x: {ok[g['speedup_met']]}); per training epoch "
             f"{g['speedup_per_epoch']:.2f}x",
             "peak RSS of a student run vs the peer's: " + (f"{rss:.2f}x (goal <= 1: {ok[g['rss_met']]})"
                                                           if rss else "n/a")
             + (f"; before the interpreter's teardown {g['run_rss_ratio']:.2f}x" if g.get("run_rss_ratio") else "")]
    if g.get("speedup_ceiling_per_epoch"):
        lines.append(f"the limit (the student step in a bare loop): the peer's epoch is "
                     f"{g['speedup_ceiling_per_epoch']:.2f}x its time, the most any tool can gain per epoch; "
                     f"featcache's epoch runs at {g['featcache_epoch_vs_limit']:.2f} of the limit")
    if g["accuracy_gap"] is not None:
        noise = f"{g['seed_noise']:.3f}" if g["seed_noise"] is not None else "n/a"
        lines.append(f"accuracy: mean gap {g['accuracy_gap']:.3f}, seed spread {noise} "
                     f"(equal within seed noise: {ok[g['accuracy_met']]})")
    return lines


def view_lines(views: dict[str, Any]) -> list[str]:
    """The second part's result: per tool, how often the cached output is the teacher's on the seen view."""
    lines = []
    for tool, v in views.items():
        if not v or not v.get("samples"):
            continue
        lines.append(f"{tool}: {v['equal_share']:.0%} of {v['samples']} cached outputs equal the teacher on the view "
                     f"the student sees in epoch 2 (to {VIEW_TOLERANCE:g}); same top class {v['top1_share']:.0%}; "
                     f"identical to epoch 1's {v['stale_share']:.0%}")
    return lines
