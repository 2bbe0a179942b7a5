"""Dataset parsers: official layouts written tiny into tmp_path, the SOD table and split rule, synthetic shapes."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from featcache.cache import FeatureCache
from featcache.datasets import get_dataset, list_datasets
from featcache.datasets import sod as sod_mod
from featcache.datasets.base import ImageDataset
from featcache.errors import CacheMismatchError, ConfigError, DatasetError
from featcache.extract import ExtractConfig, extract
from featcache.util.resources import data_path
from helpers import (
    CIFAR10_NAMES,
    CUB_CLASSES,
    FOLDER_DISTILL,
    FOLDER_EXTRACT,
    FOLDER_TEACH,
    SOD_PET_DOGS,
    SOD_STANFORD_DIRS,
    invoke,
    make_tree,
    one_line_error,
    write_image,
)


def raises_naming(*fragments: str | Path):
    """Context manager: a one-line DatasetError whose message contains every fragment (paths as str)."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(DatasetError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            msg = str(self.info.value)
            assert "\n" not in msg, msg
            for frag in fragments:
                assert str(frag) in msg, f"{frag!s} not in: {msg}"
            return handled

    return _Check()


def check_items(ds: ImageDataset, n: int = 3) -> None:
    """Every item is (uint8 [3,H,W] image, int label in range, int index)."""
    for i in range(min(n, len(ds))):
        image, label, index = ds[i]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
        assert image.ndim == 3 and image.shape[0] == 3
        assert type(label) is int and 0 <= label < ds.num_classes and label == ds.targets[i]
        assert type(index) is int and index == i


def test_registry_lists_every_format():
    assert {"cifar10", "cifar100", "cub200", "sod", "folder", "synthetic"} <= set(list_datasets())


# -- CIFAR ----------------------------------------------------------------------------------------------------------
def test_cifar10_pickle_layout(cifar10_pickle_root: Path):
    train = get_dataset("cifar10", cifar10_pickle_root, "train")
    test = get_dataset("cifar10", cifar10_pickle_root, "test")
    assert (len(train), len(test)) == (20, 6)
    assert train.classes == CIFAR10_NAMES and train.params == {"layout": "pickle"}
    assert train.sample_ids[:2] == ["train/00000", "train/00001"] and test.sample_ids[-1] == "test/00005"
    check_items(train)
    # Pixels and labels are the official planar rows, batch after batch.
    with open(cifar10_pickle_root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    image, label, _ = train[5]  # second image of batch 2
    assert torch.equal(image, torch.from_numpy(batch[b"data"][1].reshape(3, 32, 32)))
    assert label == batch[b"labels"][1]
    # The root may also be the pickle folder itself.
    again = get_dataset("cifar10", cifar10_pickle_root / "cifar-10-batches-py", "train")
    assert again.identity() == train.identity()


def test_cifar100_pickle_uses_fine_labels(cifar100_pickle_root: Path):
    from featcache.datasets.cifar import CIFAR100_CLASSES

    ds = get_dataset("cifar100", cifar100_pickle_root, "train")
    with open(cifar100_pickle_root / "cifar-100-python" / "train", "rb") as f:
        fine = pickle.load(f, encoding="bytes")[b"fine_labels"]
    assert len(ds) == 7 and ds.num_classes == 100 and ds.classes == list(CIFAR100_CLASSES)
    assert ds.targets.tolist() == fine
    assert len(get_dataset("cifar100", cifar100_pickle_root, "test")) == 3
    check_items(ds)


def test_cifar10_folder_layout(cifar10_folder_root: Path, tmp_path: Path):
    ds = get_dataset("cifar10", cifar10_folder_root, "train")
    assert len(ds) == 20 and ds.classes == CIFAR10_NAMES and ds.params == {"layout": "folder"}
    assert ds.sample_ids[:3] == ["airplane/0000.png", "airplane/0001.png", "automobile/0000.png"]
    assert ds.targets.tolist() == [c for c in range(10) for _ in range(2)]
    check_items(ds)
    assert ds[0][0].shape == (3, 32, 32)
    # The same tree under cifar10-jpg/ is found too.
    nested = tmp_path / "outer"
    (nested / "cifar10-jpg").mkdir(parents=True)
    for split in ("train", "test"):
        os.symlink(cifar10_folder_root / split, nested / "cifar10-jpg" / split)
    direct = get_dataset("cifar10", cifar10_folder_root, "test")
    assert get_dataset("cifar10", nested, "test").sample_ids == direct.sample_ids


def test_cifar_layouts_have_different_identities(cifar10_pickle_root: Path, cifar10_folder_root: Path):
    a = get_dataset("cifar10", cifar10_pickle_root, "train").identity()
    b = get_dataset("cifar10", cifar10_folder_root, "train").identity()
    assert a["params"] != b["params"]


def test_cifar_pickle_wins_over_folder(cifar10_pickle_root: Path):
    write_image(cifar10_pickle_root / "train" / "airplane" / "0000.png", seed=0)
    assert get_dataset("cifar10", cifar10_pickle_root, "train").params == {"layout": "pickle"}


def test_cifar_folder_errors(cifar10_folder_root: Path):
    (cifar10_folder_root / "train" / "aeroplane").mkdir()
    with raises_naming(cifar10_folder_root / "train" / "aeroplane"):
        get_dataset("cifar10", cifar10_folder_root, "train")
    (cifar10_folder_root / "train" / "aeroplane").rmdir()
    for f in (cifar10_folder_root / "test" / "truck").iterdir():
        f.unlink()
    (cifar10_folder_root / "test" / "truck").rmdir()
    with raises_naming(cifar10_folder_root / "test" / "truck", "missing"):
        get_dataset("cifar10", cifar10_folder_root, "test")


def test_cifar_pickle_errors(cifar10_pickle_root: Path):
    pdir = cifar10_pickle_root / "cifar-10-batches-py"
    (pdir / "data_batch_3").unlink()
    with raises_naming(pdir / "data_batch_3", "missing"):
        get_dataset("cifar10", cifar10_pickle_root, "train")
    (pdir / "test_batch").write_bytes(b"not a pickle at all")
    with raises_naming(pdir / "test_batch"):
        get_dataset("cifar10", cifar10_pickle_root, "test")
    with open(pdir / "batches.meta", "wb") as f:
        pickle.dump({b"num_vis": 3072}, f)
    with raises_naming(pdir / "batches.meta", "label_names"):
        get_dataset("cifar10", cifar10_pickle_root, "train")


def test_cifar_nothing_found_lists_what_was_looked_for(tmp_path: Path):
    with raises_naming(tmp_path / "cifar-10-batches-py", tmp_path / "cifar10-jpg" / "train"):
        get_dataset("cifar10", tmp_path, "train")
    with raises_naming(tmp_path / "cifar-100-python"):
        get_dataset("cifar100", tmp_path, "test")


def test_cifar_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with raises_naming("download", tmp_path, "cifar-10-python.tar.gz"):
        get_dataset("cifar10", tmp_path, "train", download=True)
    with raises_naming("download"):
        get_dataset("cifar10", tmp_path, "train", download="yes")


@pytest.mark.slow
def test_real_cifar10_jpeg_tarball(cifar10_jpg_root: Path):
    train = get_dataset("cifar10", cifar10_jpg_root, "train")
    test = get_dataset("cifar10", cifar10_jpg_root, "test")
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.classes == CIFAR10_NAMES == test.classes
    assert np.bincount(train.targets, minlength=10).tolist() == [5000] * 10
    assert np.bincount(test.targets, minlength=10).tolist() == [1000] * 10
    assert train.sample_ids[0].startswith("airplane/") and train.sample_ids[-1].startswith("truck/")
    image, label, index = train[12345]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 2 and index == 12345
    # Also reachable from the folder holding cifar10-jpg/ (the extraction directory).
    assert len(get_dataset("cifar10", cifar10_jpg_root.parent, "test")) == 10_000


# -- CUB-200-2011 --------------------------------------------------------------------------------------------------
def test_cub_splits(cub_tree: Path):
    train = get_dataset("cub200", cub_tree, "train")
    test = get_dataset("cub200", cub_tree, "test")
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == CUB_CLASSES and train.num_classes == 3
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2] and test.targets.tolist() == [0, 1, 2]
    assert test.sample_ids[0] == "001.Black_footed_Albatross/Black_footed_Albatross_0003_3.jpg"
    check_items(train)
    assert train[0][0].shape == (3, 10, 12)
    # Root may be CUB_200_2011 itself.
    assert get_dataset("cub200", cub_tree / "CUB_200_2011", "test").identity() == test.identity()


