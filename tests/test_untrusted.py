"""Files from someone else (issue 22): a run directory, a store and a manifest may have been written by another user.

Every case here ended in code execution, a path outside the store, a rewritten result or a traceback before the fix.
The outcome required is the right answer or one ``error:`` line with exit status 2 — and nothing executed, nothing
read from outside the cache's directory, nothing in a finished run changed.
"""

from __future__ import annotations

import time
import hashlib
import re
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import mount_tmpfs, one_line_error, umount
from featcache.cli import app

runner = CliRunner()
SYN = ("--dataset", "synthetic", "-o", "num_train=24", "-o", "num_test=8", "--workers", "0")
DISTILL = ("--student", "lenet5", *SYN, "--device", "cpu", "--batch-size", "8")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def run(home, tmp_path) -> Path:
    """A finished 2-epoch run (ce, no teacher) in tmp_path/run."""
    r = invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


# -- 1. a run directory's checkpoints are never unpickled -------------------------------------------------------------
class Payload:
    """What a crafted checkpoint carries: unpickling it makes a directory (any code could run instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_crafted_checkpoints_are_refused_before_any_code_runs(run, tmp_path):
    marker = tmp_path / "pwned"
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        state = torch.load(run / name, weights_only=True)
        state["extra"] = Payload(marker)
        torch.save(state, run / name)
    one_line_error(invoke("eval", run), "checkpoint-best.pt", "pickles Python objects")
    one_line_error(invoke("eval", run, "--checkpoint", "last"), "checkpoint-last.pt", "pickles Python objects")
    one_line_error(invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", run, "--resume"),
                   "checkpoint-last.pt", "pickles Python objects")
    # A distill run used as a teacher (extract --teacher run --weights RUN) reads the same file.
    one_line_error(invoke("extract", "--teacher", "run", "--weights", run, *SYN), "checkpoint-best.pt")
    assert not marker.exists()


def test_no_unpickling_outside_weights_only_in_the_package():
    """Every torch.load in featcache is weights-only; pickle itself is used only by the CIFAR reader (restricted)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "featcache"
    loads = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name == "torch.load":
                loads += 1
                only = [k.value for k in node.keywords if k.arg == "weights_only"]
                assert only and isinstance(only[0], ast.Constant) and only[0].value is True, f"{path}: {name}"
            if name.startswith("pickle.") or name.endswith("Unpickler"):
                assert path.name == "cifar.py", f"{path}: {name}"
    assert loads >= 2


def test_a_crafted_cifar_pickle_is_refused_before_any_code_runs(cifar10_pickle_root, tmp_path):
    """CIFAR's official release is pickles: featcache reads them with an unpickler that builds arrays only."""
    import pickle

    marker = tmp_path / "pwned"
    batch = cifar10_pickle_root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        obj = pickle.load(f)
    obj[b"extra"] = Payload(marker)
    batch.write_bytes(pickle.dumps(obj, protocol=2))
    r = invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "cifar10", "--data-root",
               cifar10_pickle_root, "--workers", "0")
    one_line_error(r, "data_batch_1", "not an official CIFAR pickle", "posix.mkdir")
    assert not marker.exists()
    # The untouched official layout still reads (protocol 2, as the release was written).
    obj.pop(b"extra")
    batch.write_bytes(pickle.dumps(obj, protocol=2))
    from featcache.datasets import get_dataset

    assert len(get_dataset("cifar10", cifar10_pickle_root, "train")) == 20


@pytest.mark.parametrize("edit, needle, report", [
    (lambda info: info["config"].update(epochs="three"), "epochs", True),
    (lambda info: info["student_kwargs"].update(payload=1), "student_kwargs", False),  # only eval builds the model
    (lambda info: info.update(dataset=["train"]), "dataset", True),
])
def test_a_tampered_run_config_is_one_line(run, edit, needle, report):
    info = json.loads((run / "config.json").read_text())
    edit(info)
    (run / "config.json").write_text(json.dumps(info))
    one_line_error(invoke("eval", run), "config.json", needle)
    if report:
        one_line_error(invoke("report", run), "config.json", needle)


