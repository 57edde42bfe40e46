"""Scoring a trained model on one split outside the test stage: the figures results.json keeps
beside test_acc (clean training accuracy, final validation accuracy). The test accuracy without
TTA comes from the test's own pass (Classifier.test_step), added up as here.

Through Trainer.predict, so the trainer's device, precision (autocast) and eval mode apply
exactly as in its test stage; counts are summed over ranks, each of which sees a disjoint
share of the split (the datamodule's evaluation loaders pad nothing)."""

from __future__ import annotations

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader

from cifar_lightning.data.device_loader import DeviceBatches
from cifar_lightning.module import Classifier


def score(
    trainer: L.Trainer, module: Classifier, loader: DataLoader | DeviceBatches, tta_level: int
) -> tuple[float, float]:
    """(accuracy, mean loss) of `module` as it is on `loader`'s batches, at `tta_level`."""
    module.predict_tta_level = tta_level
    try:
        outputs = trainer.predict(module, dataloaders=loader, return_predictions=True)
    finally:
        module.predict_tta_level = 0
    totals = torch.zeros(3, dtype=torch.float64, device=module.device)
    for counts in outputs or []:  # Classifier.predict_step: metrics.batch_counts
        totals += counts
    correct, loss_sum, count = trainer.strategy.reduce(totals, reduce_op="sum").tolist()
    if count == 0:
        raise ValueError("score: the loader gave no images")
    return correct / count, loss_sum / count
