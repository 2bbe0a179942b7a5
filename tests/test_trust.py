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

from conftest import mount_tmpfs, one_line_error, umount, write_image
from featcache.cache import CacheStore, FeatureCache, Manifest
from featcache.cli import app
from featcache.errors import CacheMismatchError
from featcache.extract import ExtractConfig, extract

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CLASSES = ("cat", "dog", "emu")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def flat(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


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
    assert "nothing to do" in flat(again)
    make_tree(tree / "train", seed=777)  # every image rewritten, same names
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in flat(r), r.output
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


# -- 3 and 7. a damaged shard is never read, and a re-extract repairs it --------------------------------------------
def _flip_byte(path: Path, where: float = 0.7) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_is_refused_by_distill_and_redone_by_extract(home, tree, tmp_path, damage):
    key = extract_key(home, "--data-root", tree / "train")
    shard = sorted((home / key).glob("data-*.h5"))[1]
    if damage == "flip":
        _flip_byte(shard)
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    r = invoke("cache", "verify", key)
    assert r.exit_code == 1 and ("corrupt" if damage == "flip" else "truncated") in r.output
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--run-dir", tmp_path / "run")
    one_line_error(r, key, shard.name, "featcache extract")
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")  # not "nothing to do": the shard is redone
    assert r.exit_code == 0 and "nothing to do" not in flat(r) and key in r.output, r.output
    assert invoke("cache", "verify", key).exit_code == 0
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output


def test_a_shard_is_hashed_once_per_process(home, tree, monkeypatch):
    from featcache.cache import reader

    key = extract_key(home, "--data-root", tree / "train")
    calls = []
    monkeypatch.setattr(reader, "file_sha256",
                        lambda p: calls.append(p) or __import__("featcache.util.hashing").util.hashing.file_sha256(p))
    reader._VERIFIED.clear()
    for _ in range(2):
        with CacheStore(home).open(key) as cache:
            cache.read_all()
    assert len(calls) == len(list((home / key).glob("data-*.h5")))


# -- 4. NaN never ends with exit 0 -----------------------------------------------------------------------------------
def _poison_row(directory: Path, row: int) -> None:
    """Write NaN into one cached feature row and re-record the shard's checksum, as a bug or a hand edit would."""
    import h5py

    from featcache.util.hashing import file_sha256

    m = Manifest.load(directory)
    shard = next(s for s in m.shards if s.part == "data" and s.start <= row < s.stop)
    with h5py.File(directory / shard.file, "r+") as f:
        f["features"][row - shard.start, 3] = np.nan
    shard.bytes, shard.sha256 = (directory / shard.file).stat().st_size, file_sha256(directory / shard.file)
    m.save(directory)


def test_nan_in_a_cached_row_stops_the_run(home, tree, tmp_path):
    key = extract_key(home, "--data-root", tree / "train")
    _poison_row(home / key, 9)
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--method", "ts",
               "--run-dir", tmp_path / "run")
    one_line_error(r, "NaN or inf", key, "row 9")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "checkpoint-last.pt").exists()


@pytest.mark.parametrize("flags, needle", [
    (("--temperature", "0"), "--temperature"),
    (("--temperature", "nan"), "--temperature"),
    (("--lambda-mse", "-1"), "--lambda-mse"),
    (("--lr", "0"), "--lr"),
    (("--momentum", "1.5"), "--momentum"),
    (("--image-size", "0"), "--image-size"),
    (("--content-check", "some"), "--content-check"),
])
def test_method_and_optimiser_flags_are_validated(home, tree, tmp_path, flags, needle):
    r = invoke("distill", *DISTILL, "--data-root", tree, "--method", "ce", *flags, "--run-dir", tmp_path / "run")
    one_line_error(r, needle)
    assert not (tmp_path / "run").exists()  # a refused run leaves no directory behind


def test_diverging_loss_is_an_error_not_a_summary(home, tree, tmp_path):
    key = extract_key(home, "--data-root", tree / "train")
    r = invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key, "--method", "ts", "--lr", "1e30",
               "--lambda-mse", "1e30", "--run-dir", tmp_path / "run")
    one_line_error(r, "NaN or inf")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_extract_refuses_non_finite_teacher_rows(home, tmp_path, monkeypatch):
    """float16 overflows at 65504: a teacher whose features exceed it is refused, not cached as inf."""
    from featcache.models import teachers

    real = teachers.ConvNet.forward_features
    monkeypatch.setattr(teachers.ConvNet, "forward_features", lambda self, x: real(self, x) * 1e9)
    r = invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=8",
               "--image-size", "32", "--workers", "0")
    one_line_error(r, "NaN or inf", "--dtype float32")
    r = invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=8",
               "--image-size", "32", "--workers", "0", "--dtype", "float32")
    assert r.exit_code == 0, r.output