@pytest.mark.parametrize("line", ['{"epoch": 2, "test_acc": "0.9"}', '{"epoch": 2, "test_acc": 7.5}',
                                  '{"epoch": 5, "test_acc": 0.5}', '{"epoch": 2, "test_acc": NaN}', "[1, 2]"])
def test_an_edited_metrics_line_is_refused_not_skipped(run, line):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    one_line_error(invoke("report", run), "metrics.jsonl line 2")


def test_a_torn_last_metrics_line_is_still_skipped(run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_a')
    from featcache.runs import rundir

    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


# -- 3. a finished run stays finished ---------------------------------------------------------------------------------
def test_resuming_a_finished_run_changes_nothing(run):
    before = digests(run)
    summary = json.loads((run / "summary.json").read_text())
    r = invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", run, "--resume")
    assert r.exit_code == 0, r.output
    assert "is complete" in r.output and f"{summary['best_acc']:.2%}" in r.output
    assert digests(run) == before


def test_a_run_stopped_before_its_summary_gets_it_on_resume(run):
    written = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()  # killed between the last checkpoint and the summary
    before = digests(run)
    r = invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", run, "--resume")
    assert r.exit_code == 0 and "is complete" in r.output, r.output
    again = json.loads((run / "summary.json").read_text())
    for k in ("best_acc", "best_epoch", "last_acc", "epochs", "method", "student"):
        assert again[k] == written[k], k
    assert again["images_per_s"] == pytest.approx(written["images_per_s"], rel=0.05)
    assert {k: v for k, v in digests(run).items() if k != "summary.json"} == before


@pytest.mark.parametrize("flags, needle", [
    (("--epochs", "3"), "--epochs 2 (now 3)"),
    (("--epochs", "2", "--lr", "0.01"), "--lr"),
    (("--epochs", "2", "--seed", "4"), "--seed"),
    (("--epochs", "2", "--method", "kd", "--teacher", "nope"), "--method"),
])
def test_resume_with_other_flags_is_refused(run, flags, needle):
    before = digests(run)
    r = invoke("distill", *[a for a in DISTILL], *(("--method", "ce") if "--method" not in flags else ()), *flags,
               "--run-dir", run, "--resume")
    one_line_error(r, "--resume", needle, "fresh --run-dir")
    assert digests(run) == before


def test_resume_on_other_data_is_refused(run):
    args = [a if a != "num_train=24" else "num_train=32" for a in DISTILL]
    one_line_error(invoke("distill", *args, "--method", "ce", "--epochs", "2", "--run-dir", run, "--resume"),
                   "--resume")


def test_an_interrupted_run_still_resumes(run):
    """The checks above do not get in the way of a real resume: a run stopped after epoch 1 goes on to epoch 2."""
    (run / "summary.json").unlink()
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    state["epoch"] = 0
    torch.save(state, run / "checkpoint-last.pt")
    r = invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", run, "--resume")
    assert r.exit_code == 0 and "resuming" in r.output and "is complete" not in r.output, r.output
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert np.isfinite(json.loads((run / "summary.json").read_text())["last_acc"])


# -- 2. a manifest never names a file outside its cache's directory ---------------------------------------------------
EXTRACT = ("--teacher", "convnet", "--weights", "random", *SYN, "--image-size", "32", "--shard-rows", "16")


@pytest.fixture()
def cache(home) -> Path:
    """A complete cache (24 rows in two shards) in the store; returns its directory."""
    r = invoke("extract", *EXTRACT)
    assert r.exit_code == 0, r.output
    (key,) = [p.name for p in home.iterdir() if (p / "manifest.json").is_file()]
    return home / key


def edit_manifest(directory: Path, fn) -> None:
    m = json.loads((directory / "manifest.json").read_text())
    fn(m)
    (directory / "manifest.json").write_text(json.dumps(m))


def readers(cache: Path, tmp_path: Path):
    """Every reader of a cache: distill, cache verify, cache info, the Python API."""
    from featcache import api
    from featcache.cache import open_cache
    from featcache.errors import CacheError

    key = cache.name
    yield "distill", invoke("distill", *DISTILL, "--teacher", key, "--epochs", "1", "--run-dir", tmp_path / "r")
    yield "verify", invoke("cache", "verify", key)
    yield "info", invoke("cache", "info", key)
    for name, fn in (("open_cache", lambda: open_cache(key).gather(np.arange(4))),
                     ("RowJoin", lambda: api.RowJoin([key], check=False).join(np.arange(4)))):
        try:
            fn()
        except CacheError as exc:
            yield name, str(exc)
        else:
            yield name, None


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_shard_path_out_of_the_cache_is_refused_by_every_reader(cache, tmp_path, where):
    shard = cache / "data-00000.h5"
    outside = tmp_path / "elsewhere" / "x.h5"  # the same bytes, so that only the path can give it away
    outside.parent.mkdir()
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    name = os.path.relpath(outside, cache) if where == "relative" else str(outside)
    edit_manifest(cache, lambda m: m["shards"][0].update(file=name))
    for reader, result in readers(cache, tmp_path):
        if isinstance(result, str) or result is None:
            assert result is not None and "data-00000.h5" in result, reader
        elif reader == "verify":  # verify's own verdict: FAILED and exit 1
            assert result.exit_code == 1 and "FAILED" in result.output and "Traceback" not in result.output
            assert "data-00000.h5" in " ".join(result.output.split())
        else:
            one_line_error(result, "data-00000.h5")
    assert not (tmp_path / "r" / "summary.json").exists()


def test_a_shard_that_is_a_link_out_of_the_cache_is_refused(cache, tmp_path):
    shard = cache / "data-00000.h5"
    outside = tmp_path / "x.h5"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)
    for reader, result in readers(cache, tmp_path):
        if reader == "verify":
            assert result.exit_code == 1 and "symbolic link" in result.output, result.output
        elif isinstance(result, str) or result is None:
            assert result is not None and "symbolic link" in result, reader
        elif reader != "info":  # info reads the manifest only, never a shard
            one_line_error(result, "data-00000.h5", "symbolic link")
    # The extract does not follow it: the shard is written anew in place of the link, the outside file untouched.
    before = outside.read_bytes()
    r = invoke("extract", *EXTRACT)
    assert r.exit_code == 0 and "nothing to do" not in r.output, r.output
    assert not shard.is_symlink() and outside.read_bytes() == before
    assert invoke("cache", "verify", cache.name).exit_code == 0


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["rows"].update(data="24"), "rows"),
    (lambda m: m.update(shard_rows=0), "shard_rows"),
    (lambda m: m.update(dtype="object"), "dtype"),
    (lambda m: m.update(key="../../evil"), "key"),
    (lambda m: m["teacher"].update(num_features=True), "num_features"),
    (lambda m: m["shards"][1].update(start=3), "rows [3"),
    (lambda m: m["shards"][0].update(sha256="x"), "sha256"),
    (lambda m: m.update(topk_logits=10**6), "topk_logits"),
    (lambda m: m.update(extra_field=1), "extra_field"),
])
def test_manifest_values_are_checked_like_flags(cache, tmp_path, edit, needle):
    edit_manifest(cache, edit)
    r = invoke("distill", *DISTILL, "--teacher", cache.name, "--epochs", "1", "--run-dir", tmp_path / "r")
    one_line_error(r, needle)


