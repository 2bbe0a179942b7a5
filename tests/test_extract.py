"""Stage 1 end to end on the synthetic dataset with small random teachers (CPU)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.cache import CacheStore, FeatureCache, Manifest
from featcache.cache.format import FEATURES, LOGITS, PART_NOISE
from featcache.cache.writer import PartWriter
from featcache.datasets import get_dataset
from featcache.errors import CacheError, CacheLockedError, CacheMismatchError, ConfigError
from featcache.extract import ExtractConfig, extract, plan_extract
from featcache.extract.manifest import key_lock
from featcache.models import create_teacher
from featcache.transforms import IMAGENET_MEAN, IMAGENET_STD, Geometry, Normalizer, TransformSpec, noise_batch
from helpers import (
    FOLDER_DISTILL,
    FOLDER_EXTRACT,
    flat,
    flip_byte,
    folder_extract_key,
    invoke,
    make_tree,
    mount_tmpfs,
    one_line_error,
    umount,
    write_image,
)

ROOT = Path(__file__).resolve().parents[1]
SYN = {"num_train": 96, "num_test": 32}


def config(tmp_path, **kw):
    base = dict(
        teacher="resnet18", weights="random", dataset="synthetic", dataset_options=dict(SYN), batch_size=32,
        workers=0, cache_dir=tmp_path / "store", shard_rows=40, image_size=32,
    )
    base.update(kw)
    return ExtractConfig(**base)


def teacher_outputs(cfg, images_uint8):
    """Run the teacher as a user would, outside featcache's extract loop."""
    plan = plan_extract(cfg)
    teacher = create_teacher(cfg.teacher, weights=cfg.weights, num_classes=plan.num_classes, seed=cfg.seed)
    x = Normalizer(plan.transform)(images_uint8, channels_last=False)
    with torch.inference_mode():
        return teacher.model.eval()(x)