def test_cub_missing_and_malformed_files(cub_tree: Path, tmp_path: Path):
    base = cub_tree / "CUB_200_2011"
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_naming(empty / "CUB_200_2011" / "images.txt", "missing"):
        get_dataset("cub200", empty, "train")

    labels = base / "image_class_labels.txt"
    good = labels.read_text()
    labels.write_text(good.replace("4 2\n", "4\n"))
    with raises_naming(labels, "line 4"):
        get_dataset("cub200", cub_tree, "train")
    labels.write_text(good.replace("4 2\n", "4 two\n"))
    with raises_naming(labels, "line 4"):
        get_dataset("cub200", cub_tree, "train")
    labels.write_text(good.replace("4 2\n", "4 9\n"))
    with raises_naming(labels, "line 4", "label 9"):
        get_dataset("cub200", cub_tree, "train")
    labels.write_text(good)

    split = base / "train_test_split.txt"
    split.write_text(split.read_text().replace("5 1\n", "55 1\n"))
    with raises_naming(split, "55"):
        get_dataset("cub200", cub_tree, "train")

    os.remove(base / "classes.txt")
    with raises_naming(base / "classes.txt", "missing"):
        get_dataset("cub200", cub_tree, "train")


def test_cub_missing_image(cub_tree: Path):
    ds = get_dataset("cub200", cub_tree, "train")
    missing = ds.image_root / ds.sample_ids[1]
    missing.unlink()
    with raises_naming(missing):
        get_dataset("cub200", cub_tree, "train")