# -- 8. a newer cache format is never overwritten; "no cache" says what was skipped ------------------------------------
def test_a_newer_format_cache_is_left_alone_and_named(cache, tmp_path):
    edit_manifest(cache, lambda m: m.update(format_version=99))
    before = digests(cache)
    one_line_error(invoke("extract", *EXTRACT), cache.name, "newer featcache", "format_version 99", "cache rm")
    one_line_error(invoke("extract", *EXTRACT, "--force"), cache.name, "newer featcache")
    assert digests(cache) == before
    one_line_error(invoke("distill", *DISTILL, "--teacher", "convnet", "--epochs", "1", "--run-dir", tmp_path / "r"),
                   "no cache of convnet", "newer featcache", cache.name)
    one_line_error(invoke("distill", *DISTILL, "--teacher", cache.name, "--epochs", "1", "--run-dir", tmp_path / "r"),
                   "newer featcache", "upgrade")
    r = invoke("cache", "ls", "--json")
    assert json.loads(r.output)[0]["status"] == "newer format"
    # Removing it is the user's call; after that the extract writes this version's cache.
    assert invoke("cache", "rm", cache.name).exit_code == 0
    assert invoke("extract", *EXTRACT).exit_code == 0


def test_a_store_that_is_a_file_is_named(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a directory")
    monkeypatch.setenv("FEATCACHE_HOME", str(home))
    for args in (("cache", "ls"), ("extract", *EXTRACT), ("distill", *DISTILL, "--teacher", "convnet", "--run-dir",
                                                           tmp_path / "r")):
        one_line_error(invoke(*args), "FEATCACHE_HOME", str(home), "not a directory")
    one_line_error(invoke("cache", "ls", "--cache-dir", home), "--cache-dir", "not a directory")


# -- 6. the Python API rejects what it cannot mean -------------------------------------------------------------------
@pytest.mark.parametrize("indices, needle", [
    (np.array([0.0, 1.9]), "integers"),
    (torch.tensor([0.5]), "integers"),
    (np.zeros(24, dtype=bool), "boolean mask"),
    (torch.ones(24, dtype=torch.bool), "boolean mask"),
    ([0, 24], "[0, 24)"),
    ([-1], "[0, 24)"),
    (np.array([[0, 1]]), "1-D"),
])
def test_row_join_refuses_indices_it_cannot_mean(cache, indices, needle):
    from featcache import api
    from featcache.errors import FeatcacheError

    join = api.RowJoin([cache.name], check=False)
    with pytest.raises(api.RowIndexError, match=re.escape(needle)) as info:
        join.join(indices)
    assert isinstance(info.value, IndexError) and isinstance(info.value, FeatcacheError)
    # What it can mean still works: any integer dtype, repeats, any order, empty.
    rows = join.join(np.array([5, 0, 5], dtype=np.int32))[0]
    assert np.array_equal(rows["features"][0], rows["features"][2])
    assert len(join.join([])[0]["logits"]) == 0 and len(join.join(torch.tensor([23]))[0]["logits"]) == 1


def test_extract_from_refuses_a_head_narrower_than_the_dataset(home):
    import torchvision
    from torch.utils.data import TensorDataset

    from featcache import api
    from featcache.errors import ConfigError

    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(12) % 4)
    model = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ConfigError, match="2 logits but the dataset has 4 classes"):
        api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool", image_size=32,
                         workers=0)
    with pytest.raises(ConfigError, match="logit_classes"):
        api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool", image_size=32,
                         workers=0, logit_classes=["0", "1", "2"])
    # Saying which classes the head covers (a teacher of some classes) is accepted, and recorded.
    result = api.extract_from(model, data, name="narrow", dataset_name="toy", feature_layer="avgpool",
                              image_size=32, workers=0, logit_classes=["1", "3"])
    assert result.manifest.teacher.classes == ["1", "3"] and result.manifest.teacher.num_classes == 2


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
        r = invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", disk / "run")
        one_line_error(r, "ran out of disk space", str(disk / "run"), "--resume")
        assert [p.name for p in (disk / "run").iterdir() if p.name.endswith(".tmp")] == []
        assert not (disk / "run" / "checkpoint-last.pt").exists() and not (disk / "run" / "summary.json").exists()
    finally:
        if real:
            umount(disk)


