"""The Classifier's counting: a running weighted mean (two in-place adds on the device per
update) and a confusion matrix, neither read back before the epoch's end; an evaluated batch's
counts, the ranks' per-image results in the split's order, and old checkpoints' train_acc states.

torchmetrics' MulticlassAccuracy, MulticlassConfusionMatrix and MeanMetric check their arguments
on every update (a `torch.unique` of the labels, a NaN test of the values, a weight copied from
the host): each check reads a value back from the device, so every training, validation and
test batch waited for the GPU, and their forward() dispatches some 60 ops per step. The steps
only need sums, and the sums are what torchmetrics synchronises across DDP ranks anyway.
(MeanMetric(nan_strategy="disable"), which skips the NaN test, ignores `weight` in torchmetrics
1.9: a partial last batch would then weigh as much as a full one.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

if TYPE_CHECKING:
    import pytorch_lightning as L


class RunningMean(Metric):
    """sum(value_sum) / sum(weight) over the updates since the last reset.

    update(value_sum, weight) takes the batch's sum (loss x batch size, correct predictions) and
    its weight (the batch size), never reads them on the host, and compute() is the only read.
    Under DDP both sums are summed over the ranks before the division: the mean over every
    image. The states keep MeanMetric's names (mean_value: the weighted sum, weight), so a
    checkpoint's train_loss states load either way.
    """

    full_state_update = False  # update() needs no earlier state: forward() is never used

    def __init__(self) -> None:
        super().__init__()
        self.add_state("mean_value", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros(()), dist_reduce_fx="sum")

    def _apply(self, fn: Any, exclude_state: Any = "") -> RunningMean:
        # The sums stay float32 whatever the module is cast to: under precision=bf16-true
        # Lightning casts the module, torchmetrics' states with it, and a bf16 running sum
        # (8 bits of mantissa) loses whole units of loss within an epoch.
        this = super()._apply(fn, exclude_state)
        for key in ("mean_value", "weight"):
            if getattr(this, key).dtype != torch.float32:
                setattr(this, key, getattr(this, key).float())
                this._defaults[key] = this._defaults[key].float()
        return this

    def update(self, value_sum: Tensor, weight: int | float) -> None:  # type: ignore[override]
        # add_, not +=: the same in-place add without re-assigning the attribute (a Metric's
        # and a Module's __setattr__, per state, per step).
        self.mean_value.add_(value_sum)
        self.weight.add_(weight)

    def compute(self) -> Tensor:
        return self.mean_value / self.weight


class ConfusionCounts(Metric):
    """Images by true class (rows) and predicted class (columns), as torchmetrics'
    MulticlassConfusionMatrix counts them, summed over the DDP ranks; update() reads nothing
    back (a bincount on a GPU reads the largest index to size its output)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        zeros = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("counts", zeros, dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        n = self.num_classes
        # Each image's cell compared with every cell and summed: integer sums, the same on every
        # run and device (an index_add_ on a GPU adds in no fixed order).
        cells = (target * n + preds).unsqueeze(1)
        every = torch.arange(n * n, device=cells.device)
        self.counts.add_((cells == every).sum(0).view(n, n))

    def compute(self) -> Tensor:
        return self.counts

    def class_accuracy(self) -> Tensor:
        """Each class's share of its images predicted right, in float32 as MulticlassAccuracy
        (average=None) divides; NaN for a class none of whose images was counted."""
        counts = self.compute()
        return counts.diagonal().float() / counts.sum(1).float()


def add_evaluated(acc: RunningMean, mean_loss: RunningMean, loss: Tensor, hits: Tensor) -> None:
    """An evaluated batch into its stage's sums: its correct predictions (`hits`, preds ==
    target per image), and its mean loss x its images in float32 whatever the autocast
    (torchmetrics' MeanMetric's weighing, to the bit)."""
    acc.update(hits.sum(), len(hits))
    mean_loss.update(loss.float() * len(hits), len(hits))


def batch_counts(logits: Tensor, y: Tensor, criterion: nn.Module) -> Tensor:
    """(correct predictions, summed loss, images) of one evaluated batch, float64 on the
    device: what evaluation.score and the test's figures without TTA add up, batch by batch."""
    # Each made float64 before stacking: stacked as they are, under bf16-true the counts would
    # be rounded to the loss's bf16 (499 correct images read 500).
    # The image count made on the device (torch.full), not copied there from the host.
    images = torch.full((), len(y), dtype=torch.float64, device=y.device)
    counts = ((logits.argmax(1) == y).sum(), criterion(logits, y) * len(y), images)
    return torch.stack([c.double() for c in counts])


def interleave_ranks(module: L.LightningModule, local: Tensor) -> Tensor | None:
    """Every rank's per-image flags (bool, one per image it evaluated), in the evaluated split's
    order, on every rank; None if the ranks' shares do not cover images 0..n-1 exactly.

    The datamodule shards evaluation by stride with no padding (rank r: images r, r + world,
    ...; EpochOrder and UnrepeatedDistributedSampler alike): the ranks' flags interleave back
    into that order. Collective: every rank calls it."""
    device, world = module.device, module.trainer.world_size
    counts = module.all_gather(torch.tensor(len(local), device=device)).tolist()
    padded = torch.zeros(max(counts), dtype=torch.uint8, device=device)
    padded[: len(local)] = local
    shards = module.all_gather(padded)  # (world, longest), the same on every rank
    total = sum(counts)
    if any(len(range(r, total, world)) != n for r, n in enumerate(counts)):
        return None
    merged = torch.zeros(total, dtype=torch.bool, device=device)
    for r, n in enumerate(counts):
        merged[r::world] = shards[r, :n].bool()
    return merged


def upgrade_train_acc(state: dict[str, Any]) -> None:
    """A checkpoint written while train_acc was torchmetrics' MulticlassAccuracy (micro) holds
    its counts tp, fp, tn, fn: as RunningMean's states, correct = tp of tp + fn images."""
    if "train_acc.tp" in state:
        tp, fn = state.pop("train_acc.tp"), state.pop("train_acc.fn")
        state.pop("train_acc.fp", None), state.pop("train_acc.tn", None)
        state["train_acc.mean_value"] = tp.sum().float()
        state["train_acc.weight"] = (tp + fn).sum().float()
