"""Metrics of the LightningModule against independent computations."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as L
import torch
from torch import nn

from cifar_lightning import DISPLAY_NAMES
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.module import Classifier


def test_per_class_accuracy_and_confusion_match_a_direct_count(folder_root, tmp_path):
    torch.manual_seed(0)
    # An untrained net whose predictions spread over classes (a linear map of mean colours).
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    module = Classifier(net, optimizer=torch.optim.SGD)
    dm = CIFAR10DataModule(
        root=str(folder_root), download=False, eval_batch_size=7, num_workers=0, val_size=50
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False
    )
    [metrics] = trainer.test(module, datamodule=dm, verbose=False)

    net.eval()
    with torch.no_grad():
        xs = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
        pred = net(xs).argmax(1).numpy()
    true = dm.test_set.y.numpy()
    assert len(set(pred.tolist())) > 1, "the check needs a net that predicts several classes"
    assert np.isclose(metrics["test/acc"], (pred == true).mean())
    per_class = module.test_report["per_class_acc"]
    assert list(per_class) == list(DISPLAY_NAMES)
    for k, name in enumerate(DISPLAY_NAMES):
        assert np.isclose(per_class[name], (pred[true == k] == k).mean())
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (true, pred), 1)
    assert module.test_report["confusion_matrix"] == confusion.tolist()