# -- 7. many views: bounded, announced, and the manifest is not rewritten per shard ----------------------------------
def test_views_are_bounded_and_the_extract_says_what_it_will_write(home, monkeypatch):
    from featcache.cache.format import Manifest
    from featcache.extract.sweep import MANIFEST_EVERY

    one_line_error(invoke("extract", *EXTRACT, "--views", "10000"), "--views 10000", "at most 1024")
    assert not any(home.iterdir()) if home.exists() else True
    saves = []
    real = Manifest.save
    monkeypatch.setattr(Manifest, "save", lambda self, d: saves.append(len(self.shards)) or real(self, d))
    start = time.monotonic()
    r = invoke("extract", *EXTRACT, "--views", "40", "--shard-rows", "8")
    elapsed = time.monotonic() - start
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "960 rows to write (24 data + 936 in 39 view(s)) in 120 shard(s)" in said, said
    m = Manifest.load(next(p for p in home.iterdir() if (p / "manifest.json").is_file()))
    assert m.complete and len(m.shards) == 120
    # Not one save per shard (120): at most once a second and at the end, so bounded by the time taken (a loaded
    # machine takes longer over the 120 shards and may save more often than an idle one, never once per shard).
    assert len(saves) <= elapsed / MANIFEST_EVERY + 5 and len(saves) < 60, (saves, elapsed)