# -- SOD: the class table ------------------------------------------------------------------------------------------
# The two source name lists, independent of the shipped table (the table must be re-derivable from them).
STANFORD_DIRS = """
n02085620-Chihuahua n02085782-Japanese_spaniel n02085936-Maltese_dog n02086079-Pekinese n02086240-Shih-Tzu
n02086646-Blenheim_spaniel n02086910-papillon n02087046-toy_terrier n02087394-Rhodesian_ridgeback
n02088094-Afghan_hound n02088238-basset n02088364-beagle n02088466-bloodhound n02088632-bluetick
n02089078-black-and-tan_coonhound n02089867-Walker_hound n02089973-English_foxhound n02090379-redbone
n02090622-borzoi n02090721-Irish_wolfhound n02091032-Italian_greyhound n02091134-whippet n02091244-Ibizan_hound
n02091467-Norwegian_elkhound n02091635-otterhound n02091831-Saluki n02092002-Scottish_deerhound
n02092339-Weimaraner n02093256-Staffordshire_bullterrier n02093428-American_Staffordshire_terrier
n02093647-Bedlington_terrier n02093754-Border_terrier n02093859-Kerry_blue_terrier n02093991-Irish_terrier
n02094114-Norfolk_terrier n02094258-Norwich_terrier n02094433-Yorkshire_terrier n02095314-wire-haired_fox_terrier
n02095570-Lakeland_terrier n02095889-Sealyham_terrier n02096051-Airedale n02096177-cairn n02096294-Australian_terrier
n02096437-Dandie_Dinmont n02096585-Boston_bull n02097047-miniature_schnauzer n02097130-giant_schnauzer
n02097209-standard_schnauzer n02097298-Scotch_terrier n02097474-Tibetan_terrier n02097658-silky_terrier
n02098105-soft-coated_wheaten_terrier n02098286-West_Highland_white_terrier n02098413-Lhasa
n02099267-flat-coated_retriever n02099429-curly-coated_retriever n02099601-golden_retriever
n02099712-Labrador_retriever n02099849-Chesapeake_Bay_retriever n02100236-German_short-haired_pointer
n02100583-vizsla n02100735-English_setter n02100877-Irish_setter n02101006-Gordon_setter n02101388-Brittany_spaniel
n02101556-clumber n02102040-English_springer n02102177-Welsh_springer_spaniel n02102318-cocker_spaniel
n02102480-Sussex_spaniel n02102973-Irish_water_spaniel n02104029-kuvasz n02104365-schipperke n02105056-groenendael
n02105162-malinois n02105251-briard n02105412-kelpie n02105505-komondor n02105641-Old_English_sheepdog
n02105855-Shetland_sheepdog n02106030-collie n02106166-Border_collie n02106382-Bouvier_des_Flandres
n02106550-Rottweiler n02106662-German_shepherd n02107142-Doberman n02107312-miniature_pinscher
n02107574-Greater_Swiss_Mountain_dog n02107683-Bernese_mountain_dog n02107908-Appenzeller n02108000-EntleBucher
n02108089-boxer n02108422-bull_mastiff n02108551-Tibetan_mastiff n02108915-French_bulldog n02109047-Great_Dane
n02109525-Saint_Bernard n02109961-Eskimo_dog n02110063-malamute n02110185-Siberian_husky n02110627-affenpinscher
n02110806-basenji n02110958-pug n02111129-Leonberg n02111277-Newfoundland n02111500-Great_Pyrenees
n02111889-Samoyed n02112018-Pomeranian n02112137-chow n02112350-keeshond n02112706-Brabancon_griffon
n02113023-Pembroke n02113186-Cardigan n02113624-toy_poodle n02113712-miniature_poodle n02113799-standard_poodle
n02113978-Mexican_hairless n02115641-dingo n02115913-dhole n02116738-African_hunting_dog
""".split()
PET_DOG_BREEDS = """
american_bulldog american_pit_bull_terrier basset_hound beagle boxer chihuahua english_cocker_spaniel english_setter
german_shorthaired great_pyrenees havanese japanese_chin keeshond leonberger miniature_pinscher newfoundland
pomeranian pug saint_bernard samoyed scottish_terrier shiba_inu staffordshire_bull_terrier wheaten_terrier
yorkshire_terrier
""".split()
MERGED = """beagle boxer chihuahua english_setter great_pyrenees keeshond miniature_pinscher newfoundland pomeranian
pug saint_bernard samoyed staffordshire_bull_terrier yorkshire_terrier""".split()


def test_shipped_sod_table_equals_the_merge_rule():
    assert len(STANFORD_DIRS) == 120 and len(PET_DOG_BREEDS) == 25
    derived = sod_mod.derive_class_table(STANFORD_DIRS, PET_DOG_BREEDS)
    shipped_path = data_path("sod_classes.tsv")
    assert shipped_path.read_text(encoding="utf-8") == sod_mod.format_class_table(derived)
    shipped = sod_mod.read_class_table(shipped_path)
    assert shipped == derived and len(shipped) == 131
    assert sorted(r.pet_breed for r in shipped if r.stanford_dir and r.pet_breed) == MERGED
    # Canonical order: Stanford dirs by name (= wnid), then the 11 Pet-only breeds by name.
    assert [r.stanford_dir for r in shipped[:120]] == sorted(STANFORD_DIRS)
    assert [r.class_name for r in shipped[120:]] == sorted(set(PET_DOG_BREEDS) - set(MERGED))
    assert len({r.class_name for r in shipped}) == 131
    assert sorted(sod_mod.PET_DOG_BREEDS) == sorted(PET_DOG_BREEDS)


def test_merge_rule_normalisation():
    assert sod_mod.merge_key("Staffordshire_bullterrier") == sod_mod.merge_key("staffordshire_bull_terrier")
    assert sod_mod.stanford_breed("n02089078-black-and-tan_coonhound") == "black-and-tan_coonhound"
    assert sod_mod.merge_key("German_short-haired_pointer") != sod_mod.merge_key("german_shorthaired")


def test_sod_table_errors(tmp_path: Path, sod_tree):
    root, table = sod_tree
    lines = table.read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines[:2] + ["1\tonly_two_cells"] + lines[3:]) + "\n")
    with raises_naming(bad, "line 3"):
        get_dataset("sod", root, "train", classes_file=bad)
    bad.write_text("idx\tname\n" + "\n".join(lines[1:]))
    with raises_naming(bad, "line 1"):
        get_dataset("sod", root, "train", classes_file=bad)
    with raises_naming(tmp_path / "nope.tsv"):
        get_dataset("sod", root, "train", classes_file=tmp_path / "nope.tsv")


# -- SOD: loading ------------------------------------------------------------------------------------------------
def test_sod_merges_overlapping_breeds(sod_tree):
    root, table = sod_tree
    train = get_dataset("sod", root, "train", classes_file=table)
    test = get_dataset("sod", root, "test", classes_file=table)
    assert train.num_classes == 4 == len(SOD_STANFORD_DIRS) + len(SOD_PET_DOGS) - 1
    assert train.classes == ["Chihuahua", "beagle", "golden_retriever", "pug"]
    assert train.params == {"split": "rule-v1"}
    all_ids = train.sample_ids + test.sample_ids
    assert len(all_ids) == len(set(all_ids)) == 12 + 5  # cats ignored
    labels = dict(zip(all_ids, np.concatenate([train.targets, test.targets]).tolist(), strict=True))
    assert labels["stanford/n02088364-beagle/n02088364_100.jpg"] == 1 == labels["pet/beagle_2.jpg"]
    assert labels["pet/pug_1.jpg"] == 3 and labels["stanford/n02085620-Chihuahua/n02085620_103.jpg"] == 0
    assert not any("Abyssinian" in i for i in all_ids)
    assert np.bincount(np.concatenate([train.targets, test.targets])).tolist() == [4, 7, 4, 2]
    check_items(train, n=len(train))
    check_items(test, n=len(test))
    # The rule decides the split from the ids alone.
    ids = sorted(all_ids)
    mask = sod_mod.split_rule_mask(ids, [labels[i] for i in ids])
    assert sorted(test.sample_ids) == [i for i, t in zip(ids, mask, strict=True) if t]


