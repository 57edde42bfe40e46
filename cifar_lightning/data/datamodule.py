"""The CIFAR-10 LightningDataModule: cache, splits, transforms and loaders."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from cifar_lightning import CLASSES
from cifar_lightning.config_checks import as_override, check_types
from cifar_lightning.data.augment import AugmentPreset, eval_transform, train_transform
from cifar_lightning.data.batch_augment import BatchAugment
from cifar_lightning.data.device_loader import DeviceBatches
from cifar_lightning.data.loaders import (
    EpochSampler,
    ImageTensorDataset,
    ResumableLoader,
    worker_start_method,
)
from cifar_lightning.data.order import EpochOrder
from cifar_lightning.data.photometric import normalize
from cifar_lightning.data.sources import CACHE_NAME, cache_fingerprint, load_splits, prepare_cache
from cifar_lightning.errors import DataError, UserError

CLEAN_TRAIN_IMAGES = 10_000  # the "train_clean" split: the training split's first (fixed) images
# Hydra passes a value as written: `data.val_size=abc` arrives as "abc", `data.batch_size=1.5`
# as a float, `data.download=no` as the string "no" (truthy: it would download). Each would fail
# far from its setting, or be taken for what it is not, so the types are checked first.
INT_KEYS = ("batch_size", "eval_batch_size", "val_size", "train_size", "split_seed", "num_workers")
BOOL_KEYS = ("download", "alternating_flip")


class CIFAR10DataModule(L.LightningDataModule):
    classes = CLASSES

    def __init__(
        self,
        root: str = "data/",
        download: bool = True,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        val_size: int = 5000,
        train_size: int | None = None,
        split_seed: int = 0,
        num_workers: int = 2,
        loader: str = "torch",
        alternating_flip: bool = False,
        augment: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        """`seed`: the run's seed (what seed_everything returned)."""
        super().__init__()
        if not isinstance(root, str | PathLike):
            raise UserError(f"data.root={as_override(root)} is not a path: pass data.root=FOLDER")
        examples = {k: p.default for k, p in inspect.signature(type(self)).parameters.items()}
        check_types("data", locals(), INT_KEYS, BOOL_KEYS, examples, nullable=("train_size",))
        if loader not in ("torch", "device"):
            raise UserError(f"data.loader={loader!r} is not an option: use data.loader=torch "
                            f"(DataLoader, per-image transforms) or data.loader=device (the "
                            f"split on the training device, batched augmentation)")  # fmt: skip
        if batch_size < 1 or eval_batch_size < 1:
            raise UserError(f"data.batch_size and data.eval_batch_size must be >= 1, got "
                            f"{batch_size} and {eval_batch_size}")  # fmt: skip
        if num_workers < 0 or (train_size is not None and train_size < 1):
            raise UserError(f"data.num_workers must be >= 0 and data.train_size >= 1 or null, "
                            f"got {num_workers} and {train_size}")  # fmt: skip
        if not -(2**63) <= split_seed < 2**64:  # what torch.Generator.manual_seed takes
            raise UserError(f"data.split_seed={split_seed} is out of range (-2**63 to 2**64 - 1): "
                            f"pass e.g. data.split_seed=0")  # fmt: skip
        self.root = Path(root)
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.train_size = train_size
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.loader = loader
        self.alternating_flip = alternating_flip
        self.seed = seed
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        try:  # both pipelines built once here, so a bad augment value fails before training
            self.augment = AugmentPreset.from_config(augment)
            train_transform(self.augment), BatchAugment(self.augment)
        except (TypeError, ValueError) as err:
            raise UserError(f"the augment settings are not valid: {err}") from err
        self.train_set: ImageTensorDataset | None = None
        self.val_set: ImageTensorDataset | None = None
        self.test_set: ImageTensorDataset | None = None
        self.train_clean_set: ImageTensorDataset | None = None
        self.fingerprint = ""  # of the cached data set (sources.fingerprint), after setup
        self._train_order: EpochOrder | None = None  # of the training batches last handed out
        self._resume_order: dict[str, int] | None = None  # from a checkpoint, see load_state_dict
        self._prepared = False  # the data cache checked (prepare_data)
        self._ahead: dict[str, Any] | None = None  # the splits loaded during the check

    @property
    def has_val(self) -> bool:
        return self.val_size > 0

    @property
    def sizes(self) -> dict[str, int]:
        """Images per split, after setup."""
        return {name: len(self._split(name)) for name in ("train", "val", "test")}

    def prepare_data(self) -> None:
        # Lightning calls this at the start of every fit, test and predict (four times in a
        # train.py run), each time before setup(). One check is enough (60,000 stat calls,
        # ~0.2 s on a 2-core EPYC): setup() loads the data once, after the first check, and
        # every later stage uses that load, whatever the folder holds by then.
        if self._prepared:
            return
        # While the check runs (Python, mostly), a thread loads the cache as it is and cuts
        # the splits (file reads and copies, which release the GIL) for setup(): the data then
        # cost about the check alone. That load is used only if it holds the data of the cache
        # the check left (the same fingerprint: a rebuild from changed files differs, and so
        # does another run's cache written meanwhile); else setup() loads that cache.
        # Data already loaded (setup() before the first check) need no second copy.
        early = (self.root / CACHE_NAME).is_file() and self.train_set is None
        pool = ThreadPoolExecutor(max_workers=1)
        ahead = pool.submit(self._load) if early else None
        try:
            prepare_cache(self.root, self.download)
        except BaseException:  # the check's error (or Ctrl-C) at once, not after the load
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()  # waits for the load
        if ahead is not None and ahead.exception() is None:  # (a failed load: setup raises)
            loaded = ahead.result()
            if loaded["fingerprint"] == cache_fingerprint(self.root):
                self._ahead = loaded
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        ahead, self._ahead = self._ahead, None
        if self.train_set is not None:  # fit and test share one load
            return
        # The early load cut the splits with the options of its time; changed since (a
        # datamodule reconfigured between prepare_data and setup), they are cut again.
        if ahead is None or ahead["options"] != self._split_options():
            ahead = self._load()
        for name, value in ahead.items():
            if name != "options":
                setattr(self, name, value)

    def _split_options(self) -> tuple:
        """What _load's splits depend on besides the cache."""
        return (self.val_size, self.train_size, self.split_seed, self.seed, self.augment)

    def _load(self) -> dict[str, Any]:
        """The cache's splits as setup() keeps them: the datasets, the split indices, the
        data's fingerprint."""
        splits = load_splits(self.root)
        n = len(splits.train_y)
        if not 0 <= self.val_size < n:
            raise DataError(
                f"data.val_size={self.val_size} must be between 0 and {n - 1} "
                f"(the training split under {self.root} has {n} images)"
            )
        # A generator of its own, not the global seed: every run validates on the same images.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        vi, ti = perm[: self.val_size], perm[self.val_size :]
        if self.train_size is not None:  # a fixed random subset, for quick studies
            if self.train_size > len(ti):  # not cut: the run would train on fewer than it says
                raise DataError(f"data.train_size={self.train_size} is more than the {len(ti)} "
                                f"training images under {self.root} after the validation split "
                                f"(data.val_size={self.val_size}): pass data.train_size={len(ti)} "
                                f"or less, or data.train_size=null for all of them")  # fmt: skip
            ti = ti[: self.train_size]
        train_tf, eval_tf = train_transform(self.augment), eval_transform(self.augment)
        x, y, d = splits.train_x, splits.train_y, splits.train_digests
        clean = ti[:CLEAN_TRAIN_IMAGES]
        return {
            "val_index": vi,
            "train_index": ti,
            "train_set": ImageTensorDataset(x[ti], y[ti], train_tf, seed=self.seed, digests=d[ti]),
            "val_set": ImageTensorDataset(x[vi], y[vi], eval_tf, digests=d[vi]),
            "test_set": ImageTensorDataset(
                splits.test_x, splits.test_y, eval_tf, digests=splits.test_digests
            ),
            "train_clean_set": ImageTensorDataset(x[clean], y[clean], eval_tf, digests=d[clean]),
            "fingerprint": splits.fingerprint,
            "options": self._split_options(),
        }

    def _options(self) -> dict[str, Any]:
        # Pinned batches when the trainer is on CUDA: Lightning copies them non_blocking, so the
        # host queues the step without waiting for the copy (on a CPU, pinning only costs memory).
        trainer = self.trainer
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "multiprocessing_context": worker_start_method() if self.num_workers > 0 else None,
            "pin_memory": on_cuda,
            # Its own generator: creating an iterator then never draws from the global random
            # stream, which a resumed run must find exactly where the interrupted one left it.
            "generator": torch.Generator(),
        }

    def image_digests(self, split: str) -> torch.Tensor:
        """(N, 16) uint8: a digest of each image of `split` (train, val, test or train_clean),
        in the split's order, from the data cache (the health check's overlap). After setup."""
        return self._split(split).image_digests()

    def _split(self, name: str) -> ImageTensorDataset:
        splits = {"train": self.train_set, "val": self.val_set, "test": self.test_set,
                  "train_clean": self.train_clean_set}  # fmt: skip
        if name not in splits:
            raise ValueError(f"unknown split {name!r}: train, val, test or train_clean")
        if splits[name] is None:
            raise RuntimeError("call setup() before asking for the data")
        return splits[name]

    def eval_is_random(self, split: str) -> bool:
        """Whether evaluating `split` ("val" or "test") sees random inputs (the health check
        reports it). data.loader=device evaluates with normalisation only, by construction; the
        DataLoader path applies the split's transform, so that is tried out (it may have been
        replaced after setup)."""
        if self.loader == "device":
            return False
        return self._split(split).transform_is_random()

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # -- data.loader=device: the uint8 split on the training device, augmented batch by batch --
    def _device_split(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if (name, device) not in self._on_device:  # one copy per split and device, kept
            ds = self._split(name)
            self._on_device[name, device] = (ds.x.to(device), ds.y.to(device))
        return self._on_device[name, device]

    def device_batches(
        self, split: str, train: bool, device: torch.device | str | None = None
    ) -> DeviceBatches:
        """The batches data.loader=device gives for `split` ("train", "val" or "test"): with
        train=True shuffled, augmented and cut to full batches of batch_size, else in order,
        normalised only, in batches of eval_batch_size. The split is copied to `device` once
        (default: the trainer's root device, or the CPU without a trainer). After setup()."""
        if device is None:
            device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
        x, y = self._device_split(split, torch.device(device))
        rank, world = self._world()
        augment = None
        if train and (self.augment.is_random or self.alternating_flip):
            augment = BatchAugment(self.augment, self.alternating_flip, flip_seed=self.seed)
        batch_size = self.batch_size if train else self.eval_batch_size
        return DeviceBatches(
            x, y, batch_size, shuffle=train, augment=augment, mean=self.augment.mean,
            std=self.augment.std, seed=self.seed, drop_last=train, rank=rank, world_size=world,
        )  # fmt: skip

    def whitening_images(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The first n training images (a random draw), normalised, never augmented, on
        `device`: copied there as uint8 and normalised there (a quarter of the bytes to copy,
        and no CPU pass over them)."""
        return normalize(self.train_set.x[:n].to(device), self.augment.mean, self.augment.std)

    # The training position also travels as the datamodule's state, which Lightning restores
    # before configure_optimizers. It restores the loaders' own state only when it builds them
    # itself, which it skips once a schedule sized by estimated_stepping_batches built them:
    # such runs resumed mid-epoch from the epoch's start. Applying both states is harmless.
    def state_dict(self) -> dict[str, Any]:
        return {"train_order": self._train_order.state_dict()} if self._train_order else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_order = state.get("train_order")

    def _track(self, order: EpochOrder) -> None:
        if self._resume_order is not None:
            order.load_state_dict(self._resume_order)
            self._resume_order = None
        self._train_order = order

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        if self.loader == "device":
            batches = self.device_batches("train", train=True)
            self._track(batches.order)
            return batches
        if self.trainer is not None and self.trainer.overfit_batches > 0:
            # debug=overfit: the same first batches every epoch. Lightning wants a
            # SequentialSampler here (it would swap one into the loader itself, with a warning);
            # a plain loader has no position to resume, which a few memorised batches do not need.
            return DataLoader(self.train_set, batch_size=self.batch_size, **self._options())
        # The datamodule shards for DDP itself (trainer use_distributed_sampler: false), so its
        # sampler keeps control of the order and the per-draw augmentation seeds.
        rank, world = self._world()
        order = EpochOrder(len(self.train_set), shuffle=True, seed=self.seed,
                           batch_size=self.batch_size, rank=rank, world_size=world)  # fmt: skip
        self._track(order)
        sampler = EpochSampler(order)
        return ResumableLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, **self._options()
        )

    def val_dataloader(self) -> DataLoader | DeviceBatches | list:
        # An empty list tells Lightning there is no validation (data.val_size=0).
        return self.eval_loader("val") if self.has_val else []

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self.eval_loader("test")

    def eval_loader(self, name: str) -> DataLoader | DeviceBatches:
        """In-order, normalised-only batches of a split: "val", "test", or "train_clean" (the
        first CLEAN_TRAIN_IMAGES images of the training split, the same for every run)."""
        if self.loader == "device":
            return self.device_batches(name, train=False)
        dataset = self._split(name)
        rank, world = self._world()
        sampler = None
        if world > 1:
            # DistributedSampler pads the last shard with repeats, so some images would count
            # twice; this one gives each rank a disjoint share and pads nothing.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=False
            )
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, sampler=sampler, **self._options()
        )