def test_a_rank_sidecar_cannot_add_a_shard_outside_the_cache(cache, tmp_path):
    """torchrun ranks record their shards in sidecars that rank 0 folds into the manifest: the same rules apply."""
    from featcache.cache.format import Manifest
    from featcache.extract.ranks import merge_rank_shards, rank_file

    m = Manifest.load(cache)
    shard = m.shards.pop(0)  # as if rank 1 had written it: only its sidecar records it
    outside = tmp_path / "x.h5"
    outside.write_bytes((cache / shard.file).read_bytes())
    record = {**shard.__dict__, "file": os.path.relpath(outside, cache)}
    rank_file(cache, 1).write_text(json.dumps([record]))
    merge_rank_shards(cache, m)
    assert [s.file for s in m.shards] == ["data-00001.h5"] and not rank_file(cache, 1).exists()
    rank_file(cache, 1).write_text(json.dumps([shard.__dict__]))  # the honest record is taken
    merge_rank_shards(cache, m)
    assert sorted(s.file for s in m.shards) == ["data-00000.h5", "data-00001.h5"]


# -- a cache is the cache its name says; what a manifest records is data --------------------------------------------
def _extract_other(home: Path, known: Path, *flags: str) -> Path:
    r = invoke("extract", *EXTRACT, *flags)
    assert r.exit_code == 0, r.output
    (other,) = [p for p in home.iterdir() if p != known and (p / "manifest.json").is_file()]
    return other


def test_a_cache_copied_under_another_key_is_refused_by_every_reader(cache, home, tmp_path):
    """A float16 cache copied over an int8 cache's directory is not read as the int8 cache by anyone."""
    import shutil

    int8 = _extract_other(home, cache, "--dtype", "int8")
    shutil.rmtree(int8)
    shutil.copytree(cache, int8)
    for reader, result in readers(int8, tmp_path):
        if reader == "verify":
            assert result.exit_code == 1 and "FAILED" in result.output, result.output
            assert f"holds the manifest of cache {cache.name}" in " ".join(result.output.split())
        elif isinstance(result, str) or result is None:
            assert result is not None and "holds the manifest of cache" in result, reader
        else:
            one_line_error(result, int8.name, f"holds the manifest of cache {cache.name}", "refused")
    assert not (tmp_path / "r" / "summary.json").exists()
    listed = {e["key"]: e["status"] for e in json.loads(invoke("cache", "ls", "--json").output)}
    assert listed == {cache.name: "complete", int8.name: "foreign"}
    (tmp_path / "shared").mkdir()
    one_line_error(invoke("cache", "publish", int8.name, "--to", tmp_path / "shared"), int8.name, "foreign")
    one_line_error(invoke("cache", "export", int8.name, "-o", tmp_path / "x.tar"), int8.name, cache.name)
    assert not (tmp_path / "x.tar").exists() and not list((tmp_path / "shared").iterdir())


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["identity"].update(precision="fp16"), "is not the hash of the identity"),
    (lambda m: m.update(precision="fp16"), "its precision"),
    (lambda m: m["dataset"].update(labels_sha256="0" * 64), "its dataset"),
    (lambda m: m["teacher"].update(name="resnet50"), "its teacher"),
    (lambda m: m["transform"].update(interpolation="nearest"), "its transform"),
])
def test_a_manifest_whose_fields_are_not_its_keys_identity_is_refused(cache, tmp_path, edit, needle):
    edit_manifest(cache, edit)
    r = invoke("distill", *DISTILL, "--teacher", cache.name, "--epochs", "1", "--run-dir", tmp_path / "r")
    one_line_error(r, cache.name, needle, "refused")
    one_line_error(invoke("cache", "info", cache.name), needle)


