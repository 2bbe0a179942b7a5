"""Shared fixtures: the real CIFAR-10 JPEG tree (session-scoped) and tiny datasets in their official layouts.

The tiny-dataset fixtures are function-scoped because error tests damage their copy; each takes milliseconds.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import (
    CIFAR10_NAMES,
    CUB_CLASSES,
    REPO,
    SOD_PET_DOGS,
    SOD_STANFORD_DIRS,
    SYN_DISTILL,
    SYN_EXTRACT,
    invoke,
    make_tree,
    write_image,
)

# The tests call the library in this process as the CLI would: with the short OpenMP spin the CLI sets before torch
# loads (featcache/cli/__init__.py), so torch's idle threads yield a busy CPU instead of spinning on it. Without
# it the minutes-long tests (the demo) ran many times slower on a shared 2-core machine.
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = "10000"


# -- CUDA-only tests -------------------------------------------------------------------------------------------------
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpu`` runs only where CUDA is available; elsewhere it is skipped and says why."""
    if next(item.iter_markers(name="gpu"), None) is None:
        return
    import torch  # only for marked tests: collecting the suite stays torch-free here

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (marked gpu): none is available here")


# -- offline by construction ---------------------------------------------------------------------------------------
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@pytest.fixture(autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as CI does: no network, an empty torch hub cache and an empty Hugging Face cache (timm's
    weights). A test that tried to fetch weights or
    data would fail here with an error naming the address, instead of passing only where the network happens to be
    up. Loopback stays open (torchrun's gloo rendezvous in test_distributed)."""
    import socket

    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home-empty"))
    monkeypatch.setenv("FEATCACHE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf-cache-empty"))
    monkeypatch.delenv("HF_HOME", raising=False)
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in _LOCAL_HOSTS:
            raise OSError(f"tests run offline: a connection to {address} was attempted")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


# -- the real CIFAR-10 JPEG tarball ------------------------------------------------------------------------------
def _cifar10_tar() -> Path:
    env = os.environ.get("FEATCACHE_CIFAR10_TAR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def cifar10_jpg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 as JPEGs: a directory holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``.

    Extracted once per session from ../shared/data/cifar10-jpg.tar.gz (or $FEATCACHE_CIFAR10_TAR); tests that
    use it are skipped when the tarball is absent (a fresh clone without ../shared).
    """
    tar = _cifar10_tar()
    if not tar.is_file():
        pytest.skip(f"real CIFAR-10 tarball not found at {tar} (set FEATCACHE_CIFAR10_TAR)")
    out = tmp_path_factory.mktemp("cifar10_jpg")
    if shutil.which("tar"):
        subprocess.run(["tar", "xzf", str(tar), "-C", str(out)], check=True)  # ~3x faster than tarfile
    else:
        with tarfile.open(tar) as tf:
            try:
                tf.extractall(out, filter="data")
            except TypeError:  # Python without extraction filters
                tf.extractall(out)
    for candidate in (out / "cifar10-jpg", out):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    found = next((p.parent for p in out.rglob("train") if (p.parent / "test").is_dir()), None)
    if found is None:
        pytest.fail(f"{tar} does not contain train/ and test/ folders")
    return found


# -- tiny CIFAR ---------------------------------------------------------------------------------------------------
def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_batch(n: int, seed: int, num_classes: int, label_key: bytes, name: str) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": name.encode(),
        label_key: [int(x) for x in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar10_pickle_root(tmp_path: Path) -> Path:
    """``ROOT/cifar-10-batches-py``: five 4-image train batches and a 6-image test batch; returns ``ROOT``."""
    tmp_path = tmp_path / "cifar10_pickle"
    d = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _dump(d / f"data_batch_{i}", _cifar_batch(4, i, 10, b"labels", f"training batch {i} of 5"))
    _dump(d / "test_batch", _cifar_batch(6, 0, 10, b"labels", "testing batch 1 of 1"))
    _dump(d / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072})
    return tmp_path


@pytest.fixture
def cifar100_pickle_root(tmp_path: Path) -> Path:
    """``ROOT/cifar-100-python`` with 7 train and 3 test images (fine + coarse labels); returns ``ROOT``."""
    from featcache.datasets.cifar import CIFAR100_CLASSES

    tmp_path = tmp_path / "cifar100_pickle"
    d = tmp_path / "cifar-100-python"
    for name, n, seed in (("train", 7, 1), ("test", 3, 2)):
        batch = _cifar_batch(n, seed, 100, b"fine_labels", name)
        batch[b"coarse_labels"] = [x // 5 for x in batch[b"fine_labels"]]
        _dump(d / name, batch)
    _dump(
        d / "meta",
        {
            b"fine_label_names": [n.encode() for n in CIFAR100_CLASSES],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        },
    )
    return tmp_path


@pytest.fixture
def cifar10_folder_root(tmp_path: Path) -> Path:
    """``ROOT/{train,test}/<class>/NNNN.png``: 2 train and 1 test image per CIFAR-10 class; returns ``ROOT``."""
    tmp_path = tmp_path / "cifar10_folder"
    for split, per_class in (("train", 2), ("test", 1)):
        for c, name in enumerate(CIFAR10_NAMES):
            for k in range(per_class):
                write_image(tmp_path / split / name / f"{k:04d}.png", seed=100 * c + k, size=(32, 32))
    return tmp_path


# -- tiny CUB-200-2011 --------------------------------------------------------------------------------------------


@pytest.fixture
def cub_tree(tmp_path: Path) -> Path:
    """``ROOT/CUB_200_2011`` with 3 classes x 3 images (1, 2 of each class train, 3 test); returns ``ROOT``."""
    tmp_path = tmp_path / "cub"
    base = tmp_path / "CUB_200_2011"
    images, labels, split = [], [], []
    n = 0
    for c, cls in enumerate(CUB_CLASSES, 1):
        for k in range(1, 4):
            n += 1
            rel = f"{cls}/{cls.split('.', 1)[1]}_{k:04d}_{n}.jpg"
            write_image(base / "images" / rel, seed=n)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
            split.append(f"{n} {1 if k < 3 else 0}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    return tmp_path


# -- tiny SOD ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sod_tree(tmp_path: Path) -> tuple[Path, Path]:
    """(data root, class table) of a tiny SOD: 3 Stanford dirs x 4 images, Pet beagle x 3 + pug x 2 dogs and 2
    Abyssinian cats (species 1, ignored). Stanford and Pet sit in their own subfolders; 4 merged classes."""
    from featcache.datasets.sod import derive_class_table, format_class_table

    root = tmp_path / "sod"
    for d_i, d in enumerate(SOD_STANFORD_DIRS):
        wnid = d.split("-", 1)[0]
        for k in range(4):
            write_image(root / "stanford_dogs" / "Images" / d / f"{wnid}_{100 + k}.jpg", seed=10 * d_i + k)
    pet = root / "oxford-iiit-pet"
    lines = ["#Image CLASS-ID SPECIES BREED-ID", "#ID: 1:37 Class ids", "#SPECIES: 1:Cat 2:Dog"]
    rows = [("Abyssinian", 1, 1, 1, 2), ("beagle", 2, 2, 1, 3), ("pug", 3, 2, 2, 2)]
    for breed, class_id, species, breed_id, count in rows:
        for k in range(1, count + 1):
            write_image(pet / "images" / f"{breed}_{k}.jpg", seed=1000 + class_id * 10 + k)
            lines.append(f"{breed}_{k} {class_id} {species} {breed_id}")
    (pet / "annotations").mkdir(parents=True)
    (pet / "annotations" / "list.txt").write_text("\n".join(lines) + "\n")
    table = root / "sod_classes_tiny.tsv"
    table.write_text(format_class_table(derive_class_table(SOD_STANFORD_DIRS, SOD_PET_DOGS)))
    return root, table


# -- a personal store, and what tests start from in it ---------------------------------------------------------------
# Each template is made once per test run (by the CLI, as a user would) and copied into the test's own tmp_path, so a
# test may damage its copy freely.
@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The personal store: ``$FEATCACHE_HOME`` = tmp_path/home (not created), no shared stores from the environment
    ($FEATCACHE_PATH), debug tracebacks off."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEATCACHE_PATH", raising=False)
    monkeypatch.delenv("FEATCACHE_DEBUG", raising=False)
    return tmp_path / "home"


def _made_by_cli(base: Path, *args) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATCACHE_HOME", str(base / "home"))
        mp.setenv("FEATCACHE_OFFLINE", "1")
        mp.delenv("FEATCACHE_DEBUG", raising=False)
        r = invoke(*args)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="session")
def _syn_cache_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("syn_cache_template")
    _made_by_cli(base, "extract", *SYN_EXTRACT)
    return base / "home"


@pytest.fixture
def syn_cache(home: Path, _syn_cache_template: Path) -> Path:
    """A complete cache (SYN_EXTRACT: 24 rows in two shards) in the personal store; returns its directory."""
    shutil.copytree(_syn_cache_template, home)
    (key,) = [p.name for p in home.iterdir() if (p / "manifest.json").is_file()]
    return home / key


@pytest.fixture(scope="session")
def _finished_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("finished_run_template")
    _made_by_cli(base, "distill", *SYN_DISTILL, "--method", "ce", "--epochs", "2", "--run-dir", base / "run")
    return base / "run"


@pytest.fixture
def finished_run(home: Path, tmp_path: Path, _finished_run_template: Path) -> Path:
    """A finished 2-epoch run (ce, no teacher, SYN_DISTILL) in tmp_path/run."""
    shutil.copytree(_finished_run_template, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(scope="session")
def _folder_tree_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder_tree_template") / "data"
    make_tree(root / "train")
    make_tree(root / "test", per_class=2, seed=5000)
    return root


@pytest.fixture
def folder_tree(tmp_path: Path, _folder_tree_template: Path) -> Path:
    """A tiny folder dataset: DIR/train (6 per class) and DIR/test (2 per class) of FOLDER_CLASSES, 32x32 PNGs."""
    shutil.copytree(_folder_tree_template, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def resnet18_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one cache: a random resnet18 on the synthetic dataset (64 train, 32 test images, 32 px).
    Shared by the modules that only read it (runs record their last use in it, which none of them checks)."""
    from featcache.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("resnet18_store")
    extract(ExtractConfig(teacher="resnet18", weights="random", dataset="synthetic",
                          dataset_options={"num_train": 64, "num_test": 32}, image_size=32, batch_size=32, workers=0,
                          cache_dir=root))
    return root


@pytest.fixture
def restore_registries():
    """For a test that registers a student or a method: the registries are as before it once it ends, so what it
    registered never shows up in another test's listing or --help."""
    from featcache.distill.methods import METHODS
    from featcache.models import registry

    models, methods = dict(registry._REGISTRY), dict(METHODS)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(models)
    METHODS.clear()
    METHODS.update(methods)