def test_sod_sources_side_by_side(sod_tree, tmp_path: Path):
    root, table = sod_tree
    flat = tmp_path / "flat"
    flat.mkdir()
    os.symlink(root / "stanford_dogs" / "Images", flat / "Images")
    os.symlink(root / "oxford-iiit-pet" / "images", flat / "images")
    os.symlink(root / "oxford-iiit-pet" / "annotations", flat / "annotations")
    a = get_dataset("sod", flat, "train", classes_file=table)
    b = get_dataset("sod", root, "train", classes_file=table)
    assert a.sample_ids == b.sample_ids and a.targets.tolist() == b.targets.tolist()


def test_sod_without_data_root_and_stanford_root_is_one_line(sod_tree):
    root, table = sod_tree
    with pytest.raises(DatasetError, match=r"Stanford Dogs not found \(looked for nothing: no --data-root\)"):
        get_dataset("sod", None, "train", classes_file=table, pet_root=root / "oxford-iiit-pet")


def test_sod_default_table_needs_all_stanford_dirs(sod_tree):
    root, _ = sod_tree
    # The shipped 131-class table is the default: the tiny tree lacks most of its breeds.
    with raises_naming(root / "stanford_dogs" / "Images" / "n02085782-Japanese_spaniel", "missing"):
        get_dataset("sod", root, "train")


def test_sod_data_errors(sod_tree, tmp_path: Path):
    root, table = sod_tree
    images = root / "stanford_dogs" / "Images"
    extra = images / "n09999999-Wolf"
    extra.mkdir()
    with raises_naming(extra, str(table)):
        get_dataset("sod", root, "train", classes_file=table)
    extra.rmdir()

    gone = images / "n02099601-golden_retriever"
    gone.rename(tmp_path / "moved")
    with raises_naming(gone, "missing"):
        get_dataset("sod", root, "train", classes_file=table)
    (tmp_path / "moved").rename(gone)

    pet = root / "oxford-iiit-pet"
    (pet / "images" / "pug_2.jpg").unlink()
    with raises_naming(pet / "images" / "pug_2.jpg", pet / "annotations" / "list.txt", "line"):
        get_dataset("sod", root, "train", classes_file=table)
    write_image(pet / "images" / "pug_2.jpg", seed=1)

    list_txt = pet / "annotations" / "list.txt"
    good = list_txt.read_text()
    list_txt.write_text(good + "boxer_1 4 2 3\n")
    write_image(pet / "images" / "boxer_1.jpg", seed=2)
    n = len(good.splitlines()) + 1
    with raises_naming(list_txt, f"line {n}", "boxer"):
        get_dataset("sod", root, "train", classes_file=table)
    list_txt.write_text(good + "pug_3 3 dog\n")
    with raises_naming(list_txt, f"line {n}"):
        get_dataset("sod", root, "train", classes_file=table)
    list_txt.write_text(good)

    (pet / "annotations" / "list.txt").unlink()
    with raises_naming(pet / "annotations" / "list.txt", "missing"):
        get_dataset("sod", root, "train", classes_file=table)
    with raises_naming(tmp_path / "Images", "Stanford Dogs"):
        get_dataset("sod", tmp_path, "train", classes_file=table)


# -- SOD: the split rule ----------------------------------------------------------------------------------------
def _synthetic_ids(sizes: np.ndarray) -> tuple[list[str], np.ndarray]:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return [f"c{c:03d}/img_{i:05d}.jpg" for i, c in enumerate(labels)], labels


@pytest.mark.parametrize("alpha", [0.3, 1.0, 50.0])
def test_split_rule_exact_total_and_stratified(alpha: float):
    rng = np.random.default_rng(int(alpha * 10))
    sizes = 1 + rng.multinomial(25558 - 131, rng.dirichlet([alpha] * 131))
    ids, labels = _synthetic_ids(sizes)
    is_test = sod_mod.split_rule_mask(ids, labels)
    assert is_test.dtype == bool and is_test.sum() == 5066 and (~is_test).sum() == 20492
    per_class = np.bincount(labels[is_test], minlength=131)
    quota = sizes * 5066 / 25558
    assert np.all(per_class >= np.floor(quota)) and np.all(per_class <= np.ceil(quota))


def test_split_rule_smallest_digests_and_tie_break():
    # Two classes of 3 over N=6: T = round(6 * 5066 / 25558) = 1, quotas 0.59 each: tie -> class 0 gets it.
    ids = [f"x{i}" for i in range(6)]
    labels = np.array([0, 0, 0, 1, 1, 1])
    is_test = sod_mod.split_rule_mask(ids, labels)
    digest = {i: hashlib.sha256(i.encode()).hexdigest() for i in ids}
    assert is_test.tolist().count(True) == 1
    assert ids[int(np.flatnonzero(is_test)[0])] == min(ids[:3], key=digest.get)


def test_split_rule_is_deterministic_and_order_free():
    rng = np.random.default_rng(3)
    ids, labels = _synthetic_ids(rng.integers(5, 60, size=20))
    mask = sod_mod.split_rule_mask(ids, labels)
    assert np.array_equal(mask, sod_mod.split_rule_mask(list(ids), labels.copy()))
    perm = rng.permutation(len(ids))
    shuffled = sod_mod.split_rule_mask([ids[i] for i in perm], labels[perm])
    assert np.array_equal(shuffled, mask[perm])


# -- SOD: split files -------------------------------------------------------------------------------------------
def _all_sod_ids(root: Path, table: Path) -> tuple[list[str], list[str]]:
    train = get_dataset("sod", root, "train", classes_file=table)
    test = get_dataset("sod", root, "test", classes_file=table)
    return train.sample_ids, test.sample_ids