@pytest.mark.slow
def test_cached_rows_equal_the_teachers_own_output(tmp_path):
    cfg = config(tmp_path, noise=10, noise_seed=5)
    result = extract(cfg)
    assert not result.reused and result.rows == 96 and result.noise_rows == 10
    ds = get_dataset("synthetic", split="train", **SYN)
    spec = result.manifest.transform
    geometry = Geometry(spec)
    images = torch.stack([geometry(ds.read_image(i)) for i in range(len(ds))])
    feats, logits = teacher_outputs(cfg, images)
    with FeatureCache(result.directory) as cache:
        cache.check_dataset(ds, spec)
        rows = cache.read_all()
        assert rows[FEATURES].dtype == np.float16 and rows[LOGITS].dtype == np.float32
        np.testing.assert_allclose(rows[FEATURES].astype(np.float32), feats.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(rows[LOGITS], logits.numpy(), rtol=1e-4, atol=1e-4)
        # Noise rows: the images are regenerated from (seed, index), never stored.
        noise = cache.read_all(PART_NOISE)
        nfeats, nlogits = teacher_outputs(cfg, noise_batch(5, range(10), 32))
        np.testing.assert_allclose(noise[FEATURES].astype(np.float32), nfeats.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(noise[LOGITS], nlogits.numpy(), rtol=1e-4, atol=1e-4)
        assert cache.gather([3], part=PART_NOISE, fields=("index",))["index"].tolist() == [3]
    m = result.manifest
    assert m.complete and m.teacher.num_features == 512 and m.teacher.classes_source == "dataset"
    assert m.teacher_accuracy == pytest.approx(float((logits.argmax(1).numpy() == ds.targets).mean()))
    assert m.versions["torch"] == torch.__version__ and m.command.startswith("featcache extract --teacher resnet18")


def test_rerun_is_a_no_op_that_builds_no_teacher(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    first = extract(cfg)

    def boom(*a, **k):
        raise AssertionError("a teacher was built for an existing cache")

    monkeypatch.setattr("featcache.extract.create_teacher", boom)
    again = extract(cfg)
    assert again.reused and again.key == first.key


@pytest.mark.slow
def test_force_redoes_the_cache(tmp_path):
    cfg = config(tmp_path)
    first = extract(cfg)
    cfg.force = True
    again = extract(cfg)
    assert not again.reused and again.key == first.key and again.images == 96


def test_key_depends_on_what_changes_the_numbers(tmp_path):
    key = lambda **kw: plan_extract(config(tmp_path, **kw)).key  # noqa: E731
    base = key()
    assert key() == base
    assert key(shard_rows=7, batch_size=5) == base  # layout and batching do not change numbers
    assert key(seed=1) != base  # other weights
    assert key(image_size=40) != base
    assert key(dtype="float32") != base
    assert key(split="test") != base
    assert key(noise=4) != base
    assert key(dataset_options={**SYN, "seed": 3}) != base
    assert base.startswith("resnet18-synthetic-train-")


@pytest.mark.slow
def test_interrupted_extract_resumes_only_unfinished_shards(tmp_path, monkeypatch):
    cfg = config(tmp_path)  # 96 rows, shards of 40 -> 3 shards
    real_finish = PartWriter._finish
    calls = {"n": 0}

    def crash_after_first(self, number):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_finish(self, number)

    monkeypatch.setattr(PartWriter, "_finish", crash_after_first)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(cfg)
    monkeypatch.setattr(PartWriter, "_finish", real_finish)
    plan = plan_extract(cfg)
    assert not plan.directory.exists()  # a partial cache is never visible under its key
    (work,) = (plan.store / ".incoming").glob(f"{plan.key}@*")  # the extract's private work directory
    m = Manifest.load(work)
    assert not m.complete and [s.number for s in m.shards] == [0]
    assert not list(work.glob("*.tmp"))  # the partial shard was discarded
    with pytest.raises(CacheError, match="no cache"):
        CacheStore(cfg.cache_dir).open(plan.key)
    resumed = extract(cfg)
    assert resumed.images == 96 - 40  # only shards 1 and 2 were recomputed
    assert not list((plan.store / ".incoming").glob(f"{plan.key}@*"))  # adopted, then renamed into place
    clean = extract(config(tmp_path / "clean"))
    with FeatureCache(resumed.directory) as a, FeatureCache(clean.directory) as b:
        np.testing.assert_array_equal(a.read_all()[FEATURES], b.read_all()[FEATURES])


@pytest.mark.slow
def test_damaged_recorded_shard_is_redone(tmp_path):
    cfg = config(tmp_path)
    first = extract(cfg)
    m = first.manifest
    m.complete = False
    m.save(first.directory)
    shard = first.directory / m.shards[1].file
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    again = extract(cfg)
    assert again.images == 40 and again.manifest.complete
    assert CacheStore(cfg.cache_dir).verify(first.key).ok


KILL_SCRIPT = r"""
import sys, time
from pathlib import Path
import featcache.datasets.synthetic as syn
from featcache.extract import ExtractConfig, extract

slow = syn.SyntheticShapes.read_image
def read_image(self, i):  # slow the producer down so the parent can kill mid-run
    time.sleep(0.02)
    return slow(self, i)
syn.SyntheticShapes.read_image = read_image
extract(ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic",
        dataset_options={"num_train": 96, "num_test": 32}, batch_size=8, workers=0,
        cache_dir=Path(sys.argv[1]), shard_rows=40, image_size=32))
"""


@pytest.mark.slow
def test_kill_9_mid_extract_then_resume(tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(store)], env=env)
    key = plan_extract(config(tmp_path)).key
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            manifest = next((store / ".incoming").glob(f"{key}@*/manifest.json"), None)  # the private work dir
            if manifest is not None:
                try:
                    if json.loads(manifest.read_text())["shards"]:
                        break
                except (OSError, ValueError, KeyError):
                    pass
            if proc.poll() is not None:
                pytest.fail("extract subprocess ended before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no shard was written in time")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (store / key).exists()  # nothing half-written is visible under the key
    m = Manifest.load(manifest.parent)
    assert not m.complete and 1 <= len(m.shards) < 3
    resumed = extract(config(tmp_path))
    assert resumed.manifest.complete and resumed.images == 96 - 40 * len(m.shards)
    assert CacheStore(store).verify(key).ok


@pytest.mark.slow
def test_second_writer_waits_or_exits(tmp_path):
    cfg = config(tmp_path)
    plan = plan_extract(cfg)
    lock = key_lock(plan).acquire()
    cfg.wait = False
    with pytest.raises(CacheLockedError, match=f"pid {os.getpid()}"):
        extract(cfg)
    cfg.wait = True
    result = {}
    messages = []

    class Rep:
        def message(self, text):
            messages.append(text)

        def start(self, *a, **k):
            pass

        def advance(self, *a, **k):
            pass

        def stop(self):
            pass

    t = threading.Thread(target=lambda: result.setdefault("r", extract(cfg, reporter=Rep())))
    t.start()
    time.sleep(0.5)
    assert t.is_alive() and any("waiting" in m for m in messages)
    lock.release()
    t.join(timeout=120)
    assert result["r"].manifest.complete


def test_cache_refuses_other_split_and_transform(tmp_path):
    result = extract(config(tmp_path))
    with FeatureCache(result.directory) as cache:
        with pytest.raises(CacheMismatchError, match=r"split differ .*--split test"):
            cache.check_dataset(get_dataset("synthetic", split="test", **SYN))
        with pytest.raises(CacheMismatchError, match="dataset parameters"):
            cache.check_dataset(get_dataset("synthetic", split="train", **{**SYN, "seed": 9}))
        other = dataclasses.replace(result.manifest.transform, image_size=16, resize=16)
        with pytest.raises(CacheMismatchError, match="transform.image_size"):
            cache.check_dataset(get_dataset("synthetic", split="train", **SYN), other)


def test_float32_features(tmp_path):
    result = extract(config(tmp_path, dtype="float32", logits_dtype="float16"))
    with FeatureCache(result.directory) as cache:
        rows = cache.gather([0, 95])
        assert rows[FEATURES].dtype == np.float32 and rows[LOGITS].dtype == np.float16


@pytest.mark.slow
def test_block_features_are_cached_pooled_and_exact(tmp_path):
    import torch.nn.functional as F

    from featcache.cache.format import block_field

    cfg = config(tmp_path, blocks=["layer2", "layer4"], pool=2)
    result = extract(cfg)
    m = result.manifest
    assert [(b.name, b.channels, b.dim) for b in m.blocks] == [("layer2", 128, 512), ("layer4", 512, 2048)]
    assert result.key != extract(config(tmp_path)).key  # blocks are part of the key
    ds = get_dataset("synthetic", split="train", **SYN)
    spec = m.transform
    images = torch.stack([Geometry(spec)(ds.read_image(i)) for i in range(8)])
    plan = plan_extract(cfg)
    teacher = create_teacher(cfg.teacher, weights=cfg.weights, num_classes=plan.num_classes, seed=cfg.seed)
    net = teacher.model.eval()
    seen = {}
    net.net.layer2.register_forward_hook(lambda mod, i, o: seen.__setitem__("layer2", o))
    with torch.inference_mode():
        net(Normalizer(spec)(images, channels_last=False))
    expected = F.adaptive_avg_pool2d(seen["layer2"], 2).flatten(1)
    with FeatureCache(result.directory) as cache:
        rows = cache.gather(np.arange(8), fields=(block_field("layer2"),))[block_field("layer2")]
        assert cache.row_bytes((block_field("layer4"),)) == 2048 * 2
    np.testing.assert_allclose(rows.astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)


def test_block_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such module"):
        extract(config(tmp_path, blocks=["layer9"]))
    with pytest.raises(ConfigError, match="named twice"):
        plan_extract(config(tmp_path, blocks=["layer1", "layer1"]))


# -- 2. changed images never reuse old rows -----------------------------------------------------------------------
def test_images_overwritten_in_place_are_re_extracted_and_the_old_cache_refused(home, folder_tree, tmp_path):
    key = folder_extract_key("--data-root", folder_tree / "train")
    again = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert "nothing to do" in flat(again)
    make_tree(folder_tree / "train", seed=777)  # every image rewritten, same names
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in flat(r), r.output
    assert key not in r.output  # a new key: the dataset identity covers the content
    # The old cache, named by key, is refused by distill.
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--run-dir", tmp_path / "run")
    one_line_error(r, key, "image files")


def test_content_changed_behind_unchanged_size_and_mtime_is_caught(home, tmp_path):
    folder_tree = tmp_path / "data"
    make_tree(folder_tree / "train", ext="bmp")  # uncompressed: other pixels, the same file size
    make_tree(folder_tree / "test", per_class=2, seed=5000)
    key = folder_extract_key("--data-root", folder_tree / "train")
    for p in sorted((folder_tree / "train").rglob("*.bmp")):
        st = p.stat()
        write_image(p, seed=st.st_size + len(str(p)), size=(32, 32))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert p.stat().st_size == st.st_size
    # The fingerprint still matches, but the re-hash of the sampled images does not.
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--run-dir", tmp_path / "run")
    one_line_error(r, key, "changed since the extract", "--force")
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    one_line_error(r, key, "--force")
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train", "--force")
    assert r.exit_code == 0, r.output
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output


# -- 3 and 7. a damaged shard is never read, and a re-extract repairs it --------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_is_refused_by_distill_and_redone_by_extract(home, folder_tree, tmp_path, damage):
    key = folder_extract_key("--data-root", folder_tree / "train")
    shard = sorted((home / key).glob("data-*.h5"))[1]
    if damage == "flip":
        flip_byte(shard)
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    r = invoke("cache", "verify", key)
    assert r.exit_code == 1 and ("corrupt" if damage == "flip" else "truncated") in r.output
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--run-dir", tmp_path / "run")
    one_line_error(r, key, shard.name, "featcache extract")
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()
    # Not "nothing to do": the shard is redone.
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 0 and "nothing to do" not in flat(r) and key in r.output, r.output
    assert invoke("cache", "verify", key).exit_code == 0
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", folder_tree, "--teacher", key, "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output


def test_a_shard_is_hashed_once_per_process(home, folder_tree, monkeypatch):
    from featcache.cache import reader

    key = folder_extract_key("--data-root", folder_tree / "train")
    calls = []
    monkeypatch.setattr(reader, "file_sha256",
                        lambda p: calls.append(p) or __import__("featcache.util.hashing").util.hashing.file_sha256(p))
    reader._VERIFIED.clear()
    for _ in range(2):
        with CacheStore(home).open(key) as cache:
            cache.read_all()
    assert len(calls) == len(list((home / key).glob("data-*.h5")))


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


# -- 6. the manifest says what the features are ----------------------------------------------------------------------
def test_feature_layer_is_the_models_own(home, tmp_path):
    r = invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=8",
               "--image-size", "32", "--workers", "0")
    key = r.output.split("cache ")[1].split(":")[0].strip()
    assert "global average pool" in Manifest.load(home / key).teacher.feature_layer
    one_line_error(invoke("extract", "--teacher", "convnet", "--weights", "random", "--dataset", "synthetic",
                          "--image-size", "0"), "--image-size")


# -- full and read-only disks ----------------------------------------------------------------------------------------
LARGE_SYN_EXTRACT = ("--teacher", "resnet18", "--weights", "random", "--dataset", "synthetic", "-o", "num_train=2000",
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
            r = invoke("extract", *LARGE_SYN_EXTRACT, "--cache-dir", disk)
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
        r = invoke("extract", *LARGE_SYN_EXTRACT, "--cache-dir", disk, "--shard-rows", "1024")
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
        r = invoke("extract", *LARGE_SYN_EXTRACT[:-4], "-o", "num_train=16", "--image-size", "32", "--workers", "0",
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
        r = invoke("extract", *LARGE_SYN_EXTRACT[:-4], "-o", "num_train=16", "--image-size", "32", "--workers", "0",
                   "--cache-dir", store)
        assert r.exit_code == 0 and "nothing to do" in flat(r), r.output
        assert invoke("cache", "verify", "--cache-dir", store).exit_code == 0
        # Writing is refused in one line: a new key, rm, a run directory inside it.
        one_line_error(invoke("extract", *LARGE_SYN_EXTRACT[:-4], "-o", "num_train=17", "--image-size", "32",
                              "--workers", "0", "--cache-dir", store), "read-only" if real else "")
        one_line_error(invoke("cache", "rm", key, "--cache-dir", store), key)
        assert (store / key / "manifest.json").is_file()
    finally:
        if real:
            umount(store)


def test_resumed_extract_timing_covers_every_attempt(home, folder_tree, monkeypatch):
    """A kill after the last shard, before the final write, used to leave "0 img/s over 0.0 s"."""
    import featcache.extract as ex

    real = ex.finish

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process died after every shard was recorded

    monkeypatch.setattr(ex, "finish", killed)
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 130
    monkeypatch.setattr(ex, "finish", real)
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    assert r.exit_code == 0 and "0 img/s" not in r.output, r.output
    key = r.output.split("cache ")[1].split(":")[0].strip()
    timing = Manifest.load(home / key).timing
    assert timing.images == 18 and timing.seconds > 0 and timing.images_per_s > 0


# -- the view a teacher sees by default (docs/guide.md, "Which view a teacher sees") ---------------------------------


def _on_raw_images(teacher, dataset):
    """The teacher on the images exactly as stored, ImageNet-normalised, computed here without featcache's view."""
    images = torch.stack([dataset.read_image(i) for i in range(len(dataset))]).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return teacher.model.eval()((images - mean) / std)


@pytest.mark.parametrize("name", ["resnet18", "convnet"])
def test_32px_folder_images_reach_the_teacher_as_they_are(home, folder_tree, tmp_path, name):
    """A user's own checkpoint (resnet18, whose recipe is 224 px) and a 32 px teacher's recipe (convnet) both see
    the 32 px images unzoomed: no resize, no crop."""
    ckpt = tmp_path / "mine.pt"
    model = create_teacher(name, weights="random", num_classes=3, seed=3).model
    torch.save(model.torchvision_state_dict() if name == "resnet18" else model.state_dict(), ckpt)  # as users save
    r = invoke("extract", *FOLDER_EXTRACT, "--teacher", name, "--weights", ckpt, "--data-root", folder_tree / "train",
               "--dtype", "float32")
    assert r.exit_code == 0, r.output
    assert "view 32 px: whole image resized to 32x32 (bilinear; none if already 32x32), no crop" in flat(r)
    key = r.output.split("cache ")[1].split(":")[0].strip()
    m = Manifest.load(home / key)
    assert (m.transform.image_size, m.transform.resize, m.transform.resize_mode) == (32, 32, "square")
    feats, logits = _on_raw_images(create_teacher(name, weights=str(ckpt)),
                                   get_dataset("folder", folder_tree / "train", "train"))
    with FeatureCache(home / key) as cache:
        rows = cache.read_all()
    np.testing.assert_allclose(rows[FEATURES], feats.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows[LOGITS], logits.numpy(), rtol=1e-5, atol=1e-5)


def test_a_mixed_size_folder_gets_one_resize_and_crop_for_every_image(home, folder_tree):
    write_image(folder_tree / "train" / "cat" / "wide.png", 9, size=(48, 32))
    key = folder_extract_key("--data-root", folder_tree / "train")
    m = Manifest.load(home / key)
    assert m.transform == TransformSpec(image_size=32, resize=37, resize_mode="square")  # convnet's recipe, for all
    assert m.rows["data"] == 19


def test_large_images_of_one_size_are_left_as_they_are_only_at_their_size(tmp_path):
    root = make_tree(tmp_path / "big", per_class=1, size=(160, 160))
    ckpt = tmp_path / "mine.pt"
    torch.save(create_teacher("convnet", weights="random", num_classes=3).model.state_dict(), ckpt)
    at = dict(dataset="folder", data_root=root, dataset_options={"holdout": 0.5}, teacher="convnet")
    identity = TransformSpec(image_size=160, resize=160, resize_mode="square")
    assert plan_extract(config(tmp_path, **at, image_size=160)).transform == identity
    assert plan_extract(config(tmp_path, **at, image_size=None, weights=str(ckpt))).transform == identity  # yours
    assert plan_extract(config(tmp_path, **at, image_size=64)).transform == TransformSpec(image_size=64, resize=73,
                                                                                          resize_mode="square")
