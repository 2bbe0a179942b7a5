"""featcache.runs.rundir: a run directory's files (config.json, metrics.jsonl, checkpoints) written safely, one
process per directory, and read back strictly when damaged, torn or edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FOLDER_DISTILL, REPO, SYN_DISTILL, invoke, mount_tmpfs, one_line_error, umount


# -- 5. one process per run directory --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_distills_in_one_run_dir(home, folder_tree, tmp_path):
    from featcache.util.locks import DirLock

    run = tmp_path / "run"
    held = DirLock(run, "run directory").acquire()
    try:
        r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--method", "ce", "--run-dir", run)
        one_line_error(r, str(run), f"pid {os.getpid()}", "--run-dir")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        held.release()
    # A second process, for real: the first trains, the second is refused while it does.
    env = {**os.environ, "PYTHONPATH": str(REPO), "FEATCACHE_HOME": str(home)}
    args = [sys.executable, "-m", "featcache", "distill", *FOLDER_DISTILL, "--data-root", str(folder_tree),
            "--method", "ce", "--run-dir", str(run)]
    first = subprocess.Popen([*args[:-4], "--epochs", "100000", *args[-4:]], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        deadline = __import__("time").time() + 60
        while not (run / "config.json").exists():
            assert first.poll() is None and __import__("time").time() < deadline, first.stdout.read().decode()
            __import__("time").sleep(0.05)
        second = subprocess.run(args, env=env, capture_output=True, text=True)
        assert second.returncode == 2 and "in use by another featcache process" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()


# -- run directories: damaged checkpoints and metrics, kill -9 ---------------------------------------------------
def _syn_run(tmp_path: Path, run: Path, *extra: str):
    return invoke("distill", "--student", "convnet_small", "--dataset", "synthetic", "-o", "num_train=64",
                  "-o", "num_test=16", "--image-size", "32", "--workers", "0", "--batch-size", "16", "--device", "cpu",
                  "--method", "ce", "--run-dir", run, *extra)


@pytest.mark.slow
def test_truncated_checkpoints_and_torn_metrics(home, tmp_path):
    import torch

    run = tmp_path / "run"
    assert _syn_run(tmp_path, run, "--epochs", "5").exit_code == 0
    best = run / "checkpoint-best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    one_line_error(invoke("eval", run), "checkpoint-best.pt", "damaged")
    assert invoke("eval", run, "--checkpoint", "last").exit_code == 0
    # A kill after epoch 3's checkpoint, while appending epoch 4's line, leaves a torn last line: --resume skips it
    # and rewrites it.
    last = run / "checkpoint-last.pt"
    metrics = run / "metrics.jsonl"
    state = torch.load(last, weights_only=True)
    state["epoch"] = 2
    torch.save(state, last)
    (run / "summary.json").unlink()
    metrics.write_text("".join(x + "\n" for x in metrics.read_text().splitlines()[:3]) + '{"epoch": 4, "test_a')
    r = _syn_run(tmp_path, run, "--epochs", "5", "--resume")
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]
    last.write_bytes(last.read_bytes()[:100])
    one_line_error(_syn_run(tmp_path, run, "--epochs", "5", "--resume"), "checkpoint-last.pt", "damaged")
    (run / "config.json").write_text("{not json")
    one_line_error(invoke("eval", run), "config.json")
    one_line_error(invoke("report", run), "config.json")


@pytest.mark.parametrize("edit, needle, report", [
    (lambda info: info["config"].update(epochs="three"), "epochs", True),
    (lambda info: info["student_kwargs"].update(payload=1), "student_kwargs", False),  # only eval builds the model
    (lambda info: info.update(dataset=["train"]), "dataset", True),
])
def test_a_tampered_run_config_is_one_line(finished_run, edit, needle, report):
    info = json.loads((finished_run / "config.json").read_text())
    edit(info)
    (finished_run / "config.json").write_text(json.dumps(info))
    one_line_error(invoke("eval", finished_run), "config.json", needle)
    if report:
        one_line_error(invoke("report", finished_run), "config.json", needle)


@pytest.mark.parametrize("line", ['{"epoch": 2, "test_acc": "0.9"}', '{"epoch": 2, "test_acc": 7.5}',
                                  '{"epoch": 5, "test_acc": 0.5}', '{"epoch": 2, "test_acc": NaN}', "[1, 2]"])
def test_an_edited_metrics_line_is_refused_not_skipped(finished_run, line):
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    (finished_run / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    one_line_error(invoke("report", finished_run), "metrics.jsonl line 2")


def test_a_torn_last_metrics_line_is_still_skipped(finished_run):
    with open(finished_run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_a')
    from featcache.runs import rundir

    assert [r["epoch"] for r in rundir.read_metrics(finished_run)] == [1, 2]


# -- 7. a full disk while writing a checkpoint is one line and leaves no temp file -----------------------------------
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temp_file(home, tmp_path, monkeypatch):
    import errno

    disk = tmp_path / "disk"
    real = mount_tmpfs(disk, "160k")  # room for config.json and metrics, not for lenet5's checkpoint
    try:
        if not real:  # no mount rights: the disk fills between the write and the fsync
            from featcache.runs import rundir

            def full(fd):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(rundir.os, "fsync", full)
        r = invoke("distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", disk / "run")
        one_line_error(r, "ran out of disk space", str(disk / "run"), "--resume")
        assert [p.name for p in (disk / "run").iterdir() if p.name.endswith(".tmp")] == []
        assert not (disk / "run" / "checkpoint-last.pt").exists() and not (disk / "run" / "summary.json").exists()
    finally:
        if real:
            umount(disk)