# -- 5. one process per run directory --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_distills_in_one_run_dir(home, tree, tmp_path):
    from featcache.util.locks import DirLock

    run = tmp_path / "run"
    held = DirLock(run, "run directory").acquire()
    try:
        r = invoke("distill", *DISTILL, "--data-root", tree, "--method", "ce", "--run-dir", run)
        one_line_error(r, str(run), f"pid {os.getpid()}", "--run-dir")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        held.release()
    # A second process, for real: the first trains, the second is refused while it does.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATCACHE_HOME": str(home)}
    args = [sys.executable, "-m", "featcache", "distill", *DISTILL, "--data-root", str(tree), "--method", "ce",
            "--run-dir", str(run)]
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


# -- 6. the manifest says what the features are ----------------------------------------------------------------------
def test_feature_layer_is_the_models_own(home, tmp_path):
    r = invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=8",
               "--image-size", "32", "--workers", "0")
    key = r.output.split("cache ")[1].split(":")[0].strip()
    assert "global average pool" in Manifest.load(home / key).teacher.feature_layer
    one_line_error(invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "synthetic",
                          "--image-size", "0"), "--image-size")


# -- full and read-only disks ----------------------------------------------------------------------------------------
SYN_EXTRACT = ("--teacher", "resnet18", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=2000",
               "--image-size", "32", "--workers", "0")


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    import featcache.extract as ex

    disk = tmp_path / "disk"
    real = mount_tmpfs(disk, "1m")
    try:
        # Up front: the pending shards' size is known, so a disk too small is refused before any write.
        if real:
            r = invoke("extract", *SYN_EXTRACT, "--cache-dir", disk)
            one_line_error(r, "MiB", "free")
        # While writing (another process fills the disk after the check): the writer's error, one line.
        monkeypatch.setattr(ex.sweep, "check_space", lambda *a, **k: 0)
        if not real:  # simulate ENOSPC from HDF5 on the second shard
            import h5py

            calls = {"n": 0}
            real_close = h5py.File.close

            def failing_close(self):
                calls["n"] += 1
                if calls["n"] == 2 and self.mode == "r+":
                    real_close(self)
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_close(self)

            monkeypatch.setattr(h5py.File, "close", failing_close)
        r = invoke("extract", *SYN_EXTRACT, "--cache-dir", disk, "--shard-rows", "1024")
        one_line_error(r, "disk space", "re-run")
        leftovers = [p.name for p in disk.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [], leftovers
    finally:
        if real:
            umount(disk)


def test_read_only_store_is_one_line(tmp_path, monkeypatch):
    store = tmp_path / "ro"
    real = mount_tmpfs(store, "8m")
    try:
        r = invoke("extract", *SYN_EXTRACT[:-4], "-o", "num_train=16", "--image-size", "32", "--workers", "0",
                   "--cache-dir", store)
        assert r.exit_code == 0, r.output
        key = r.output.split("cache ")[1].split(":")[0].strip()
        if real:
            subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        elif os.geteuid() != 0:
            for p in [store, *store.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
        else:  # root without mount rights: simulate the read-only file system
            import errno

            import featcache.util.locks as locks

            def ro_open(*a, **k):
                raise OSError(errno.EROFS, "Read-only file system")

            monkeypatch.setattr(locks.os, "open", ro_open)
            monkeypatch.setattr("featcache.cache.store.shutil.rmtree", ro_open)
        # Reading works: an existing cache is found, listed, verified, distilled from.
        r = invoke("extract", *SYN_EXTRACT[:-4], "-o", "num_train=16", "--image-size", "32", "--workers", "0",
                   "--cache-dir", store)
        assert r.exit_code == 0 and "nothing to do" in flat(r), r.output
        assert invoke("cache", "verify", "--cache-dir", store).exit_code == 0
        # Writing is refused in one line: a new key, rm, a run directory inside it.
        one_line_error(invoke("extract", *SYN_EXTRACT[:-4], "-o", "num_train=17", "--image-size", "32", "--workers",
                              "0", "--cache-dir", store), "read-only" if real else "")
        one_line_error(invoke("cache", "rm", key, "--cache-dir", store), key)
        assert (store / key / "manifest.json").is_file()
    finally:
        if real:
            umount(store)


# -- bad images --------------------------------------------------------------------------------------------------
def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (PIL cannot write one): IHDR bit depth 16, colour type 2, rows filtered with type 0."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_pngs_decode_to_8_bits_alone_or_mixed(home, tree, tmp_path):
    from featcache.datasets.base import read_image_file

    px = np.random.default_rng(0).integers(0, 65536, size=(32, 32, 3), dtype=np.uint16)
    write_png16(tmp_path / "a.png", px)
    img = read_image_file(tmp_path / "a.png")
    assert img.dtype == torch_uint8() and img.shape == (3, 32, 32)
    expected = (px.astype(np.int64) * 255 + 32767) // 65535
    assert np.array_equal(img.permute(1, 2, 0).numpy(), expected.astype(np.uint8))
    for k in range(3):  # a folder that mixes 16-bit PNGs with the 8-bit images
        write_png16(tree / "train" / "cat" / f"deep{k}.png", px)
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train", "--workers", "2")
    assert r.exit_code == 0, r.output


def torch_uint8():
    import torch

    return torch.uint8


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_empty_image_is_named_in_one_line(home, tree, workers):
    (tree / "train" / "dog" / "zero.jpg").write_bytes(b"")
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train", "--workers", workers)
    one_line_error(r, "zero.jpg", "empty")
    (tree / "train" / "dog" / "zero.jpg").write_bytes(b"not an image at all")
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train", "--workers", workers)
    one_line_error(r, "zero.jpg", "not a readable image")


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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", KILL_DISTILL, str(full)], env=env, capture_output=True).returncode == 0
    return full


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-epoch", "after-checkpoint"])
def test_kill_9_during_distill_resumes_bit_exact(home, tmp_path, when, uninterrupted):
    import signal
    import time

    import torch

    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATCACHE_HOME": str(home)}
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


# -- the store: orphans, rm during an extract, timing of resumed extracts ------------------------------------------
@pytest.mark.slow
def test_orphaned_shards_are_listed_and_removable(home, tree):
    key = extract_key(home, "--data-root", tree / "train")
    (home / key / "manifest.json").unlink()
    r = invoke("cache", "ls")
    assert r.exit_code == 0 and "orphaned" in r.output
    assert invoke("cache", "verify").exit_code == 1
    one_line_error(invoke("distill", *DISTILL, "--data-root", tree, "--teacher", key), "cache rm")
    r = invoke("cache", "rm", key)
    assert r.exit_code == 0 and not (home / key).exists()


@pytest.mark.slow
def test_rm_of_a_cache_being_written_says_what_to_do(home, tree):
    from featcache.cache import CacheLock

    key = extract_key(home, "--data-root", tree / "train")
    lock = CacheLock(home / key).acquire()
    try:
        text = one_line_error(invoke("cache", "rm", key), key, "let its extract finish")
        assert "--no-wait" not in text
    finally:
        lock.release()


def test_resumed_extract_timing_covers_every_attempt(home, tree, monkeypatch):
    """A kill after the last shard, before the final write, used to leave "0 img/s over 0.0 s"."""
    import featcache.extract as ex

    real = ex.finish

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process died after every shard was recorded

    monkeypatch.setattr(ex, "finish", killed)
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert r.exit_code == 130
    monkeypatch.setattr(ex, "finish", real)
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert r.exit_code == 0 and "0 img/s" not in r.output, r.output
    key = r.output.split("cache ")[1].split(":")[0].strip()
    timing = Manifest.load(home / key).timing
    assert timing.images == 18 and timing.seconds > 0 and timing.images_per_s > 0


# -- a re-extract that finds its cache answers without torch (featcache/cache/requests.py) ------------------------
def test_repeated_extract_is_answered_from_the_remembered_request(home, tree, monkeypatch):
    import featcache.extract as extract_module

    key = extract_key(home, "--data-root", tree / "train")
    assert len(list((home / "requests").glob("*.json"))) == 1
    assert [e.key for e in CacheStore(home).entries()] == [key]  # the requests folder is not a cache

    def must_not_run(*a, **k):
        raise AssertionError("the full extract path ran")

    monkeypatch.setattr(extract_module, "extract", must_not_run)
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert r.exit_code == 0 and "nothing to do" in flat(r) and key in r.output, r.output
    monkeypatch.undo()
    monkeypatch.setenv("FEATCACHE_HOME", str(home))
    # Anything the request read changes -> the full path decides (here: a new image, a new key).
    make_tree(tree / "train", per_class=7)
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in flat(r) and key not in r.output, r.output


def test_remembered_request_still_checks_shards_and_content(home, tree, monkeypatch):
    key = extract_key(home, "--data-root", tree / "train")
    shard = sorted((home / key).glob("data-*.h5"))[0]
    _flip_byte(shard)
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")  # full path: the damaged shard is redone
    assert r.exit_code == 0 and "nothing to do" not in flat(r), r.output
    assert invoke("cache", "verify", key).exit_code == 0
    # Content changed behind an unchanged size and mtime: the recall re-hashes its sample and falls through.
    from featcache.cache import requests

    memo = json.loads(next((home / "requests").glob("*.json")).read_text())
    assert memo["key"] == key and len(memo["sample"]) == 18  # every image of this small split
    for p in sorted((tree / "train").rglob("*.png")):
        st = p.stat()
        data = bytearray(p.read_bytes())
        data[-20] ^= 0xFF
        p.write_bytes(bytes(data))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert requests.recall(home, memo["request"]) is None


# -- datasets that are not what they look like (issue 22, class 4) -------------------------------------------------
TEACH = ("--teacher", "convnet", "--dataset", "folder", "--workers", "0", "--epochs", "1", "--batch-size", "8",
         "--device", "cpu", "--init", "random")


def test_a_root_holding_only_train_is_not_one_class_called_train(home, tmp_path):
    """It was: extract's teacher top-1 100 % over one class "train", and distill -o holdout a 100 % test accuracy."""
    root = make_tree(tmp_path / "d" / "train").parent
    one_line_error(invoke("extract", *EXTRACT, "--data-root", root), "only split folders (train/)", str(root / "test"))
    one_line_error(invoke("extract", *EXTRACT, "--data-root", root, "--split", "test"), "only split folders")
    r = invoke("distill", *DISTILL, "--data-root", root, "-o", "holdout=0.34", "--run-dir", tmp_path / "run")
    one_line_error(r, "only split folders", "holdout")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_test_folder_copied_from_train_is_refused(home, tree, tmp_path):
    shutil.rmtree(tree / "test")
    shutil.copytree(tree / "train", tree / "test")
    r = invoke("distill", *DISTILL, "--data-root", tree, "--run-dir", tmp_path / "run")
    one_line_error(r, "18 of the test split's 18 images are byte-identical copies", "train")
    r = invoke("train-teacher", *TEACH, "--data-root", tree, "--run-dir", tmp_path / "teacher")
    one_line_error(r, "byte-identical")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "teacher" / "teacher.pt").exists()


def test_one_class_is_cached_but_never_trained_on(home, tree, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(tree / "train" / "cat", one / "train" / "cat")
    shutil.copytree(tree / "test" / "cat", one / "test" / "cat")
    assert invoke("extract", *EXTRACT, "--data-root", one).exit_code == 0  # features of one class: a fine cache
    one_line_error(invoke("distill", *DISTILL, "--data-root", one, "--run-dir", tmp_path / "run"), "1 class", "'cat'")
    one_line_error(invoke("train-teacher", *TEACH, "--data-root", one, "--run-dir", tmp_path / "t1"), "'cat'")
    (tmp_path / "dog.txt").write_text("dog\n")  # a class subset of one class
    r = invoke("train-teacher", *TEACH, "--data-root", tree, "--classes", tmp_path / "dog.txt", "--run-dir",
               tmp_path / "t2")
    one_line_error(r, "'dog'", "--classes")


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of width x height zero pixels: ~0.2 MB that decodes to width*height*3 bytes of RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(bytes(height * (1 + (width + 7) // 8)), 1)  # filter byte 0 + packed bits, all zero
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_it_is_decoded(home, tree, monkeypatch):
    from featcache.datasets import images as base  # where every format decodes

    bomb = png_bomb(20_000, 20_000)  # 1.2 GB of RGB once decoded
    assert len(bomb) < 300_000
    (tree / "train" / "dog" / "bomb.png").write_bytes(bomb)
    real = base._decode_image

    def guarded(data, *a, **k):
        assert len(data) != len(bomb), "the bomb was decoded"
        return real(data, *a, **k)

    monkeypatch.setattr(base, "_decode_image", guarded)
    monkeypatch.setattr(base, "_pil_rgb", lambda data: pytest.fail("the bomb was decoded by PIL"))
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train")
    one_line_error(r, "bomb.png", "20,000 x 20,000 = 400,000,000 pixels", "limit of 89,478,485",
                   "FEATCACHE_MAX_IMAGE_PIXELS=400000000")


@pytest.mark.slow  # two loader workers start twice: ~1 s
def test_the_pixel_limit_reaches_the_loader_workers(home, tree, monkeypatch):
    monkeypatch.setenv("FEATCACHE_MAX_IMAGE_PIXELS", "1000")  # the tree's 32 x 32 images are 1,024 pixels
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train", "--workers", "2")
    one_line_error(r, ".png is 32 x 32 = 1,024 pixels", "limit of 1,000", "FEATCACHE_MAX_IMAGE_PIXELS=1024")
    monkeypatch.setenv("FEATCACHE_MAX_IMAGE_PIXELS", "1024")
    r = invoke("extract", *EXTRACT, "--data-root", tree / "train", "--workers", "2")
    assert r.exit_code == 0, r.output