def test_sod_split_file(sod_tree, tmp_path: Path):
    root, table = sod_tree
    train_ids, test_ids = _all_sod_ids(root, table)
    everything = train_ids + test_ids
    mine_test = everything[::3]
    split_file = tmp_path / "split.txt"
    lines = ["# my split"] + [f"{'test' if i in mine_test else 'train'} {i}" for i in reversed(everything)]
    split_file.write_text("\n".join(lines) + "\n\n")
    test = get_dataset("sod", root, "test", classes_file=table, split_file=split_file)
    train = get_dataset("sod", root, "train", classes_file=table, split_file=str(split_file))
    assert sorted(test.sample_ids) == sorted(mine_test)
    assert len(train) + len(test) == len(everything)
    assert test.params == {"split": "file", "split_sha256": hashlib.sha256(split_file.read_bytes()).hexdigest()}
    assert test.identity() != get_dataset("sod", root, "test", classes_file=table).identity()


def test_sod_split_file_errors(sod_tree, tmp_path: Path):
    root, table = sod_tree
    train_ids, test_ids = _all_sod_ids(root, table)
    good = [f"train {i}" for i in train_ids] + [f"test {i}" for i in test_ids]
    f = tmp_path / "split.txt"

    def check(lines: list[str], *fragments: str) -> None:
        f.write_text("\n".join(lines) + "\n")
        with raises_naming(f, *fragments):
            get_dataset("sod", root, "train", classes_file=table, split_file=f)

    check(good[:3] + ["validation " + train_ids[3]] + good[4:], "line 4")
    check(good[:3] + ["train"] + good[4:], "line 4")
    check(good + ["test pet/not_there_1.jpg"], f"line {len(good) + 1}", "not_there")
    check(good + [good[0]], f"line {len(good) + 1}", "line 1")
    check(good[1:], train_ids[0], "missing")
    with raises_naming(tmp_path / "absent.txt"):
        get_dataset("sod", root, "train", classes_file=table, split_file=tmp_path / "absent.txt")


def test_sod_sources_named_explicitly_and_a_subset_of_breeds(sod_tree, tmp_path: Path):
    """The two roots by option, whatever their parents are called; classes=present for the breeds on
    disk; the table tool writes only the Pet breeds present with --pet."""
    import shutil

    root, table = sod_tree
    odd = tmp_path / "elsewhere"
    shutil.move(str(root / "stanford_dogs"), str(odd / "dogs_a"))
    shutil.move(str(root / "oxford-iiit-pet"), str(odd / "pets_b"))
    opts = {"stanford_root": str(odd / "dogs_a" / "Images"), "pet_root": str(odd / "pets_b"), "classes_file": table}
    full = get_dataset("sod", None, "train", **opts)
    assert full.num_classes == 4
    assert len(get_dataset("sod", tmp_path, "train", **{**opts, "stanford_root": str(odd / "dogs_a")})) == len(full)
    with raises_naming("stanford_root"):
        get_dataset("sod", None, "train", **{**opts, "stanford_root": str(tmp_path)})
    # A subset: drop one Stanford breed and every pug image; classes=present follows what is on disk.
    shutil.rmtree(odd / "dogs_a" / "Images" / "n02099601-golden_retriever")
    for f in (odd / "pets_b" / "images").glob("pug_*"):
        f.unlink()
    sub = get_dataset("sod", None, "train", stanford_root=opts["stanford_root"], pet_root=opts["pet_root"],
                      classes="present")
    assert sub.classes == ["Chihuahua", "beagle"] and sub.params["classes"] == "present"
    out = tmp_path / "table.tsv"
    assert sod_mod.main([opts["stanford_root"], str(out), "--pet", opts["pet_root"]]) == 0
    rows = sod_mod.read_class_table(out)
    assert [r.class_name for r in rows] == ["Chihuahua", "beagle"] and rows[1].pet_breed == "beagle"


# -- folder -----------------------------------------------------------------------------------------------------
def test_folder_tree(tmp_path: Path):
    root = tmp_path / "train"
    write_image(root / "zebra" / "b.JPG", 1)
    write_image(root / "zebra" / "a.png", 2)
    write_image(root / "ant" / "sub" / "c.jpeg", 3)
    write_image(root / "ant" / "x.bmp", 4)
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "README").write_text("ignored")
    (root / ".hidden").mkdir()
    ds = get_dataset("folder", root, "train")
    assert ds.classes == ["ant", "zebra"] and ds.split == "train"
    assert ds.sample_ids == ["ant/sub/c.jpeg", "ant/x.bmp", "zebra/a.png", "zebra/b.JPG"]
    assert ds.targets.tolist() == [0, 0, 1, 1]
    check_items(ds, n=4)


def test_a_folder_of_one_square_size_declares_it_as_native(folder_tree: Path):
    train = get_dataset("folder", folder_tree, "train")
    assert train.native_size == 32  # 32 x 32 PNGs: resized whole and left as they are at 32 px (like CIFAR)
    assert get_dataset("folder", folder_tree / "train", "test", holdout=0.5).native_size == 32
    write_image(folder_tree / "train" / "dog" / "wide.png", 1, size=(48, 32))
    assert get_dataset("folder", folder_tree, "train").native_size is None  # mixed sizes: photos, the recipe's crop
    assert get_dataset("folder", folder_tree, "test").native_size == 32
    big = make_tree(folder_tree.parent / "big", per_class=1, size=(160, 160))
    photos = get_dataset("folder", big, "train", holdout=0.5)
    assert (photos.square_size, photos.native_size) == (160, None)  # one size, but not small: the crop stays


