"""Data loading without a DataLoader: uint8 images on the training device, augmented per batch.

DeviceBatches replaces the DataLoader: it takes each epoch's order from an EpochOrder (shuffle,
shard across ranks, resume mid-epoch from a checkpoint), slices tensors that already live on the
device and augments them batch by batch with a BatchAugment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cifar_lightning.data.augment import CIFAR_MEAN, CIFAR_STD
from cifar_lightning.data.batch_augment import BatchAugment
from cifar_lightning.data.order import EpochOrder
from cifar_lightning.data.photometric import normalize

# Images augmented at once by the training loader (see DeviceBatches._chunks): 16,384 CIFAR
# images are 50 MB as uint8, 200 MB once normalised to float32.
CHUNK_IMAGES = 16384


class DeviceBatches:
    """An iterable of (x, y) batches over tensors already on the training device.

    Lightning's Trainer.fit accepts it in place of a DataLoader. The order, the shards of the
    ranks and the resume position are an EpochOrder's (see there). Training (shuffle=True): batch
    b is augmented with a seed derived from (seed, epoch, b, rank), so a resumed run sees exactly
    the batches the uninterrupted run would have. Evaluation (shuffle=False): fixed order,
    normalisation only, nothing dropped.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: BatchAugment | None = None,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4 or len(x) != len(y):
            raise ValueError(f"expected uint8 images (N, 3, H, W) and N labels, got {x.dtype} "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")  # fmt: skip
        self.order = EpochOrder(len(y), shuffle=shuffle, seed=seed, batch_size=batch_size,
                                drop_last=drop_last, rank=rank, world_size=world_size)  # fmt: skip
        if not shuffle and (augment is not None or drop_last):
            raise ValueError("evaluation batches (shuffle=False) are never augmented or dropped")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.augment, self.mean, self.std = augment, mean, std
        # Lightning calls iterable.sampler.set_epoch(epoch) every epoch, and reads
        # batch_sampler whenever sampler exists (to tell whether evaluation data is shuffled).
        self.sampler, self.batch_sampler = self, None
        if augment is not None:
            augment.prepare(x)  # a one-time copy, made with the data rather than in a step

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    # Lightning checkpoints the training iterable through these two (see EpochOrder).
    def state_dict(self) -> dict[str, int]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.order.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: nothing below runs until the first next(). Lightning calls iter() before
        # set_epoch() (FitLoop.setup_data, then on_advance_start), so the epoch and resume point
        # are read only once they are final, as DataLoader's samplers do.
        order = self.order
        epoch, start = order.begin()
        index = order.indices(epoch).to(self.x.device)
        if self.augment is not None and not self.augment.warps:
            yield from self._chunks(epoch, start, index)
            return
        contiguous = not order.shuffle and order.world_size == 1
        for b in range(start, len(order)):
            lo, hi = b * self.batch_size, (b + 1) * self.batch_size
            if contiguous:  # evaluation on one device: plain slices, no gather
                x, y = normalize(self.x[lo:hi], self.mean, self.std), self.y[lo:hi]
            else:
                idx = index[lo:hi]
                y = self.y[idx]
                if self.augment is None:
                    # index_select, not x[idx]: on a CPU the latter took 6x as long for a batch
                    # of CIFAR images.
                    x = normalize(self.x.index_select(0, idx), self.mean, self.std)
                else:
                    x = self.augment.gather(self.x, idx, order.batch_seed(epoch, b), epoch)
            order.advance()  # before the yield (see EpochOrder.advance)
            yield x, y

    def _chunks(
        self, epoch: int, start: int, index: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches from `start` on, augmented a chunk of batches at a time
        (BatchAugment.gather_batches): exactly the batches of one gather per batch, but a step
        then costs two slices where it cost a dozen small ops (on a GPU, kernel launches the
        step waits behind). Chunks of about CHUNK_IMAGES images bound the memory and the work
        a pass stopped early (limit_train_batches) does in vain."""
        order, bs = self.order, self.batch_size
        per_chunk = max(1, CHUNK_IMAGES // bs)
        for first in range(start, len(order), per_chunk):
            last = min(first + per_chunk, len(order))
            idx = index[first * bs : last * bs]
            sizes = [len(range(b * bs, min((b + 1) * bs, len(index)))) for b in range(first, last)]
            seeds = [order.batch_seed(epoch, b) for b in range(first, last)]
            xs = self.augment.gather_batches(self.x, idx, seeds, sizes, epoch)
            ys = self.y[idx]
            lo = 0
            for n in sizes:
                order.advance()  # before the yield (see EpochOrder.advance)
                yield xs[lo : lo + n], ys[lo : lo + n]
                lo += n
