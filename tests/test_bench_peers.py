"""`featcache bench peers` (featcache/bench/peers/): its figures and table, the one-line answers without the peer,
the common evaluation, featcache's side of the augmented-view check, and the whole command where torchdistill 1.1.4
is installed."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from helpers import FOLDER_CLASSES, invoke, make_tree, one_line_error


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _run(arm: str, phase: str, repeat: int, wall: float, rss: int, acc: float, **extra) -> dict:
    return {"arm": arm, "phase": phase, "repeat": repeat, "wall_s": wall, "peak_rss_bytes": rss,
            "train_seconds": [wall / 4] * 2, "images_per_epoch": 500, "accuracy": acc, **extra}


def _runs() -> list[dict]:
    runs = []
    for r in range(3):
        runs += [_run("td-online", "run", r, 30.0, 900 << 20, 0.30 + r / 100),
                 _run("td-cache", "fill", r, 32.0, 910 << 20, 0.31, cache_bytes=4_000_000, cache_files=500),
                 _run("td-cache", "warm", r, 20.0, 905 << 20, 0.31),
                 _run("td-cache-cl", "fill", r, 28.0, 920 << 20, 0.30, cache_bytes=4_000_000, cache_files=500),
                 _run("td-cache-cl", "warm", r, 16.0, 915 << 20, 0.30 + r / 100),
                 _run("fc-kd", "extract", r, 6.0, 950 << 20, None, cache_bytes=600_000, cache_files=2),
                 _run("fc-kd", "run", r, 8.0, 900 << 20, 0.31 + r / 100),
                 _run("fc-online", "run", r, 12.0, 1000 << 20, 0.30),
                 _run("bare", "run", r, 6.0, 850 << 20, None)]
    return runs


def test_totals_count_the_cache_once_and_every_student_run():
    from featcache.bench.peers.report import summarize

    arms = summarize(_runs(), students=5)["arms"]
    assert arms["td-online"]["total_s"] == pytest.approx(5 * 30.0)
    assert arms["td-cache"]["total_s"] == pytest.approx(32.0 + 4 * 20.0)  # the fill run trains the first student
    assert arms["fc-kd"]["total_s"] == pytest.approx(6.0 + 5 * 8.0)  # the extract trains none
    assert arms["fc-kd"]["train_s_per_epoch"] == pytest.approx(2.0)
    assert arms["fc-kd"]["images_per_s"] == pytest.approx(250.0)
    assert arms["td-cache"]["cache_files"] == 500 and arms["fc-online"]["cache_bytes"] is None
    assert arms["fc-kd"]["accuracy"] == pytest.approx([0.31, 0.33])  # the extract has no student to evaluate
    assert arms["bare"]["total_s"] is None and arms["bare"]["accuracy"] is None  # the limit trains no student


def test_goals_compare_with_the_peer_at_the_same_layout():
    from featcache.bench.peers.report import goal_lines, summarize

    s = summarize(_runs(), students=5)
    g = s["goals"]
    assert g["speedup_per_student_run"] == pytest.approx(16.0 / 8.0) and g["speedup_met"]
    assert g["rss_ratio"] == pytest.approx(900 / 915) and g["rss_met"]
    assert g["accuracy_gap"] == pytest.approx(0.015) and g["seed_noise"] == pytest.approx(0.02)
    assert g["accuracy_met"] is True
    assert g["speedup_ceiling_per_epoch"] == pytest.approx(4.0 / 1.5)  # the peer's epoch over the bare loop's
    assert g["featcache_epoch_vs_limit"] == pytest.approx(1.5 / 2.0)
    assert any("2.00x (goal >= 2x: met)" in line for line in goal_lines(s))
    one = summarize([r for r in _runs() if r["repeat"] == 0], students=5)
    assert one["goals"]["accuracy_met"] is None  # one seed: no spread to judge a gap by
    assert g["run_rss_ratio"] is None  # runs recorded without the pre-teardown peak: not invented


def test_the_peak_before_teardown_is_reported_beside_the_process_peak():
    from featcache.bench.peers.report import goal_lines, summarize, table_rows

    runs = [dict(r, run_rss_bytes=r["peak_rss_bytes"] - (100 << 20)) for r in _runs()]
    s = summarize(runs, students=5)
    assert s["arms"]["fc-kd"]["run_rss_bytes"] == [800 << 20, 850 << 20]  # the extract's and the runs'
    assert s["goals"]["run_rss_ratio"] == pytest.approx(800 / 815)
    assert any("before the interpreter's teardown 0.98x" in line for line in goal_lines(s))
    head, *rows = table_rows(s, students=5)
    fc = next(r for r in rows if r[0].startswith("featcache extract"))
    assert fc[head.index("before teardown")] == "800–850"


def test_a_child_reports_its_peak_before_the_interpreter_teardown(tmp_path):
    import sys

    from featcache.bench.peers.arms import run_child

    code = "import atexit; atexit.register(lambda: None); buf = bytearray(64 << 20); buf[::4096] = b'x' * (16 << 10)"
    measured = run_child([sys.executable, "-c", code], tmp_path / "child.log", 1, "a child")
    assert 64 << 20 < measured["run_rss_bytes"] <= measured["peak_rss_bytes"]


@pytest.mark.parametrize("width", [60, 80, 200])
def test_the_table_keeps_every_arm_name_at_any_width(width):
    from featcache.bench.peers.report import ARMS, summarize
    from featcache.cli.bench import peers_table

    r = {"summary": summarize(_runs(), 5), "students": 5, "images": 500, "image_size": 32, "epochs": 2,
         "threads": 1, "cpus": 2, "repeats": 3, "load_1min": [0.1, 0.2], "teacher": "random init (seed 0)"}
    text = " ".join(" ".join(peers_table(r).lines(width)).split())
    for arm in ARMS:
        assert arm.label in text or all(w in text for w in arm.label.split()), arm.label
    assert "0.310–0.330" in text and "MB" in text


def test_view_summary_shares():
    from featcache.bench.peers.report import view_lines, view_summary

    rows = [{"max_abs_diff": 0.0, "top1_agrees": True, "same_as_epoch1": False},
            {"max_abs_diff": 2e-6, "top1_agrees": True, "same_as_epoch1": False},
            {"max_abs_diff": 0.5, "top1_agrees": False, "same_as_epoch1": True},
            {"max_abs_diff": 0.1, "top1_agrees": True, "same_as_epoch1": True}]
    v = view_summary(rows)
    assert (v["samples"], v["equal_share"], v["top1_share"], v["stale_share"]) == (4, 0.5, 0.75, 0.5)
    assert "50% of 4 cached outputs equal" in view_lines({"torchdistill": v})[0]


def test_without_torchdistill_it_says_how_to_install_it(monkeypatch, tmp_path):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", absent)
    result = invoke("bench", "peers", "--data-root", tmp_path)
    one_line_error(result, "torchdistill 1.1.4", "pip install 'featcache[peers]'", alone=True)
    monkeypatch.setattr(metadata, "version", lambda name: "1.1.5")
    one_line_error(invoke("bench", "peers", "--data-root", tmp_path), "found 1.1.5", "featcache[peers]", alone=True)


def test_arguments_are_checked_before_anything_runs(monkeypatch, tmp_path):
    import featcache.bench.peers as peers

    one_line_error(invoke("bench", "peers"), "--data-root", alone=True)
    one_line_error(invoke("bench", "peers", "--data-root", tmp_path, "--repeats", "0"), "--repeats must be >= 1")
    one_line_error(invoke("bench", "peers", "--data-root", tmp_path, "--views", "1"), "--views must be >= 2")
    monkeypatch.setattr(peers, "peer_version", lambda: "1.1.4")
    one_line_error(invoke("bench", "peers", "--data-root", tmp_path, "--scratch", tmp_path / "s"),
                   f"--data-root {tmp_path}: no train/ folder")
    make_tree(tmp_path / "d" / "train")
    make_tree(tmp_path / "d" / "test", per_class=2)
    torch.save({"fc.weight": torch.zeros(3, 512)}, tmp_path / "bad.pt")
    one_line_error(invoke("bench", "peers", "--data-root", tmp_path / "d", "--scratch", tmp_path / "s2",
                          "--teacher-checkpoint", tmp_path / "bad.pt"), "not a resnet18 with 3 classes")


def test_the_common_evaluation_reestimates_batch_norm_for_every_student(folder_tree):
    """Two copies of one student whose running statistics differ (one left as trained, one reset) score the same:
    the evaluation replaces them by the same re-estimate."""
    import torchvision

    from featcache.bench.peers.evaluate import CommonEvaluation

    evaluation = CommonEvaluation(folder_tree)
    torch.manual_seed(0)
    a = torchvision.models.mobilenet_v3_small(num_classes=len(FOLDER_CLASSES))
    b = torchvision.models.mobilenet_v3_small(num_classes=len(FOLDER_CLASSES))
    b.load_state_dict(a.state_dict())
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
    assert evaluation.accuracy(a) == evaluation.accuracy(b)
    assert len(evaluation.labels) == 2 * len(FOLDER_CLASSES)


def test_featcache_rows_describe_the_view_its_student_sees(folder_tree, tmp_path):
    """extract --views: in epoch 2 every row the distill loader hands out is the teacher on those very pixels."""
    from featcache.bench.peers.evaluate import featcache_view_check
    from featcache.extract import ExtractConfig, extract

    result = extract(ExtractConfig(teacher="resnet18", weights="random", dataset="folder", data_root=folder_tree,
                                   image_size=32, resize=32, views=4, view_policy="pad-crop-flip", batch_size=32,
                                   workers=0, cache_dir=tmp_path / "store"))
    v = featcache_view_check(tmp_path / "store", result.key, folder_tree, 8)
    assert v["samples"] == 6 * len(FOLDER_CLASSES)
    assert v["equal_share"] == 1.0 and v["top1_share"] == 1.0 and v["max_abs_diff"] <= 1e-5
    assert v["stale_share"] < 1.0  # another view than epoch 1's for some samples


@pytest.mark.slow
@pytest.mark.skipif(_installed("torchdistill") != "1.1.4", reason="needs torchdistill 1.1.4: "
                    "pip install 'featcache[peers]'")
def test_bench_peers_runs_every_arm_and_the_view_check(tmp_path):
    make_tree(tmp_path / "d" / "train", per_class=8, ext="jpg")
    make_tree(tmp_path / "d" / "test", per_class=4, seed=5000, ext="jpg")
    result = invoke("bench", "peers", "--data-root", tmp_path / "d", "--images", "24", "--test-images", "12",
                    "--epochs", "1", "--repeats", "1", "--students", "2", "--view-samples", "12",
                    "--json-out", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "r.json").read_text())
    arms = r["summary"]["arms"]
    assert all(arms[k]["runs"] == 1 for k in arms)
    assert all(0 <= arms[k]["accuracy"][0] <= 1 for k in arms if k != "bare")
    assert arms["td-cache"]["cache_files"] == 24 and arms["fc-kd"]["cache_files"] >= 2
    assert r["views"]["featcache"]["equal_share"] == 1.0
    assert r["views"]["torchdistill"]["stale_share"] == 1.0  # keyed by index: epoch 1's output again
    assert r["views"]["torchdistill"]["equal_share"] < 0.5  # a view equal to epoch 1's is 1 in 162 (9 x 9 x 2)
    assert "torchdistill:" in result.output and "of 12 cached outputs equal" in " ".join(result.output.split())
    assert not Path(r["runs"][0]["student"]).exists()  # the scratch folder is removed