def test_folder_errors(tmp_path: Path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with raises_naming(tmp_path / "empty", "no images"):
        get_dataset("folder", tmp_path / "empty", "train")
    write_image(tmp_path / "flat" / "a.png", 0)
    with raises_naming(tmp_path / "flat", "class"):
        get_dataset("folder", tmp_path / "flat", "train")


def _tree(root: Path, classes=("cat", "dog"), per_class=4, seed=0) -> None:
    for c, name in enumerate(classes):
        for k in range(per_class):
            write_image(root / name / f"{k:03d}.png", seed + 10 * c + k)


def test_folder_test_split_is_never_the_training_images(tmp_path: Path):
    """A class tree alone has no test split; the ways to give one are each honoured."""
    _tree(tmp_path / "only" / "imgs")
    with raises_naming("test_root", "holdout"):
        get_dataset("folder", tmp_path / "only" / "imgs", "test")
    # A root holding train/ and test/: --split picks the folder.
    _tree(tmp_path / "both" / "train", seed=0)
    _tree(tmp_path / "both" / "test", per_class=2, seed=50)
    tr, te = get_dataset("folder", tmp_path / "both", "train"), get_dataset("folder", tmp_path / "both", "test")
    assert (len(tr), len(te)) == (8, 4) and tr.root.name == "train" and te.root.name == "test"
    # --data-root DIR/train finds the test/ sibling; val/ counts as test.
    assert len(get_dataset("folder", tmp_path / "both" / "train", "test")) == 4
    _tree(tmp_path / "inet" / "train")
    _tree(tmp_path / "inet" / "val", per_class=1, seed=70)
    assert len(get_dataset("folder", tmp_path / "inet", "test")) == 2
    # An explicit test root.
    assert len(get_dataset("folder", tmp_path / "only" / "imgs", "test",
                           test_root=str(tmp_path / "both" / "test"))) == 4
    # A held-out fraction: disjoint, complementary, deterministic, recorded in params (so in the key).
    a = get_dataset("folder", tmp_path / "only" / "imgs", "train", holdout=0.25)
    b = get_dataset("folder", tmp_path / "only" / "imgs", "test", holdout=0.25)
    assert len(a) == 6 and len(b) == 2 and not set(a.sample_ids) & set(b.sample_ids)
    assert a.params["holdout"] == 0.25 and b.targets.tolist() == [0, 1]
    assert get_dataset("folder", tmp_path / "only" / "imgs", "test", holdout=0.25).sample_ids == b.sample_ids
    with raises_naming("holdout"):
        get_dataset("folder", tmp_path / "only" / "imgs", "test", holdout=1.5)
    with raises_naming("training folder"):
        get_dataset("folder", tmp_path / "only" / "imgs", "test", test_root=str(tmp_path / "only" / "imgs"))


def test_distill_refuses_a_test_split_made_of_training_images(tmp_path: Path):
    from featcache.datasets.base import check_disjoint
    from featcache.errors import DatasetError

    _tree(tmp_path / "d" / "train")
    (tmp_path / "d" / "alias").mkdir()
    for name in ("cat", "dog"):  # the same images behind other folder names
        os.symlink(tmp_path / "d" / "train" / name, tmp_path / "d" / "alias" / name)
    train = get_dataset("folder", tmp_path / "d" / "train", "train")
    test = get_dataset("folder", tmp_path / "d" / "train", "test", test_root=str(tmp_path / "d" / "alias"))
    with pytest.raises(DatasetError, match="8 of the training split's images"):
        check_disjoint(train, test)


# -- datasets that are not what they look like ---------------------------------------------------------------------
def test_a_root_of_split_folders_is_never_read_as_classes(tmp_path: Path):
    """DIR holding only train/ used to be one class called "train" (a 100 % accurate model on any split)."""
    _tree(tmp_path / "a" / "train")
    for split, opts in (("train", {}), ("test", {}), ("train", {"holdout": 0.25}), ("test", {"holdout": 0.25})):
        with raises_naming(tmp_path / "a", "only split folders (train/)", "test/", "--data-root", "holdout"):
            get_dataset("folder", tmp_path / "a", split, **opts)
    _tree(tmp_path / "b" / "train")
    _tree(tmp_path / "b" / "val", per_class=1, seed=70)
    _tree(tmp_path / "b" / "test", per_class=1, seed=80)
    with raises_naming(tmp_path / "b", "(test/, train/, val/)", "-o test_root"):
        get_dataset("folder", tmp_path / "b", "test")
    # The test split taken from a folder of split folders is refused too, not read as class "test".
    with raises_naming(tmp_path / "a", "only split folders", "-o test_root"):
        get_dataset("folder", tmp_path / "b" / "train", "test", test_root=str(tmp_path / "a"))
    # A class tree that merely has a class called train, among others, is still a class tree.
    _tree(tmp_path / "c", classes=("bus", "train"))
    assert get_dataset("folder", tmp_path / "c", "train", holdout=0.25).classes == ["bus", "train"]


def _copied(tmp_path: Path):
    from featcache.datasets.base import check_disjoint, copied_files

    train = get_dataset("folder", tmp_path / "d", "train")
    test = get_dataset("folder", tmp_path / "d", "test")
    return copied_files(train, test), lambda: check_disjoint(train, test)


def test_test_images_copied_from_the_training_images_are_refused(tmp_path: Path):
    _tree(tmp_path / "d" / "train", per_class=3, seed=0)
    _tree(tmp_path / "d" / "test", per_class=2, seed=50)
    sizes = {f.stat().st_size for f in (tmp_path / "d").rglob("*.png")}
    assert len(sizes) == 1  # every file's size collides across splits: the contents must be compared
    copies, check = _copied(tmp_path)
    assert copies == []
    check()
    # One copy under another name is a leak.
    original = tmp_path / "d" / "train" / "cat" / "001.png"
    (tmp_path / "d" / "test" / "dog" / "zz.png").write_bytes(original.read_bytes())
    with raises_naming("1 of the test split's 5 images", "byte-identical", tmp_path / "d" / "test" / "dog" / "zz.png",
                       original):
        _copied(tmp_path)[1]()


def test_big_files_that_share_their_tail_are_compared_whole(tmp_path: Path):
    big = bytes(np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8))
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / "d" / split / name).mkdir(parents=True)
    (tmp_path / "d" / "train" / "cat" / "a.png").write_bytes(big)
    (tmp_path / "d" / "train" / "dog" / "b.png").write_bytes(big[::-1])
    (tmp_path / "d" / "test" / "cat" / "c.png").write_bytes(b"X" + big[1:])  # same size and last 16 KiB, not a copy
    assert _copied(tmp_path)[0] == []
    (tmp_path / "d" / "test" / "dog" / "d.png").write_bytes(big)
    assert [(Path(c).name, Path(o).name) for c, o in _copied(tmp_path)[0]] == [("d.png", "a.png")]


