"""Both data layouts, the cache, the splits, the transforms, and every bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning import CLASSES
from cifar_lightning.data import CIFAR10DataModule, sources
from cifar_lightning.data.loaders import EpochSampler
from cifar_lightning.data.order import EpochOrder, derive_seed
from cifar_lightning.errors import DataError
from tests.conftest import run_cli
from tests.synthetic import make_images, write_folder_layout

STANDARD = {"crop_padding": 4, "flip": True}


def datamodule(root: Path, **kw) -> CIFAR10DataModule:
    args = {"download": False, "batch_size": 16, "val_size": 50, "num_workers": 0}
    dm = CIFAR10DataModule(root=str(root), augment=STANDARD, **{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_both_layouts_decode_to_the_same_images(folder_root, torchvision_root):
    a = datamodule(folder_root)
    b = datamodule(torchvision_root)
    sa, sb = sources.load_splits(folder_root), sources.load_splits(torchvision_root)
    assert sa.source == "folder" and sb.source == "torchvision"
    assert sa.train_x.shape == (400, 3, 32, 32) and sa.test_x.shape == (100, 3, 32, 32)
    assert sa.train_x.dtype == torch.uint8

    # PNG is lossless: the same pixels and labels reach both caches (the pickle is shuffled).
    def key(s: sources.Splits) -> list:
        return sorted(zip(s.train_y.tolist(), map(bytes, s.train_x.numpy()), strict=True))

    assert key(sa) == key(sb)
    assert len(a.train_set) == len(b.train_set) == 350 and len(a.val_set) == 50


def test_cache_is_reused_without_the_source(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=4, n_test=2)
    cache = sources.prepare_cache(root, allow_download=False)
    before = cache.stat().st_mtime_ns
    shutil.rmtree(root / "train")  # without its source, the cache alone is the data
    shutil.rmtree(root / "test")
    assert sources.prepare_cache(root, allow_download=False) == cache
    assert cache.stat().st_mtime_ns == before
    assert len(sources.load_splits(root).train_y) == 40
    assert not list(root.glob(".*.tmp")), "no temporary file left behind"


def test_a_cache_rebuilds_when_its_source_changes(tmp_path, caplog):
    root = write_folder_layout(tmp_path / "d", n_train=3, n_test=1)
    sources.prepare_cache(root, allow_download=False)
    first = sources.load_splits(root)
    assert len(first.train_y) == 30 and len(first.fingerprint) == 32
    cat = root / "train" / "cat"
    images = sorted(cat.iterdir())

    def rebuilt() -> sources.Splits:
        caplog.clear()
        sources.prepare_cache(root, allow_download=False)
        assert "rebuilding the data cache" in caplog.text
        return sources.load_splits(root)

    shutil.copy(images[0], cat / "added.png")  # added
    assert len(rebuilt().train_y) == 31
    (cat / "added.png").unlink()  # removed
    assert rebuilt().fingerprint == first.fingerprint
    other = sorted((root / "train" / "dog").iterdir())[0]
    shutil.copy(other, images[1])  # replaced (same name, new content)
    changed = rebuilt()
    assert changed.fingerprint != first.fingerprint
    assert torch.equal(changed.train_x[len(images) * 3 + 1], first.train_x[len(images) * 5])
    caplog.clear()
    sources.prepare_cache(root, allow_download=False)  # unchanged since: used as it is
    assert "rebuilding" not in caplog.text


def test_damaged_cache_is_reported(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    cache = sources.prepare_cache(root, allow_download=False)
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.raises(DataError, match="unusable.*Delete it"):
        sources.load_splits(root)


def test_a_cache_the_check_cannot_read_is_rebuilt_from_its_source(tmp_path, caplog):
    # A check that could not read the cache used to pass it: never without reading it.
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    cache = sources.prepare_cache(root, allow_download=False)
    built = sources.load_splits(root).fingerprint
    cache.write_bytes(cache.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        sources.prepare_cache(root, allow_download=False)
    assert "rebuilding the data cache" in caplog.text and "cannot be read" in caplog.text
    assert sources.load_splits(root).fingerprint == built
    # Without its source, the cache is the data: the load names the damage and the fix.
    shutil.rmtree(root / "train")
    shutil.rmtree(root / "test")
    cache.write_bytes(cache.read_bytes()[:1000])
    sources.prepare_cache(root, allow_download=False)
    with pytest.raises(DataError, match="unusable.*Delete it"):
        sources.load_splits(root)


def test_val_and_test_are_disjoint_from_training(folder_root):
    dm = datamodule(folder_root)
    train, val = set(dm.train_index.tolist()), set(dm.val_index.tolist())
    assert not train & val and len(train | val) == 400
    # Fixed split generator: another seed of the run, same validation images.
    torch.manual_seed(123)
    assert torch.equal(datamodule(folder_root).val_index, dm.val_index)
    # The test split is its own data: no training image is a test image.
    splits = sources.load_splits(folder_root)
    train_bytes = {bytes(x) for x in splits.train_x[dm.train_index].numpy()}
    assert not train_bytes & {bytes(x) for x in splits.test_x.numpy()}


def test_each_split_has_the_digests_of_its_images(folder_root):
    # Stored in the cache, indexed by the split: they describe the split's images, in order.
    dm = datamodule(folder_root, val_size=30, train_size=200)
    for split in ("train", "val", "test", "train_clean"):
        stored = dm.image_digests(split)
        assert torch.equal(stored, sources.image_digests(getattr(dm, f"{split}_set").x))
        assert stored.shape == (dm.sizes.get(split, len(stored)), 16)
    assert len(dm.image_digests("train")) == 200 and len(dm.image_digests("val")) == 30


def test_eval_transforms_are_deterministic_and_train_transforms_random(folder_root):
    dm = datamodule(folder_root)
    for ds in (dm.val_set, dm.test_set):
        assert torch.equal(ds[3][0], ds[3][0])
    raw = dm.test_set.x[3].float() / 255
    mean, std = torch.tensor(dm.augment.mean), torch.tensor(dm.augment.std)
    expected = (raw - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(dm.test_set[3][0], expected, atol=1e-5)
    # Training draws: image 3 in epochs 0..7 gets a new augmentation each epoch, and the same
    # draw always the same one (seeded by run seed and draw, not by worker or global RNG).
    n = len(dm.train_set)
    draws = [dm.train_set[3 + epoch * n][0] for epoch in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    torch.manual_seed(123)
    assert torch.equal(dm.train_set[3 + n][0], draws[1])


def sampler(n: int, seed: int, rank: int = 0, world_size: int = 1) -> EpochSampler:
    return EpochSampler(EpochOrder(n, shuffle=True, seed=seed, rank=rank, world_size=world_size))


def test_epoch_sampler_orders_and_shards(folder_root):
    a, b = sampler(10, seed=0), sampler(10, seed=0)
    assert list(a) == list(b) and sorted(x % 10 for x in a) == list(range(10))
    b.set_epoch(1)
    assert list(a) != list(b) and all(10 <= x < 20 for x in b)
    ranks = [sampler(11, seed=0, rank=r, world_size=2) for r in (0, 1)]
    shares = [set(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == 5 and not shares[0] & shares[1]


@pytest.mark.parametrize("n", [1, 7, 8, 11, 350])
def test_both_former_shardings_are_epoch_orders(n):
    # The DataLoader path used to shard randperm(n)[rank : len * world][::world], the device
    # path perm[rank::world][: n // world]: the same indices, now EpochOrder's for both.
    for world in (1, 2, 3, 4):
        for rank in range(world):
            order = EpochOrder(n, shuffle=True, seed=5, rank=rank, world_size=world)
            for epoch in (0, 3):
                perm = torch.randperm(
                    n, generator=torch.Generator().manual_seed(derive_seed(5, epoch))
                )
                size = n // world
                assert torch.equal(perm[rank : size * world][::world], order.indices(epoch))
                assert torch.equal(perm[rank::world][:size], order.indices(epoch))


def test_dataloader_resumes_with_the_next_batch(folder_root):
    dm = datamodule(folder_root, seed=3)
    original = dm.train_dataloader()
    original.sampler.set_epoch(1)
    it = iter(original)
    for _ in range(3):
        next(it)
    state = original.state_dict()
    assert state == {"epoch": 1, "position": 3}
    fourth = next(it)
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # what Lightning calls after restoring: keeps the position
    batch = next(iter(resumed))
    assert torch.equal(batch[0], fourth[0]) and torch.equal(batch[1], fourth[1])
    # A checkpoint of the resumed pass counts from the epoch's start, not from the resume.
    assert resumed.state_dict() == {"epoch": 1, "position": 4}
    list(it)  # the end of an epoch is the start of the next
    assert original.state_dict() == {"epoch": 2, "position": 0}


def test_both_loaders_take_the_seed_argument(folder_root):
    # The run's seed reaches the data as an argument: it picks the order on both paths.
    def labels(loader: str, seed: int) -> list[int]:
        dm = datamodule(folder_root, loader=loader, seed=seed)
        batches = dm.train_dataloader()
        return torch.cat([y for _, y in batches]).tolist()

    for loader in ("torch", "device"):
        assert labels(loader, 0) == labels(loader, 0) != labels(loader, 1)
    dm = datamodule(folder_root, loader="device", seed=1)
    batches = dm.device_batches("train", train=True)
    assert len(batches) == 350 // 16 and batches.augment is not None
    assert dm.device_batches("test", train=False).augment is None


def test_eval_is_random_asks_the_path_that_evaluates(folder_root):
    from cifar_lightning.data.augment import AugmentPreset, train_transform

    torch_dm, device_dm = datamodule(folder_root), datamodule(folder_root, loader="device")
    assert not torch_dm.eval_is_random("test") and not device_dm.eval_is_random("test")
    random_tf = train_transform(AugmentPreset(crop_padding=4, flip=True))
    torch_dm.test_set.transform = device_dm.test_set.transform = random_tf
    assert torch_dm.eval_is_random("test")
    assert not device_dm.eval_is_random("test")  # normalisation only, whatever the dataset has


def test_loaders_batch_shapes(folder_root):
    dm = datamodule(folder_root)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.val_dataloader() is not None
    assert datamodule(folder_root, val_size=0).val_dataloader() == []


# ---- bad input: one DataError naming the path and the fix --------------------------------------


def test_absent_data_names_both_layouts_and_the_override(tmp_path):
    with pytest.raises(DataError) as err:
        sources.prepare_cache(tmp_path / "empty", allow_download=False)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "train" in msg and "data.root=" in msg
    assert str(tmp_path / "empty") in msg


def test_corrupt_image_is_named(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    bad = root / "train" / "cat" / "00061.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        sources.prepare_cache(root, allow_download=False)
    assert not (root / sources.CACHE_NAME).exists()


def test_wrong_image_size_is_named(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    bad = root / "test" / "dog" / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(bad)
    with pytest.raises(DataError, match=f"image {bad} is 40x40.*32x32"):
        sources.prepare_cache(root, allow_download=False)


def test_unknown_class_folder(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    (root / "train" / "cat").rename(root / "train" / "kitten")
    with pytest.raises(DataError, match="unknown class folder.*kitten.*airplane"):
        sources.prepare_cache(root, allow_download=False)


def test_missing_class_folder(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    shutil.rmtree(root / "test" / "frog")
    with pytest.raises(DataError, match="missing class folder.*frog"):
        sources.prepare_cache(root, allow_download=False)


def test_empty_split(tmp_path):
    root = tmp_path / "d"
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True)
        (root / "test" / c).mkdir(parents=True)
    with pytest.raises(DataError, match="no images.*train.*empty"):
        sources.prepare_cache(root, allow_download=False)


def test_val_size_too_large(folder_root):
    with pytest.raises(DataError, match="data.val_size=400 must be between 0 and 399"):
        datamodule(folder_root, val_size=400)


def test_jpeg_folders_are_read(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1, fmt="jpg")
    splits = sources.load_splits(Path(sources.prepare_cache(root, allow_download=False)).parent)
    x, _ = make_images(2, 0)
    # Lossy: the noise texture suffers, but each image keeps its colour (and its label).
    got = splits.train_x.float().mean(dim=(2, 3))
    want = torch.from_numpy(x).float().mean(dim=(1, 2))
    assert (got - want).abs().max() < 8


@pytest.mark.slow
def test_cli_bad_data_is_one_clear_error(tmp_path):
    proc = run_cli(
        "train.py",
        f"data.root={tmp_path / 'nothing'}",
        "data.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.root=" in errors[0]


# ---- data settings of the wrong type: one UserError naming the key, before anything is read ----


def built_from_overrides(*overrides: str) -> CIFAR10DataModule:
    """The datamodule as train.py builds it: Hydra's values for the overrides, as Hydra parses
    them (`data.download=no` stays the string "no")."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return instantiate(cfg.data, augment=OmegaConf.to_container(cfg.augment), seed=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.val_size=abc", "data.val_size='abc' must be an integer: pass e.g. data.val_"),
        ("data.batch_size=1.5", "data.batch_size=1.5 must be an integer"),
        ("data.batch_size=abc", "data.batch_size='abc' must be an integer"),
        ("data.split_seed=abc", "data.split_seed='abc' must be an integer"),
        ("data.eval_batch_size=true", "data.eval_batch_size=true must be an integer"),
        ("data.num_workers=2.0", "data.num_workers=2.0 must be an integer"),
        ("data.train_size=all", "data.train_size='all' must be an integer or null"),
        ("data.download=no", "data.download='no' is not a switch"),
        ("data.alternating_flip=maybe", "data.alternating_flip='maybe' is not a switch"),
        ("data.root=null", "data.root=null is not a path: pass data.root=FOLDER"),
        ("data.split_seed=18446744073709551616", "data.split_seed=18446744073709551616 is out"),
    ],
)
def test_data_settings_of_the_wrong_type_are_one_error_naming_the_key(override, message):
    from cifar_lightning.cli import user_message

    with pytest.raises(Exception) as err:  # Hydra wraps what the constructor raised
        built_from_overrides(override)
    shown = user_message(err.value)
    assert shown is not None and message in shown and "\n" not in shown


def test_settings_of_the_right_types_are_accepted(tmp_path):
    dm = built_from_overrides("data.train_size=null", "data.download=false", "data.split_seed=-1")
    assert dm.train_size is None and dm.download is False and dm.split_seed == -1
    # An integer of another type (numpy's, from a script) is an integer too.
    assert CIFAR10DataModule(root=tmp_path, batch_size=np.int64(8)).batch_size == 8


def test_a_train_size_larger_than_the_training_split_is_refused(folder_root):
    # It used to be cut silently to the 350 images left after the validation split.
    with pytest.raises(DataError, match=r"data.train_size=351 is more than the 350 training "
                       r"images .*data.val_size=50.*data.train_size=350 or less, or "
                       r"data.train_size=null"):  # fmt: skip
        datamodule(folder_root, train_size=351)
    assert len(datamodule(folder_root, train_size=350).train_set) == 350


@pytest.mark.slow
def test_cli_a_data_setting_of_the_wrong_type_is_one_clear_error(folder_root, tmp_path):
    proc = run_cli("train.py", f"data.root={folder_root}", "data.val_size=abc",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.val_size='abc' must be an integer: pass e.g. data.val_size=5000"]
