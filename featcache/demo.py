"""`featcache demo`: the whole job on the built-in synthetic dataset, offline, on the CPU, in a few minutes.

It is an ordinary pipeline (featcache/pipeline.py) defined here rather than in a TOML file: fine-tune a small
teacher (``convnet``) on a larger synthetic training set of the same classes — the way the papers' teachers come
pre-trained on more data than the student sees — extract it once on the student's data, distill a LeNet-5 student
with and without the teacher over several seeds, and report the comparison table and the accuracy curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featcache.pipeline import Pipeline, parse_pipeline

DEMO_SEEDS = (0, 1, 2)


def demo_recipe(runs_dir: Path, *, scale: float = 1.0, seeds: tuple[int, ...] = DEMO_SEEDS) -> Pipeline:
    """The demo as a Pipeline. ``scale`` < 1 shrinks data and epochs (tests use it to check the wiring)."""

    def n(x: int) -> int:
        return max(8, int(x * scale))

    classes = 4
    student_data = {"num_train": n(1000), "num_test": n(400), "num_classes": classes}
    teacher_data = {"num_train": n(6000), "num_test": n(400), "num_classes": classes}
    student = {"epochs": max(1, round(10 * scale)), "batch_size": 64, "lr": 1e-3}
    data: dict[str, Any] = {
        "pipeline": {"name": "demo", "description": "synthetic shapes: LeNet-5 alone vs with a cached ConvNet teacher"},
        "dataset": {"name": "synthetic", "options": student_data},
        "teachers": [{
            "teacher": "convnet",
            "train": {"epochs": max(1, round(5 * scale)), "init": "random", "batch_size": 64, "lr": 1e-3,
                      "augment": "none", "image_size": 32, "dataset_options": teacher_data},
            "extract": {"image_size": 32},
        }],
        "distill": [{"students": ["lenet5"], "methods": ["ce", "ts"], "teachers": ["convnet"], "seeds": list(seeds),
                     "options": student}],
        "report": {"title": "featcache demo: LeNet-5 on synthetic shapes, alone vs with a cached teacher",
                   "markdown": "report.md", "plot": "curves.png"},
    }
    return parse_pipeline(data, runs_dir=runs_dir)