def test_a_forged_key_over_an_edited_identity_is_refused(cache, home, tmp_path):
    """Whoever edits the identity and renames the directory to the key it gives still has to change every field
    a reader uses to match it: what is left (the rows stored as float16, said float32 by the identity) is refused."""
    from featcache.cache.format import make_key

    m = json.loads((cache / "manifest.json").read_text())
    m["identity"]["dtype"] = "float32"
    m["key"] = make_key(m["identity"], "convnet", "synthetic", "train")
    (cache / "manifest.json").write_text(json.dumps(m))
    cache.rename(home / m["key"])
    one_line_error(invoke("distill", *DISTILL, "--teacher", m["key"], "--epochs", "1", "--run-dir", tmp_path / "r"),
                   m["key"], "its dtype ('float16') is not the one its identity records ('float32')")


def test_a_recorded_command_is_never_shown_as_advice(cache, tmp_path):
    """An archive's (or anyone's) manifest may record any text as its command: the repair hint shows the extract
    that makes this cache, rebuilt from its fields, never that text."""
    edit_manifest(cache, lambda m: m.update(command="rm -rf ~ --force"))
    shard = cache / "data-00001.h5"
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    r = invoke("distill", *DISTILL, "--teacher", cache.name, "--epochs", "1", "--run-dir", tmp_path / "r")
    flat = one_line_error(r, "data-00001.h5", "`featcache extract --teacher convnet ")
    assert "rm -rf" not in flat
    info = invoke("cache", "info", cache.name)
    assert info.exit_code == 0 and "rm -rf" not in info.output
    assert "featcache extract --teacher convnet" in " ".join(info.output.split())


def test_names_and_text_from_a_store_are_shown_escaped(cache, home, tmp_path):
    """Another user's directory named with a terminal escape and a newline is listed apart, escaped, never as a
    cache; a manifest naming its teacher so is shown escaped too."""
    import shutil

    from featcache.cache.format import make_key

    weird = home / "evil\x1b[2J\nname"
    shutil.copytree(cache, weird)
    m = json.loads((cache / "manifest.json").read_text())
    for where in (m["identity"]["teacher"], m["teacher"]):
        where["name"] = "evil\x1b]0;owned\x07\x1b[31m[red]teacher"
    m["key"] = make_key(m["identity"], m["teacher"]["name"], "synthetic", "train")
    forged = home / m["key"]
    shutil.copytree(cache, forged)
    (forged / "manifest.json").write_text(json.dumps(m))
    r = invoke("cache", "ls")
    assert r.exit_code == 0 and "\x1b" not in r.output and "\x07" not in r.output, repr(r.output)
    flat = " ".join(r.output.split())
    assert "not caches" in flat and "evil\\e[2J\\nname" in flat and "[red]teacher" in flat
    assert "evil\\e[2J\\nname" not in flat.split("not caches")[0]  # never in the table of caches
    listed = {e["key"]: e["status"] for e in json.loads(invoke("cache", "ls", "--json").output)}
    assert listed == {cache.name: "complete", forged.name: "complete"}
    info = invoke("cache", "info", forged.name)
    assert info.exit_code == 0 and "\x1b" not in info.output and "[red]teacher" in info.output, info.output
    for name in (weird.name, "../" + cache.name):
        flat = one_line_error(invoke("cache", "info", name), "no cache")
        assert "\x1b" not in flat


