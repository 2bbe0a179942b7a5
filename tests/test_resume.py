"""featcache.distill.resume: what --resume may continue (the same flags, caches and data), a finished run left
finished, and a run killed with SIGKILL resumed bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, SYN_DISTILL, digests, invoke, one_line_error

KILL_DISTILL = """
import os, sys
from featcache.cli import app
sys.exit(app(["distill", "--student", "convnet_small", "--dataset", "synthetic", "-o", "num_train=256",
              "-o", "num_test=16", "--image-size", "32", "--workers", "0", "--batch-size", "16", "--device", "cpu",
              "--method", "ce", "--epochs", "4", "--run-dir", sys.argv[1]] + sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The run the killed-and-resumed runs must reproduce bit for bit."""
    full = tmp_path_factory.mktemp("uninterrupted") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", KILL_DISTILL, str(full)], env=env, capture_output=True).returncode == 0
    return full


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-epoch", "after-checkpoint"])
def test_kill_9_during_distill_resumes_bit_exact(home, tmp_path, when, uninterrupted):
    import signal
    import time

    import torch

    env = {**os.environ, "PYTHONPATH": str(REPO), "FEATCACHE_HOME": str(home)}
    full = uninterrupted
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DISTILL, str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            lines = (run / "metrics.jsonl").read_text().count("\n") if (run / "metrics.jsonl").is_file() else 0
            if lines >= 2 or (when == "mid-epoch" and lines >= 1):
                if when == "mid-epoch":
                    time.sleep(0.3)  # into the next epoch, between checkpoints
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    r = subprocess.run([sys.executable, "-c", KILL_DISTILL, str(run), "--resume"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    a = torch.load(full / "checkpoint-last.pt", weights_only=False)
    b = torch.load(run / "checkpoint-last.pt", weights_only=False)
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k
    assert [json.loads(x)["test_acc"] for x in (full / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(x)["test_acc"] for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- 3. a finished run stays finished ---------------------------------------------------------------------------------
def test_resuming_a_finished_run_changes_nothing(finished_run):
    before = digests(finished_run)
    summary = json.loads((finished_run / "summary.json").read_text())
    r = invoke("distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", finished_run, "--resume")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # rich wraps at 80 columns, wherever a long temporary path puts the break
    assert "is complete" in said and f"{summary['best_acc']:.2%}" in said
    assert digests(finished_run) == before


def test_a_run_stopped_before_its_summary_gets_it_on_resume(finished_run):
    written = json.loads((finished_run / "summary.json").read_text())
    (finished_run / "summary.json").unlink()  # killed between the last checkpoint and the summary
    before = digests(finished_run)
    r = invoke("distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", finished_run, "--resume")
    assert r.exit_code == 0 and "is complete" in " ".join(r.output.split()), r.output
    again = json.loads((finished_run / "summary.json").read_text())
    for k in ("best_acc", "best_epoch", "last_acc", "epochs", "method", "student"):
        assert again[k] == written[k], k
    assert again["images_per_s"] == pytest.approx(written["images_per_s"], rel=0.05)
    assert {k: v for k, v in digests(finished_run).items() if k != "summary.json"} == before


@pytest.mark.parametrize("flags, needle", [
    (("--epochs", "3"), "--epochs 2 (now 3)"),
    (("--epochs", "2", "--lr", "0.01"), "--lr"),
    (("--epochs", "2", "--seed", "4"), "--seed"),
    (("--epochs", "2", "--method", "kd", "--teacher", "nope"), "--method"),
])
def test_resume_with_other_flags_is_refused(finished_run, flags, needle):
    before = digests(finished_run)
    r = invoke("distill", *[a for a in SYN_DISTILL], *(("--method", "ce") if "--method" not in flags else ()), *flags,
               "--run-dir", finished_run, "--resume")
    one_line_error(r, "--resume", needle, "fresh --run-dir")
    assert digests(finished_run) == before


def test_resume_with_a_default_left_unset_continues_what_the_run_recorded(finished_run):
    """A run started under other defaults (no augmentation, 2 epochs) resumes with the flags it was started with:
    --augment and --epochs left unset take its recorded values, not today's defaults."""
    config = json.loads((finished_run / "config.json").read_text())
    config["config"]["augment"] = "none"
    (finished_run / "config.json").write_text(json.dumps(config))
    r = invoke("distill", *SYN_DISTILL, "--method", "ce", "--run-dir", finished_run, "--resume")
    assert r.exit_code == 0 and "is complete" in " ".join(r.output.split()), r.output
    one_line_error(invoke("distill", *SYN_DISTILL, "--method", "ce", "--augment", "flip", "--run-dir", finished_run,
                          "--resume"), "--resume", "--augment 'none' (now 'flip')")


def test_resume_on_other_data_is_refused(finished_run):
    args = [a if a != "num_train=24" else "num_train=32" for a in SYN_DISTILL]
    one_line_error(invoke("distill", *args, "--method", "ce", "--epochs", "2", "--run-dir", finished_run, "--resume"),
                   "--resume")


def test_an_interrupted_run_still_resumes(finished_run):
    """The checks above do not get in the way of a real resume: a run stopped after epoch 1 goes on to epoch 2."""
    (finished_run / "summary.json").unlink()
    state = torch.load(finished_run / "checkpoint-last.pt", weights_only=True)
    state["epoch"] = 0
    torch.save(state, finished_run / "checkpoint-last.pt")
    r = invoke("distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", finished_run, "--resume")
    assert r.exit_code == 0 and "resuming" in r.output and "is complete" not in r.output, r.output
    assert json.loads((finished_run / "summary.json").read_text())["epochs"] == 2
    assert np.isfinite(json.loads((finished_run / "summary.json").read_text())["last_acc"])
