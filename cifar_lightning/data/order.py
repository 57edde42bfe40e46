"""Batch order, seeding, sharding across ranks and the resume position, for both loaders.

The DataLoader path (loaders.EpochSampler + ResumableLoader) and the device path
(device_loader.DeviceBatches) take their epochs from an EpochOrder, so they visit the same
images in the same order and checkpoint the same state.
"""

from __future__ import annotations

import math

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several ints (splitmix-style mixing), stable across processes, Python
    versions and ranks. Both data paths seed their per-epoch and per-batch generators with it."""
    h = 0x9E3779B97F4A7C15
    for i in parts:
        h = ((h ^ (i & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class EpochOrder:
    """Which of n images one rank visits in each epoch, in which order, and how far it has got.

    Training (shuffle=True): a new permutation every epoch from a generator seeded by (seed,
    epoch), the same on every rank; rank r takes perm[r::world_size] cut to a common length, so
    all ranks run the same number of steps. Evaluation (shuffle=False): fixed order, nothing
    dropped (with world_size > 1 the ranks' shards may then differ by one image, as nothing is
    padded or duplicated). Each epoch's order depends on (seed, epoch) alone, so a resumed run
    sees the same order; `position` counts the batches of `epoch` handed out so far.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        seed: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.n, self.shuffle, self.seed, self.batch_size = n, shuffle, seed, batch_size
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0
        self.position = 0  # batches of self.epoch already handed out: what a checkpoint records
        self._resume_at = 0  # where the next pass starts; only load_state_dict sets it

    @property
    def size(self) -> int:
        """Images per epoch on this rank."""
        if self.shuffle:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        size = self.size
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for `epoch`, in order: `size` of them."""
        if not self.shuffle:
            return torch.arange(self.rank, self.n, self.world_size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=generator)  # on CPU: identical on every rank
        return perm[self.rank :: self.world_size][: self.size]

    def batch_seed(self, epoch: int, batch: int) -> int:
        """The seed of batch `batch` of `epoch` on this rank (for batched augmentation)."""
        return derive_seed(self.seed, epoch, batch, self.rank)  # rank: no shared crops

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts at its first batch
            self.epoch, self.position, self._resume_at = epoch, 0, 0

    def begin(self) -> tuple[int, int]:
        """Start a pass: (its epoch, its first batch). The first batch is 0 unless
        load_state_dict set a resume point, which only this pass uses: an abandoned pass
        (limit_train_batches) restarts at 0."""
        epoch, start = self.epoch, self._resume_at
        self._resume_at = 0
        self.position = start
        return epoch, start

    def advance(self) -> None:
        """One more batch of the pass is handed out. Loaders call this before yielding it: the
        consumer may never call next() again (Lightning stops after len() batches), and a
        checkpoint taken while the batch is being used must say "resume after it". After the
        last batch that is the start of the next epoch, so plain loops without set_epoch() also
        reshuffle."""
        self.position += 1
        if self.shuffle and self.position == len(self):
            self.epoch, self.position = self.epoch + 1, 0

    # Checkpointing, as Lightning 2.x does it (pytorch_lightning/loops/fit_loop.py,
    # utilities/combined_loader.py, loops/fetchers.py):
    # - Save: FitLoop.on_save_checkpoint stores [state_dict() of every train iterable that has
    #   state_dict and load_state_dict] under loops.fit_loop.state_dict.combined_loader. Saves
    #   happen in hooks (ModelCheckpoint: on_train_batch_end, epoch end, validation end), i.e.
    #   after the current batch was fetched and used. Because both loaders have __len__, the
    #   training fetcher (_PrefetchDataFetcher) does not read ahead, so the state counts exactly
    #   the batches consumed, the current one included. (Without __len__ it would prefetch one
    #   batch and the saved position would be one batch ahead.)
    # - Restore: FitLoop.setup_data calls load_state_dict() (only when restarting from a
    #   checkpoint), then iter(); on_advance_start then calls sampler.set_epoch(epochs done),
    #   still before the first next(); the epoch loop continues its batch_idx where it stopped.
    #   Validation iterables are not saved or restored.
    # Hence: position = batches yielded so far, advanced before each yield; the next pass
    # starts there; set_epoch with the same epoch keeps it. Verified by tests that resume
    # Trainer.fit mid-epoch and at an epoch boundary and compare with an uninterrupted run.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._resume_at = state["position"]
