"""featcache.datasets.leaks: a test split that is the training images (copied, or missing) is refused, never
reported as test accuracy."""

from __future__ import annotations

import json
import shutil

from helpers import FOLDER_DISTILL, FOLDER_TEACH, invoke, make_tree, one_line_error


# -- 1. folder: the test split is never the training images -------------------------------------------------------
def test_folder_distill_without_a_test_split_is_an_error_not_train_accuracy(home, tmp_path):
    only = make_tree(tmp_path / "only")
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", only, "--run-dir", tmp_path / "run")
    one_line_error(r, "test_root", "holdout")
    assert not (tmp_path / "run" / "summary.json").exists()
    # With a held-out fraction the run goes through, and its test ids differ from its train ids.
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", only, "-o", "holdout=0.34", "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["dataset"]["train"]["ids_sha256"] != info["dataset"]["test"]["ids_sha256"]
    assert info["dataset"]["test"]["num_samples"] == 6 and info["dataset"]["test"]["params"]["holdout"] == 0.34


def test_a_test_folder_copied_from_train_is_refused(home, folder_tree, tmp_path):
    shutil.rmtree(folder_tree / "test")
    shutil.copytree(folder_tree / "train", folder_tree / "test")
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--run-dir", tmp_path / "run")
    one_line_error(r, "18 of the test split's 18 images are byte-identical copies", "train")
    r = invoke("train-teacher", *FOLDER_TEACH, "--data-root", folder_tree, "--run-dir", tmp_path / "teacher")
    one_line_error(r, "byte-identical")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "teacher" / "teacher.pt").exists()
