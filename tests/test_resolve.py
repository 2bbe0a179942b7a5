"""--teacher finds its cache, and without --dataset the data its cache was extracted from (manifest values checked
as strictly as the flags they stand for)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from featcache.cache.format import MANIFEST, Manifest
from featcache.distill.resolve import recorded_data
from featcache.errors import CacheError, ConfigError
from helpers import FOLDER_DISTILL, SYN_EXTRACT, SYN_FLAGS, flat, folder_extract_key, invoke, one_line_error

# FOLDER_DISTILL without its --dataset: the data is the teacher's.
TEACHER_DISTILL = tuple(a for a in FOLDER_DISTILL if a not in ("--dataset", "folder"))


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["config"]


def _manifest(home: Path, key: str):
    return Manifest.load(home / key)


def test_a_teacher_without_dataset_trains_and_evaluates_on_the_folder_its_cache_was_extracted_from(
        home, folder_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(folder_tree.parent)
    key = folder_extract_key("--data-root", "data")  # relative: recorded absolute, so any folder finds it
    assert f"--data-root {folder_tree}" in _manifest(home, key).command
    monkeypatch.chdir(tmp_path.parent)
    r = invoke("distill", *TEACHER_DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert f"data folder (from cache {key}'s manifest, root {folder_tree}): 18 train images" in flat(r)
    config = _config(tmp_path / "run")
    assert (config["dataset"], config["data_root"], config["teachers"]) == ("folder", str(folder_tree), ["convnet"])
    r = invoke("eval", tmp_path / "run", "--workers", "0", "--json")  # the test split of the same folder
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n"] == 6


def test_the_library_takes_the_teachers_data_too(home, folder_tree, tmp_path):
    import featcache as fc

    key = folder_extract_key("--data-root", folder_tree)
    summary = fc.distill(student="convnet_small", teachers=[key], epochs=1, batch_size=8, workers=0, device="cpu",
                         run_dir=tmp_path / "run")
    assert summary.teachers == [key]
    assert (_config(tmp_path / "run")["dataset"], _config(tmp_path / "run")["data_root"]) == ("folder",
                                                                                              str(folder_tree))


def test_caches_of_one_teacher_for_different_data_are_listed_and_chosen_by_key(home, folder_tree, tmp_path):
    folder = folder_extract_key("--data-root", folder_tree)
    assert invoke("extract", *SYN_EXTRACT).exit_code == 0
    (synthetic,) = [p.name for p in home.iterdir() if p.name.startswith("convnet-synthetic")]
    line = one_line_error(invoke("distill", *TEACHER_DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "r"),
                          "--teacher convnet", f"{folder} (folder/train, 18 rows, root {folder_tree})",
                          f"{synthetic} (synthetic/train, 24 rows)", "--teacher convnet:KEY", "--dataset")
    assert "Traceback" not in line
    r = invoke("distill", *TEACHER_DISTILL, "--teacher", f"convnet:{folder}", "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert _config(tmp_path / "run")["dataset"] == "folder"
    # --dataset given: the old lookup by that data, whatever else the store holds
    r = invoke("distill", *TEACHER_DISTILL, *SYN_FLAGS, "--teacher", "convnet", "--run-dir", tmp_path / "syn")
    assert r.exit_code == 0, r.output
    assert _config(tmp_path / "syn")["dataset"] == "synthetic"


def test_an_explicit_dataset_still_wins_and_the_miss_names_the_caches_data(home, folder_tree, tmp_path):
    key = folder_extract_key("--data-root", folder_tree)
    one_line_error(invoke("distill", *TEACHER_DISTILL, *SYN_FLAGS, "--teacher", "convnet", "--run-dir", tmp_path / "r"),
                   "no cache of convnet for synthetic/train", f"{key} (folder/train, 18 rows, root {folder_tree})",
                   "drop --dataset", "featcache extract --teacher convnet --dataset synthetic")


def test_teachers_of_different_data_are_refused_in_one_line(home, folder_tree, tmp_path):
    folder = folder_extract_key("--data-root", folder_tree)
    assert invoke("extract", *SYN_EXTRACT).exit_code == 0
    (synthetic,) = [p.name for p in home.iterdir() if p.name.startswith("convnet-synthetic")]
    one_line_error(invoke("distill", *TEACHER_DISTILL, "--teacher", folder, "--teacher", synthetic, "--method",
                          "multi", "--run-dir", tmp_path / "r"),
                   f"--teacher {folder} and --teacher {synthetic}", "different data", "--dataset")


def test_a_moved_data_root_is_named_and_given_with_data_root(home, folder_tree, tmp_path):
    key = folder_extract_key("--data-root", folder_tree)
    moved = folder_tree.rename(tmp_path / "moved")
    one_line_error(invoke("distill", *TEACHER_DISTILL, "--teacher", "convnet", "--run-dir", tmp_path / "r"),
                   f"cache {key}", str(folder_tree), "no longer exists", "--data-root")
    r = invoke("distill", *TEACHER_DISTILL, "--teacher", "convnet", "--data-root", moved, "--run-dir",
               tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "given by --data-root" in flat(r)
    assert (_config(tmp_path / "run")["dataset"], _config(tmp_path / "run")["data_root"]) == ("folder", str(moved))


def _with_command(m, *words: str, **fields):
    """The manifest ``m`` whose recorded extract command is ``words`` (other fields as given)."""
    return dataclasses.replace(m, command=shlex.join(["featcache", "extract", *words]), **fields)


def test_what_a_manifest_says_of_its_data_is_checked_as_the_flags_are(home, folder_tree):
    key = folder_extract_key("--data-root", folder_tree)
    m = _manifest(home, key)
    base = ["--teacher", "convnet", "--dataset", "folder", "--weights", "random", "--shard-rows", "8"]
    assert recorded_data(key, m).data_root == folder_tree
    with pytest.raises(CacheError, match="no folder name") as exc:
        recorded_data(key, _with_command(m, *base, "--data-root", "/data\x1b[2J"))
    assert "\x1b" not in str(exc.value)
    with pytest.raises(CacheError, match="option 'evil'.* does not take"):
        recorded_data(key, _with_command(m, *base, "--data-root", str(folder_tree), "-o", "evil=1"))
    with pytest.raises(ConfigError, match=f"cache {key}'s dataset option holdout"):
        recorded_data(key, _with_command(m, *base, "--data-root", str(folder_tree), "-o", "holdout=abc"))
    with pytest.raises(CacheError, match="'mine', which featcache does not read by name"):
        recorded_data(key, dataclasses.replace(m, dataset={**m.dataset, "name": "mine"}))
    # an option that acts (fetches files) is never taken from a manifest
    cifar = {**m.dataset, "name": "cifar10", "params": {}}
    got = recorded_data(key, _with_command(m, "--teacher", "convnet", "--dataset", "cifar10", "--weights", "random",
                                           "--shard-rows", "8", "--data-root", "/d", "-o", "download=true",
                                           "-o", "train_per_class=5", dataset=cifar))
    assert (got.dataset, got.data_root, got.options) == ("cifar10", Path("/d"), {"train_per_class": 5})


def test_a_planted_data_root_in_a_store_is_one_line(home, folder_tree, tmp_path):
    key = folder_extract_key("--data-root", folder_tree)
    path = home / key / MANIFEST
    data = json.loads(path.read_text())
    data["command"] = data["command"].replace(str(folder_tree), "'/x\x07y'")
    path.write_text(json.dumps(data))
    one_line_error(invoke("distill", *TEACHER_DISTILL, "--teacher", key, "--run-dir", tmp_path / "r"),
                   f"cache {key}", "no folder name", "--data-root")
