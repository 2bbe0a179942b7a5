"""Teacher draws in a report: the arms over several draws of one teacher, and what is never taken for a draw."""

import json
from pathlib import Path

from featcache.runs.draws import Draw, draw_arms, markdown_draws, teacher_draws
from featcache.runs.report import build_rows, load_record


def _run(root: Path, name: str, acc: float, key: str, seed: int = 0) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "config": {"student": "lenet5", "dataset": "synthetic", "seed": seed, "method": "kd"}, "method": "kd",
        "teachers": [{"key": key, "teacher": "convnet"}]}))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": acc}) + "\n")
    (d / "summary.json").write_text(json.dumps({"epochs": 1}))
    return d


def _rows(tmp_path, runs):
    return build_rows([load_record(_run(tmp_path, *r)) for r in runs])


KEYS = ["convnet-synthetic-train-aaaaaaaaaaaa", "convnet-synthetic-train-bbbbbbbbbbbb",
        "convnet-synthetic-train-cccccccccccc"]


def test_rows_that_differ_only_in_their_teachers_draw_make_one_arm_with_the_spread_between_teachers(tmp_path):
    rows = _rows(tmp_path, [("a0", 0.50, KEYS[0], 0), ("a1", 0.60, KEYS[0], 1), ("b0", 0.30, KEYS[1], 0),
                            ("b1", 0.40, KEYS[1], 1)])
    draws = {KEYS[0]: Draw(0, "0" * 64, "one teacher"), KEYS[1]: Draw(1, "f" * 64, "one teacher")}
    arms = draw_arms(rows, draws)
    assert len(rows) == 2 and len(arms) == 1
    cells = arms[0].cells()
    # all four runs: mean 45, sample std 12.91; the draws' means 55 and 35: between teachers 14.14
    assert cells["runs"] == "4" and cells["draws"] == "2" and cells["best acc %"] == "45.00 ± 12.91"
    assert cells["between teachers"] == "14.14" and cells["teachers"] == "convnet"
    assert [r.cells()["teachers"] for r in rows] == ["convnet (seed 0, 00000000)", "convnet (seed 1, ffffffff)"]
    assert "| lenet5 | kd | convnet | 2 | 4 | 45.00 ± 12.91 | 14.14 |" in markdown_draws(arms)


def test_caches_of_one_teacher_made_otherwise_are_never_taken_for_draws(tmp_path):
    """float16 vs int8 rows of one teacher (another family), or a cache whose draw is unknown, stay their own arms."""
    rows = _rows(tmp_path, [("f", 0.5, KEYS[0]), ("q", 0.4, KEYS[1]), ("u", 0.3, KEYS[2])])
    draws = {KEYS[0]: Draw(0, "0" * 64, "float16"), KEYS[1]: Draw(0, "0" * 64, "int8")}
    assert draw_arms(rows, draws) == [] and markdown_draws([]) == ""
    assert [r.cells()["teachers"] for r in rows] == [f"convnet@{k[-12:-6]}" for k in KEYS]


def test_a_cache_not_in_a_local_store_has_no_known_draw(tmp_path, home):
    assert teacher_draws({KEYS[0]}, tmp_path / "store") == {}