def test_fewer_than_two_classes_cannot_be_trained(tmp_path: Path):
    from featcache.datasets.base import ClassSubset, check_trainable, split_classes

    _tree(tmp_path / "one", classes=("cat",))
    with raises_naming("folder", "train split", "1 class", "'cat'", "at least 2"):
        check_trainable(get_dataset("folder", tmp_path / "one", "train"))
    (tmp_path / "one" / "dog").mkdir()  # a class folder without images is no second class
    with raises_naming("1 class (of 2 listed)", "'cat'"):
        check_trainable(get_dataset("folder", tmp_path / "one", "train"))
    _tree(tmp_path / "two")
    two = get_dataset("folder", tmp_path / "two", "train")
    check_trainable(two)
    with raises_naming("'dog'", "--classes"):
        check_trainable(ClassSubset(two, ["dog"]))
    with raises_naming("--parts 2", "at least 4 classes"):  # two parts of one class each: two untrainable teachers
        split_classes(two.classes, 2)
    assert sorted(len(part) for part in split_classes(["a", "b", "c", "d", "e"], 2)) == [2, 3]
    with raises_naming("--parts 3", "between 2 and 2"):
        split_classes(["a", "b", "c", "d", "e"], 3)


def _encoded(fmt: str, pixels: np.ndarray, **kw) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    image = Image.fromarray(pixels)
    if kw.pop("cmyk", False):
        image = image.convert("CMYK")
    image.save(out, fmt, **kw)
    return out.getvalue()


