"""`featcache demo`: the whole job on the built-in synthetic dataset, offline, on the CPU, in a few minutes.

It is an ordinary pipeline (featcache/pipeline.py) defined here rather than in a TOML file: fine-tune a small
teacher (``convnet``, widths 32/64/128) on a larger synthetic training set of the same classes — the way the papers'
teachers come pre-trained on more data than the student sees — extract it once on the student's data, distill a
``convnet_small`` student (the same body at half width) alone (``ce``) and with the cached teacher (``ts``,
TS-Learning Eq. 5) over several seeds, and report the comparison table, the accuracy curves and the gain per seed.

Why these sizes (docs/results.md lists every setting tried): the student must be able to imitate its teacher. A
LeNet-5 cannot (its flattened 5×5 map is not translation invariant) and gained nothing from the teacher in any
setting, as the TS-Learning paper also reports for LeNet-5 on CIFAR-10; ImageNet students are too slow on a laptop
CPU. ``convnet_small`` trained on 1,000 labelled images overfits or stalls by itself, while regressing the
teacher's 128-d features (λ_mse = 10) gives it the teacher's shape representation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featcache.pipeline import Pipeline, distill_runs, parse_pipeline

DEMO_SEEDS = (0, 1, 2)
DEMO_THREADS = 2
SIZE = 24  # pixels: the shapes stay distinct, and the whole demo fits in 90 s on 2 cores (32 px took 3 min)
ALONE, WITH_TEACHER = "ce", "ts"


def demo_recipe(runs_dir: Path, *, scale: float = 1.0, seeds: tuple[int, ...] = DEMO_SEEDS) -> Pipeline:
    """The demo as a Pipeline. ``scale`` < 1 shrinks data and epochs (tests use it to check the wiring)."""

    def n(x: int) -> int:
        return max(8, int(x * scale))

    classes = 4
    student_data = {"num_train": n(1000), "num_test": n(400), "num_classes": classes}
    teacher_data = {"num_train": n(4000), "num_test": n(400), "num_classes": classes}
    student = {"epochs": max(1, round(8 * scale)), "batch_size": 64, "lr": 3e-3, "lambda_mse": 10.0}
    data: dict[str, Any] = {
        "pipeline": {"name": "demo",
                     "description": "synthetic shapes: a small ConvNet student alone vs with a cached ConvNet teacher"},
        "dataset": {"name": "synthetic", "options": student_data},
        "teachers": [{
            "teacher": "convnet",
            "train": {"epochs": max(1, round(5 * scale)), "init": "random", "batch_size": 64, "lr": 1e-3,
                      "augment": "none", "image_size": SIZE, "dataset_options": teacher_data},
            "extract": {"image_size": SIZE},
        }],
        "distill": [{"students": ["convnet_small"], "methods": [ALONE, WITH_TEACHER], "teachers": ["convnet"],
                     "seeds": list(seeds), "options": student}],
        "report": {"title": "featcache demo: convnet_small on synthetic shapes, alone vs with a cached teacher",
                   "markdown": "report.md", "plot": "curves.png"},
    }
    return parse_pipeline(data, runs_dir=runs_dir)


def seed_gains(p: Pipeline) -> list[tuple[int, float, float]]:
    """(seed, best test accuracy alone, best with the teacher) for every seed whose two runs have finished."""
    from featcache.runs.report import load_record

    records = [load_record(d) for d in distill_runs(p)]
    best = {(r.method, r.seed): r.best_acc for r in records if r.finished}
    seeds = sorted({seed for _, seed in best})
    return [(s, best[ALONE, s], best[WITH_TEACHER, s]) for s in seeds
            if (ALONE, s) in best and (WITH_TEACHER, s) in best]
