"""The joined loader: rows joined by index, RAM and out-of-core modes agree, noise rows, refusals."""

import numpy as np
import pytest
import torch

from featcache.cache import FeatureCache
from featcache.cache.format import FEATURES, LOGITS, PART_NOISE
from featcache.datasets import get_dataset
from featcache.distill.loader import JoinedLoader, epoch_plan, parse_bytes
from featcache.errors import CacheMismatchError, ConfigError
from featcache.extract import ExtractConfig, extract
from featcache.transforms import Geometry, TransformSpec

SYN = {"num_train": 90, "num_test": 20}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Two teachers of different widths over the same synthetic train split, with noise rows."""
    store = tmp_path_factory.mktemp("store")
    out = []
    for teacher in ("resnet18", "mobilenet_v3_small"):
        cfg = ExtractConfig(
            teacher=teacher, weights="random", dataset="synthetic", dataset_options=dict(SYN), image_size=32,
            batch_size=32, workers=0, cache_dir=store, shard_rows=25, noise=16, noise_seed=3,
        )
        out.append(extract(cfg).directory)
    return out


def train_split():
    return get_dataset("synthetic", split="train", **SYN)


def loader_for(dirs, **kw):
    caches = [FeatureCache(d) for d in dirs]
    ds = train_split()
    spec = caches[0].manifest.transform
    ds.with_transform(Geometry(spec))
    args = dict(batch_size=16, workers=0, seed=7, block_rows=10, window_blocks=2, transform=spec)
    args.update(kw)
    return JoinedLoader(ds, caches, **args)


def collect(loader, epochs=2):
    out = []
    for e in range(epochs):
        loader.set_epoch(e)
        out.extend(loader)
    loader.close()
    return out


@pytest.mark.slow
def test_rows_are_the_cached_rows_of_each_sample(caches):
    loader = loader_for(caches, mode="ram", shuffle="full")
    full = [FeatureCache(d).read_all() for d in caches]
    seen = []
    for batch in collect(loader, epochs=1):
        idx = batch.index.numpy()
        seen.append(idx)
        for k, table in enumerate(full):
            assert torch.equal(batch.features[k], torch.from_numpy(table[FEATURES][idx]))
            assert torch.equal(batch.logits[k], torch.from_numpy(table[LOGITS][idx]))
        ds = train_split()
        assert batch.labels.tolist() == ds.targets[idx].tolist()
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == list(range(SYN["num_train"]))  # every sample once per epoch
    assert order.tolist() != list(range(SYN["num_train"]))  # and shuffled


def test_ram_and_out_of_core_modes_yield_identical_batches(caches):
    ram = collect(loader_for(caches, mode="ram", shuffle="block"))
    disk_loader = loader_for(caches, mode="disk", shuffle="block")
    assert disk_loader.modes == ["disk", "disk"]
    disk = collect(disk_loader)
    assert len(ram) == len(disk) == 2 * len(disk_loader)
    for a, b in zip(ram, disk, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        for fa, fb in zip(a.features + a.logits, b.features + b.logits, strict=True):
            assert torch.equal(fa, fb)
    # Epochs differ from each other.
    n = len(disk_loader)
    assert not all(torch.equal(ram[i].index, ram[n + i].index) for i in range(n))


def test_auto_mode_goes_out_of_core_when_the_budget_is_small(caches):
    loader = loader_for(caches, ram_budget=1024)
    assert loader.modes == ["disk", "disk"] and loader.shuffle == "block"
    big = loader_for(caches, ram_budget=2**30)
    assert big.modes == ["ram", "ram"] and big.shuffle == "full"


def test_auto_mode_streams_large_tables_unless_full_shuffle_asks_for_ram(caches, monkeypatch):
    """Above EAGER_RAM_BYTES, auto streams (RAM would only add load time); --shuffle full still gets RAM."""
    import featcache.distill.placement as L

    monkeypatch.setattr(L, "EAGER_RAM_BYTES", 1000)
    assert loader_for(caches).modes == ["disk", "disk"]
    assert loader_for(caches, shuffle="full").modes == ["ram", "ram"]
    monkeypatch.setattr(L, "EAGER_RAM_BYTES", 1 << 30)
    assert loader_for(caches).modes == ["ram", "ram"]


def test_in_ram_gather_returns_fresh_rows(caches):
    """np.take into fresh arrays: a batch kept by the caller is not overwritten by the next gather."""
    loader = loader_for(caches, mode="ram", shuffle="full")
    table = loader.tables[0]
    a = table.gather(np.array([3, 1, 4]))
    keep = [t.clone() for t in a]
    table.gather(np.array([5, 9, 2]))
    assert all(torch.equal(x, y) for x, y in zip(a, keep, strict=True))
    full = FeatureCache(caches[0]).read_all()
    assert np.array_equal(a[0].numpy(), full[FEATURES][[3, 1, 4]])
    loader.close()


def test_full_shuffle_needs_ram(caches):
    with pytest.raises(ConfigError, match="--cache-ram"):
        loader_for(caches, ram_budget=1024, shuffle="full")


def test_block_plan_is_blockwise_and_a_permutation():
    plan = epoch_plan(95, seed=1, epoch=0, shuffle="block", block_rows=10, window_blocks=2)
    assert sorted(plan.order.tolist()) == list(range(95))
    # Each window of two blocks covers exactly the rows of its blocks.
    start = 0
    for w in range(0, len(plan.blocks), 2):
        rows = set()
        for b in plan.blocks[w : w + 2]:
            rows |= set(range(b * 10, min(b * 10 + 10, 95)))
        assert set(plan.order[start : start + len(rows)].tolist()) == rows
        start += len(rows)


def test_noise_rows_are_labelled_by_the_first_teachers_argmax(caches):
    loader = loader_for(caches, mode="ram", noise_per_batch=4)
    noise = [FeatureCache(d).read_all(PART_NOISE) for d in caches]
    batches = collect(loader, epochs=1)
    for batch in batches:
        assert batch.num_noise == 4
        idx = batch.index[-4:].numpy()
        for k in range(2):
            assert torch.equal(batch.features[k][-4:], torch.from_numpy(noise[k][FEATURES][idx]))
        expected = torch.from_numpy(noise[0][LOGITS][idx]).float().argmax(1)
        assert torch.equal(batch.labels[-4:], expected)
    # The noise images are the cache's own, regenerated from its seed.
    from featcache.transforms import noise_image

    m = FeatureCache(caches[0]).manifest.noise
    b = batches[0]
    assert torch.equal(b.images[-1], noise_image(m.seed, int(b.index[-1]), m.image_size))


def test_noise_needs_noise_rows(tmp_path):
    cfg = ExtractConfig(
        teacher="resnet18", weights="random", dataset="synthetic", dataset_options=dict(SYN), image_size=32,
        batch_size=32, workers=0, cache_dir=tmp_path, noise=0,
    )
    d = extract(cfg).directory
    with pytest.raises(ConfigError, match="--noise"):
        loader_for([d], noise_per_batch=2)


def test_mismatched_cache_is_refused_naming_the_field(caches):
    cache = FeatureCache(caches[0])
    other = get_dataset("synthetic", split="train", num_train=91, num_test=20)
    with pytest.raises(CacheMismatchError, match="dataset"):
        JoinedLoader(other, [cache], workers=0)
    spec = cache.manifest.transform
    ds = train_split()
    wrong = TransformSpec.from_dict({**spec.to_dict(), "interpolation": "bicubic"})
    with pytest.raises(CacheMismatchError, match="transform.interpolation"):
        JoinedLoader(ds, [cache], workers=0, transform=wrong)
    test = get_dataset("synthetic", split="test", **SYN)
    with pytest.raises(CacheMismatchError, match="split"):
        JoinedLoader(test, [cache], workers=0)


def test_workers_and_drop_last(caches):
    loader = loader_for(caches, mode="ram", workers=2, drop_last=True)
    batches = collect(loader, epochs=1)
    assert len(batches) == SYN["num_train"] // 16 and all(len(b) == 16 for b in batches)


@pytest.mark.parametrize(
    "text,expected", [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("1.5GB", int(1.5 * 2**30)), ("100", 100),
                      ("2GiB", 2 * 2**30), ("auto", None), (None, None), (5, 5)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_bytes_rejects_nonsense():
    with pytest.raises(ConfigError, match="--cache-ram"):
        parse_bytes("lots")


def test_bad_flags(caches):
    with pytest.raises(ConfigError, match="--shuffle"):
        loader_for(caches, shuffle="random")
    with pytest.raises(ConfigError, match="--cache-mode"):
        loader_for(caches, mode="gpu")
    with pytest.raises(ConfigError, match="--batch-size"):
        loader_for(caches, batch_size=0)


@pytest.mark.gpu  # pinned staging is the CUDA path
def test_pinned_staging_copies_rows_exactly_and_reuses_slots():
    from featcache.distill.loader import PinnedStaging

    staging = PinnedStaging(torch.device("cuda"), slots=2)
    for step in range(5):
        rows = [torch.randn(7 + step, 16).half(), torch.randn(7 + step, 10)]
        out = staging.to_device(rows)
        for a, b in zip(rows, out, strict=True):
            assert b.is_cuda and torch.equal(a, b.cpu())
    assert len(staging._bufs) == 4  # two slots × two tensors


def test_staging_on_cpu_passes_tensors_through():
    from featcache.distill.loader import PinnedStaging

    rows = [torch.arange(6).view(2, 3)]
    assert torch.equal(PinnedStaging(torch.device("cpu")).to_device(rows)[0], rows[0])


def test_resident_loader_yields_the_host_loaders_batches(caches):
    from featcache.distill.resident import ResidentLoader

    spec = FeatureCache(caches[0]).manifest.transform
    host = collect(loader_for(caches, mode="ram", shuffle="full", noise_per_batch=3))
    ds = train_split().with_transform(Geometry(spec))
    resident = ResidentLoader(ds, [FeatureCache(d) for d in caches], batch_size=16, seed=7, transform=spec,
                              noise_per_batch=3)
    assert resident.modes == ["resident", "resident"] and len(resident) == len(host) // 2
    dev = collect(resident)
    for a, b in zip(host, dev, strict=True):
        assert a.num_noise == b.num_noise == 3
        for x, y in [(a.images, b.images), (a.labels, b.labels), (a.index, b.index),
                     *zip(a.features, b.features, strict=True), *zip(a.logits, b.logits, strict=True)]:
            assert torch.equal(x, y)


def test_resident_loader_refuses_what_does_not_fit(caches):
    from featcache.distill.resident import ResidentLoader

    spec = FeatureCache(caches[0]).manifest.transform
    ds = train_split().with_transform(Geometry(spec))
    with pytest.raises(ConfigError, match="drop --resident"):
        ResidentLoader(ds, [FeatureCache(caches[0])], transform=spec, max_bytes=1000)


def test_device_augmentation_flips_and_crops_per_sample():
    from featcache.distill.resident import device_augment

    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).view(2, 3, 8, 8).to(torch.uint8)
    assert torch.equal(device_augment(x, "none", g), x)
    flipped = device_augment(x.repeat(16, 1, 1, 1), "flip", g)
    assert {bool(torch.equal(f, x[i % 2])) for i, f in enumerate(flipped)} == {True, False}  # some flipped, some not
    for i, f in enumerate(flipped):
        assert torch.equal(f, x[i % 2]) or torch.equal(f, x[i % 2].flip(2))
    crops = device_augment(x, "pad-crop-flip", g)
    assert crops.shape == x.shape and crops.dtype == torch.uint8
    # Every crop is a window of the zero-padded (possibly flipped) image.
    for i in range(2):
        padded = [torch.nn.functional.pad(v, (4, 4, 4, 4)) for v in (x[i], x[i].flip(2))]
        assert any(torch.equal(crops[i], p[:, dy : dy + 8, dx : dx + 8])
                   for p in padded for dy in range(9) for dx in range(9))


def test_host_and_device_pad_crop_use_the_same_padding_at_any_size():
    """pad-crop-flip pads by S/8 on the host (Augment), on the device (--resident) and in cached views alike."""
    from featcache.distill.resident import device_augment
    from featcache.transforms import Augment, crop_pad

    assert (crop_pad(32), crop_pad(64), crop_pad(8)) == (4, 8, 1)
    white = torch.full((64, 3, 64, 64), 255, dtype=torch.uint8)

    def border(img):  # rows of zero padding above or below the crop
        rows = (img == 0).all(dim=(0, 2))
        return int(max(rows.cumsum(0).max() if rows[0] else 0, rows.flip(0).cumsum(0).max() if rows[-1] else 0))

    torch.manual_seed(0)
    host = [border(Augment("pad-crop-flip")(im)) for im in white]
    device = [border(im) for im in device_augment(white, "pad-crop-flip", torch.Generator().manual_seed(0))]
    for widths in (host, device):
        assert max(widths) == 8 and min(widths) == 0
