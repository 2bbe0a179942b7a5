"""Fault injection: a cached row is the teacher's answer on these exact images, or featcache says so.

Every case here once ended either in a silent wrong result (exit 0, plausible numbers, wrong data) or in a traceback
(issue 12). Each test damages something a user or the machine can damage — images, shards, checkpoints, metrics,
the disk, the store's permissions — and requires one of two outcomes: the right answer, or a one-line error with
exit status 2 that names what to fix, and a store left consistent.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_image
from featcache.cache import CacheStore, FeatureCache, Manifest
from featcache.cli import app
from featcache.errors import CacheMismatchError
from featcache.extract import ExtractConfig, extract

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CLASSES = ("cat", "dog", "emu")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and text.startswith("error:") and len(text.splitlines()) == 1, text
    for n in needles:
        assert n in text, text
    return text


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    return tmp_path / "home"


def make_tree(root: Path, per_class: int = 6, seed: int = 0, size=(32, 32), ext: str = "png") -> Path:
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            write_image(root / name / f"{k:03d}.{ext}", seed + 100 * c + k, size=size)
    return root


@pytest.fixture()
def tree(tmp_path) -> Path:
    """DIR/train (6 per class) and DIR/test (2 per class), 32x32 PNGs."""
    make_tree(tmp_path / "data" / "train")
    make_tree(tmp_path / "data" / "test", per_class=2, seed=5000)
    return tmp_path / "data"


EXTRACT = ("--teacher", "convnet", "--weights", "random", "--dataset", "folder", "--workers", "0", "--shard-rows", "8")
DISTILL = ("--student", "convnet_small", "--dataset", "folder", "--workers", "0", "--epochs", "1", "--batch-size", "8",
           "--device", "cpu")


def extract_key(home: Path, *args: str) -> str:
    r = invoke("extract", *EXTRACT, *args)
    assert r.exit_code == 0, r.output
    return r.output.split("cache ")[1].split(":")[0].split(" ")[0].strip()


# -- 1. folder: the test split is never the training images -------------------------------------------------------
def test_folder_distill_without_a_test_split_is_an_error_not_train_accuracy(home, tmp_path):
    only = make_tree(tmp_path / "only")
    r = invoke("distill", *DISTILL, "--data-root", only, "--run-dir", tmp_path / "run")
    one_line_error(r, "test_root", "holdout")
    assert not (tmp_path / "run" / "summary.json").exists()
    # With a held-out fraction the run goes through, and its test ids differ from its train ids.
    r = invoke("distill", *DISTILL, "--data-root", only, "-o", "holdout=0.34", "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["dataset"]["train"]["ids_sha256"] != info["dataset"]["test"]["ids_sha256"]
    assert info["dataset"]["test"]["num_samples"] == 6 and info["dataset"]["test"]["params"]["holdout"] == 0.34


# -- 2. changed images never reuse old rows -----------------------------------------------------------------------
def test_images_overwritten_in_place_are_re_extracted_and_the_old_cache_refused(home, tree, tmp_path):
    key = extract_key(home, "--data-root", tree / "train")
    again = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert "nothing to do" in again.output
    make_tree(tree / "train", seed=777)  # every image rewritten, same names
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in r.output, r.output
    assert key not in r.output  # a new key: the dataset identity covers the content
    # The old cache, named by key, is refused by distill.
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--run-dir", tmp_path / "run")
    one_line_error(r, key, "image files")


def test_content_changed_behind_unchanged_size_and_mtime_is_caught(home, tmp_path):
    tree = tmp_path / "data"
    make_tree(tree / "train", ext="bmp")  # uncompressed: other pixels, the same file size
    make_tree(tree / "test", per_class=2, seed=5000)
    key = extract_key(home, "--data-root", tree / "train")
    for p in sorted((tree / "train").rglob("*.bmp")):
        st = p.stat()
        write_image(p, seed=st.st_size + len(str(p)), size=(32, 32))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert p.stat().st_size == st.st_size
    # The fingerprint still matches, but the re-hash of the sampled images does not.
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--run-dir", tmp_path / "run")
    one_line_error(r, key, "changed since the extract", "--force")
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    one_line_error(r, key, "--force")
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train", "--force")
    assert r.exit_code == 0, r.output
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output


def test_pixel_datasets_are_fingerprinted_by_content(tmp_path):
    """Datasets without files: CIFAR pickles hash their pixels; synthetic images are re-rendered and re-hashed."""
    from featcache.datasets import get_dataset

    cfg = ExtractConfig(teacher="convnet", weights="random", dataset="synthetic", image_size=32, workers=0,
                        dataset_options={"num_train": 16, "num_test": 4}, cache_dir=tmp_path / "s")
    res = extract(cfg)
    ds = get_dataset("synthetic", split="train", num_train=16, num_test=4)
    with FeatureCache(res.directory) as cache:
        assert cache.check_content(ds, "full") == 16
        ds.read_image = lambda i, _r=ds.read_image: _r(i).flip(-1)  # a renderer that changed under the cache
        with pytest.raises(CacheMismatchError, match="16 of 16 checked samples changed"):
            cache.check_content(ds, "full")