# -- JSON nested 100k deep, in every file featcache reads from a store or a run directory -----------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_100k_deep_in_a_store_is_one_line_or_one_entry_marked(cache, home, tmp_path):
    """A manifest, a lease, a remembered request or an archive index nested 100k deep: the command that reads it
    says so in one line, or lists the file's cache as damaged and goes on with the rest."""
    import tarfile

    from featcache.cache.install import host
    from featcache.cache.leases import lease_dir

    bad = home / "convnet-synthetic-train-0123456789ab"
    bad.mkdir()
    (bad / "manifest.json").write_text(DEEP)
    r = invoke("cache", "ls")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    lines = {ln.split()[0]: ln.split()[-1] for ln in r.output.splitlines() if ln.startswith("convnet-")}
    assert lines == {cache.name: "complete", bad.name: "broken"}, r.output
    r = invoke("cache", "verify")
    assert r.exit_code == 1 and "Traceback" not in r.output and f"ok {cache.name}" in r.output, r.output
    assert "nested deeper than" in " ".join(r.output.split())
    one_line_error(invoke("cache", "info", bad.name), bad.name, "nested deeper than")
    one_line_error(invoke("distill", *DISTILL, "--teacher", bad.name, "--run-dir", tmp_path / "r"), bad.name)
    # Everyone else's work goes on: a search by teacher name finds the good cache and trains from it.
    r = invoke("distill", *DISTILL, "--method", "kd", "--teacher", "convnet", "--epochs", "1", "--run-dir",
               tmp_path / "r")
    assert r.exit_code == 0 and (tmp_path / "r" / "summary.json").is_file(), r.output
    r = invoke("cache", "gc", "--max-size", "0", "--dry-run")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert invoke("cache", "rm", bad.name).exit_code == 0 and not bad.exists()
    # Another user's lease on the cache, nested deep: still a lease (its pid runs), so the cache is not removed.
    lease = lease_dir(home, cache.name) / f"{host()}@{os.getpid()}@deadbeef"
    lease.parent.mkdir(parents=True)
    lease.write_text(DEEP[:999])
    one_line_error(invoke("cache", "rm", cache.name), cache.name)
    r = invoke("cache", "gc", "--max-size", "0")
    assert r.exit_code == 0 and "Traceback" not in r.output and cache.exists(), r.output
    lease.unlink()
    # A remembered request nested deep is no answer: the extract takes its full path and finds the cache.
    memos = list((home / "requests").glob("*.json"))
    assert memos
    for memo in memos:
        memo.write_text(DEEP)
    r = invoke("extract", *EXTRACT)
    assert r.exit_code == 0 and "nothing to do" in " ".join(r.output.split()), r.output
    # An archive whose index is nested deep.
    archive = tmp_path / "deep.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("featcache-archive.json")
        info.size = len(DEEP)
        tar.addfile(info, __import__("io").BytesIO(DEEP.encode()))
    (tmp_path / "other").mkdir()
    one_line_error(invoke("cache", "import", archive, "--to", tmp_path / "other"), "deep.tar")
    assert not [p for p in (tmp_path / "other").iterdir() if not p.name.startswith(".")]


def test_json_nested_100k_deep_in_a_run_directory_is_one_line_or_one_run_skipped(run, tmp_path):
    """config.json, metrics.jsonl, summary.json or failed.json nested deep: `runs ls` lists the other runs and
    names the damaged ones; report, eval and --resume say which file in one line."""
    import shutil

    runs = tmp_path / "runs"
    files = {"config": "config.json", "metrics": "metrics.jsonl", "summary": "summary.json", "failed": "failed.json"}
    shutil.copytree(run, runs / "good")
    for name, file in files.items():
        shutil.copytree(run, runs / name)
        text = (run / file).read_text() if (run / file).is_file() else ""
        (runs / name / file).write_text(DEEP + "\n" + text if file == "metrics.jsonl" else DEEP)
    (runs / "failed" / "summary.json").unlink()  # a finished run's failed.json says nothing: this one is read
    r = invoke("runs", "ls", runs)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    flat = " ".join(r.output.split())
    assert "good" in flat and "finished" in flat
    for name, file in files.items():
        assert f"{runs / name / file}" in flat, (name, flat)
    for name, file in files.items():
        if name != "failed":  # report reads no failed.json
            one_line_error(invoke("report", runs / name), file)
        if name in ("config", "metrics"):
            one_line_error(invoke("distill", *DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", runs / name,
                                  "--resume"), file)
    one_line_error(invoke("eval", runs / "config"), "config.json")
    one_line_error(invoke("report", runs), "nested deeper than")