def test_image_sizes_are_read_from_headers_without_decoding(monkeypatch):
    from featcache.datasets import images as base  # where every format decodes

    px = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cases = {"png": ("PNG", {}), "jpeg": ("JPEG", {}), "progressive": ("JPEG", {"progressive": True}),
             "cmyk": ("JPEG", {"cmyk": True}), "gif": ("GIF", {}), "webp": ("WEBP", {}),
             "webp-lossless": ("WEBP", {"lossless": True}), "bmp": ("BMP", {})}
    for name, (fmt, kw) in cases.items():
        assert base.image_header_size(_encoded(fmt, px, **kw)) == (53, 37, 1), name
    gif = _encoded("GIF", px, save_all=True, append_images=[_pil(255 - px), _pil(px // 2)])
    assert base.image_header_size(gif) == (53, 37, 3)  # torchvision decodes every frame
    assert base.image_header_size(_encoded("TIFF", px)) is None  # PIL reads that header instead

    # A JPEG whose frame header claims 60,000 x 50,000 pixels is refused before any decoder sees it.
    jpeg = bytearray(_encoded("JPEG", px))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (50_000).to_bytes(2, "big") + (60_000).to_bytes(2, "big")

    def decoded(*a, **k):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(base, "_decode_image", decoded)
    monkeypatch.setattr(base, "_pil_rgb", decoded)
    monkeypatch.delenv(base.MAX_PIXELS_ENV, raising=False)
    with raises_naming("big.jpg", "60,000 x 50,000", "3,000,000,000 pixels", "89,478,485",
                       "FEATCACHE_MAX_IMAGE_PIXELS=3000000000"):
        base.decode_image_bytes(bytes(jpeg), "big.jpg")
    monkeypatch.undo()
    small = _encoded("PNG", np.zeros((64, 64, 3), dtype=np.uint8))
    monkeypatch.setenv(base.MAX_PIXELS_ENV, "1000")
    with raises_naming("small.png", "64 x 64", "4,096 pixels", "limit of 1,000"):
        base.decode_image_bytes(small, "small.png")
    monkeypatch.setenv(base.MAX_PIXELS_ENV, "4096")
    assert base.decode_image_bytes(small, "small.png").shape == (3, 64, 64)
    monkeypatch.setenv(base.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match="FEATCACHE_MAX_IMAGE_PIXELS='lots'"):
        base.decode_image_bytes(small, "small.png")


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


# -- synthetic ------------------------------------------------------------------------------------------------------
SMALL = {"num_train": 60, "num_test": 20}


def test_synthetic_determinism_and_ids():
    a = get_dataset("synthetic", split="train", **SMALL)
    b = get_dataset("synthetic", split="train", **SMALL)
    c = get_dataset("synthetic", split="train", seed=1, **SMALL)
    t = get_dataset("synthetic", split="test", **SMALL)
    assert len(a) == 60 and len(t) == 20 and a.num_classes == 10
    assert a.sample_ids[7] == "synthetic/train/000007" and t.sample_ids[0] == "synthetic/test/000000"
    check_items(a)
    assert a[0][0].shape == (3, 32, 32)
    late = b[41][0]  # independent of what was read before
    for i in (41, 3, 59):
        assert torch.equal(a[i][0], b[i][0])
    assert torch.equal(late, a[41][0])
    assert not torch.equal(a[3][0], c[3][0]) and not torch.equal(a[0][0], t[0][0])
    assert a.params == {"seed": 0, "image_size": 32, "num_classes": 10, **SMALL}
    assert a.identity() != c.identity()
    big = get_dataset("synthetic", split="train", image_size=48, num_classes=12, **SMALL)
    assert big[11][0].shape == (3, 48, 48) and big.targets[11] == 11


def test_synthetic_balance_and_options():
    ds = get_dataset("synthetic", split="train", num_train=2000)
    assert np.bincount(ds.targets).tolist() == [200] * 10
    for bad in ({"num_classes": 99}, {"image_size": "big"}, {"num_train": -1}):
        with raises_naming("synthetic", next(iter(bad))):
            get_dataset("synthetic", split="train", **bad)


@pytest.fixture(scope="module")
def synthetic_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train = get_dataset("synthetic", split="train")
    test = get_dataset("synthetic", split="test", num_test=300)
    x = torch.stack([train.read_image(i) for i in range(len(train))]).float() / 255
    xt = torch.stack([test.read_image(i) for i in range(len(test))]).float() / 255
    return x, torch.from_numpy(train.targets), xt, torch.from_numpy(test.targets)


def _nearest_centroid(f: torch.Tensor, y: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor) -> float:
    centroids = torch.stack([f[y == k].mean(0) for k in range(int(y.max()) + 1)])
    return (torch.cdist(ft, centroids).argmin(1) == yt).float().mean().item()


@pytest.mark.slow
def test_synthetic_colour_does_not_reveal_the_class(synthetic_arrays):
    x, y, xt, yt = synthetic_arrays
    assert _nearest_centroid(x.mean((2, 3)), y, xt.mean((2, 3)), yt) < 0.4


@pytest.mark.slow
def test_synthetic_is_learnable_by_a_tiny_cnn(synthetic_arrays):
    """A 3-layer CNN on per-image normalised pixels beats chance (10%) clearly within a few CPU seconds."""
    from torch import nn

    x, y, xt, yt = synthetic_arrays
    norm = lambda t: (t - t.mean((2, 3), keepdim=True)) / (t.std((2, 3), keepdim=True) + 1e-3)  # noqa: E731
    x, xt = norm(x), norm(xt)
    torch.manual_seed(0)
    w = 8
    net = nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(5):
        net.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.25, acc


def test_folder_links_are_followed_but_no_folder_is_read_twice(tmp_path: Path, monkeypatch):
    """A link back to an ancestor made os.walk recurse until the path was too long: 24 images became 984, class b's
    under class a, without a word. Links to folders outside the tree still count once; a loop, a second way into a
    folder already read, and a folder that cannot be read are refused."""
    _tree(tmp_path / "data" / "train")
    _tree(tmp_path / "more", classes=("x",), seed=90)
    dog = tmp_path / "data" / "train" / "dog"
    (dog / "extra").symlink_to(tmp_path / "more" / "x")  # a lab's class folder assembled from links: fine
    ds = get_dataset("folder", tmp_path / "data" / "train", "train")
    assert len(ds) == 12 and sorted(set(ds.targets)) == [0, 1]
    assert sum(i.startswith("dog/extra/") for i in ds.sample_ids) == 4
    loop = tmp_path / "data" / "train" / "cat" / "loop"
    loop.symlink_to(tmp_path / "data" / "train")
    with raises_naming(str(loop), "again (through a link)"):
        get_dataset("folder", tmp_path / "data" / "train", "train")
    loop.unlink()
    (tmp_path / "data" / "train" / "cat" / "dogs-too").symlink_to(dog)  # dog's images under cat as well
    with raises_naming(str(dog), "again (through a link)"):
        get_dataset("folder", tmp_path / "data" / "train", "train")
    (tmp_path / "data" / "train" / "cat" / "dogs-too").unlink()
    real_scandir = os.scandir

    def refuse(path="."):
        if str(path).endswith("extra"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)  # root reads everything, so chmod cannot show it
    with raises_naming(str(dog / "extra"), "cannot be read (Permission denied)"):
        get_dataset("folder", tmp_path / "data" / "train", "train")


def test_splits_with_different_classes_are_named(tmp_path: Path, monkeypatch):
    """'train and test splits list different classes' left the user to find which; an empty class folder is one."""
    from typer.testing import CliRunner

    from featcache.cli import app
    from featcache.datasets.base import check_same_classes

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    _tree(tmp_path / "d" / "train")
    _tree(tmp_path / "d" / "test", per_class=2, seed=50)
    (tmp_path / "d" / "train" / "emu").mkdir()
    for command in (["distill"], ["train-teacher", "--teacher", "convnet", "--init", "random"]):
        r = CliRunner().invoke(app, [*command, "-d", "folder", "--data-root", str(tmp_path / "d"), "--epochs", "1",
                                     "--run-dir", str(tmp_path / "run")])
        assert r.exit_code == 2 and "only in train: emu; only in test: none" in " ".join(r.output.split()), r.output
    ds = get_dataset("folder", tmp_path / "d", "test")
    check_same_classes(ds, ds, "folder")
    swapped = type("Split", (), {"classes": ["dog", "cat"]})()
    with raises_naming("the same names in another order"):
        check_same_classes(ds, swapped, "folder")


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


# -- folder roots and class sets a run refuses to train on --------------------------------------------------------
def test_a_root_holding_only_train_is_not_one_class_called_train(home, tmp_path):
    """It was: extract's teacher top-1 100 % over one class "train", and distill -o holdout a 100 % test accuracy."""
    root = make_tree(tmp_path / "d" / "train").parent
    one_line_error(invoke("extract", *FOLDER_EXTRACT, "--data-root", root), "only split folders (train/)",
                   str(root / "test"))
    one_line_error(invoke("extract", *FOLDER_EXTRACT, "--data-root", root, "--split", "test"), "only split folders")
    r = invoke("distill", *FOLDER_DISTILL, "--data-root", root, "-o", "holdout=0.34", "--run-dir", tmp_path / "run")
    one_line_error(r, "only split folders", "holdout")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_one_class_is_cached_but_never_trained_on(home, folder_tree, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(folder_tree / "train" / "cat", one / "train" / "cat")
    shutil.copytree(folder_tree / "test" / "cat", one / "test" / "cat")
    assert invoke("extract", *FOLDER_EXTRACT, "--data-root", one).exit_code == 0  # features of one class: a fine cache
    one_line_error(invoke("distill", *FOLDER_DISTILL, "--data-root", one, "--run-dir", tmp_path / "run"), "1 class",
                   "'cat'")
    one_line_error(invoke("train-teacher", *FOLDER_TEACH, "--data-root", one, "--run-dir", tmp_path / "t1"), "'cat'")
    (tmp_path / "dog.txt").write_text("dog\n")  # a class subset of one class
    r = invoke("train-teacher", *FOLDER_TEACH, "--data-root", folder_tree, "--classes", tmp_path / "dog.txt",
               "--run-dir", tmp_path / "t2")
    one_line_error(r, "'dog'", "--classes")
