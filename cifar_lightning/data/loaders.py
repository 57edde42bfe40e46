"""The DataLoader path's pieces: the in-memory dataset with per-draw seeded transforms, the
sampler and loader that follow an EpochOrder and resume mid-epoch, and the workers' start method.
The device path (data.loader=device) is device_loader.py."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cifar_lightning.data import sources
from cifar_lightning.data.order import EpochOrder, derive_seed


def worker_start_method() -> str | None:
    """How DataLoader workers are started: the platform's default (None), except inside a
    joblib worker (hydra/launcher=joblib). joblib's loky workers make "loky" the default start
    method, which cannot start torch's worker processes ("'Process' object has no attribute
    'env'"); "spawn" and "forkserver" children fail too, as they inherit "loky" as their start
    method without loky to provide it. "fork" works (the default on Linux up to Python 3.13)."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None or method in ("fork", "forkserver", "spawn"):
        return None
    return "fork"


class ImageTensorDataset(Dataset):
    """uint8 images (N, 3, 32, 32) and labels, with a per-image transform.

    With `seed` set (training), an index may be a *draw* `epoch * N + i` from EpochSampler and
    the transform's randomness is seeded by (seed, draw): an image gets the same augmentation
    whichever worker, process or resumed run computes it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable,
                 seed: int | None = None, digests: torch.Tensor | None = None) -> None:  # fmt: skip
        self.x, self.y, self.transform, self.seed = x, y, transform, seed
        self._digests = (x, digests)  # digests of these images (sources.image_digests)

    def image_digests(self) -> torch.Tensor:
        """(N, 16) uint8, one digest per image: those the data cache stored, unless `x` was
        replaced since (then hashed anew, to describe the images this dataset now holds)."""
        x, digests = self._digests
        if digests is None or x is not self.x:
            self._digests = self.x, sources.image_digests(self.x)
        return self._digests[1]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = draw % len(self.y)
        if self.seed is None:
            return self.transform(self.x[i]), self.y[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, draw))
            return self.transform(self.x[i]), self.y[i]

    def transform_is_random(self) -> bool:
        """Apply the transform twice to one image under different RNG states."""
        if len(self) == 0:
            return False
        with torch.random.fork_rng(devices=[]):  # never disturb the run's own random stream
            outs = []
            for seed in range(4):
                torch.manual_seed(seed)
                outs.append(self.transform(self.x[0]))
        return any(not torch.equal(outs[0], o) for o in outs[1:])


class EpochSampler(Sampler[int]):
    """An EpochOrder's indices for the DataLoader: yields draws `epoch * N + i` (see
    ImageTensorDataset), from the resume point on after a restore. Lightning calls set_epoch
    at each epoch start."""

    def __init__(self, order: EpochOrder) -> None:
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return self.order.size

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.order.begin()
        indices = self.order.indices(epoch)[start * self.order.batch_size :]
        return iter((indices + epoch * self.order.n).tolist())


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler (whose EpochOrder has the loader's batch_size and
    drop_last) that Lightning can checkpoint mid-epoch (state_dict/load_state_dict): a resumed
    run continues with the next batch of the same epoch instead of restarting it.

    The position lives in the EpochSampler. Lightning may rebuild the loader around a sampler
    of its own (trainer.overfit_batches swaps in a SequentialSampler, use_distributed_sampler a
    DistributedSampler): such a loader iterates plainly and has no resumable state (an empty
    state_dict, and an empty one loads as nothing).
    """

    def _order(self) -> EpochOrder | None:
        return self.sampler.order if isinstance(self.sampler, EpochSampler) else None

    def __iter__(self) -> Iterator:
        order = self._order()
        for batch in super().__iter__():
            if order is not None:
                order.advance()  # before the yield (see EpochOrder.advance)
            yield batch

    def state_dict(self) -> dict[str, int]:
        # Lightning knows this loader's length, so its fetcher does not read ahead to find the
        # epoch's end: every yielded batch has been trained on when a checkpoint is taken
        # (tests/test_resume.py checks this end to end).
        order = self._order()
        return order.state_dict() if order is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        order = self._order()
        if order is None or not state:
            return
        if "consumed" in state:  # written before both loaders shared EpochOrder
            state = {"epoch": state["epoch"], "position": state["consumed"]}
        order.load_state_dict(state)
