"""Metrics of the LightningModule against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as L
import torch
from omegaconf import OmegaConf
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


class Sizes(nn.Module):
    """Records the input size of every call; a linear map of mean colours otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, int]] = []
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, x.shape[-1]))
        return self.head(x)


def test_train_resolution_resizes_training_batches_per_epoch_and_never_eval(folder_root, tmp_path):
    net = Sizes()
    module = Classifier(net, optimizer=torch.optim.SGD, train_resolution=[16, 24])
    dm = CIFAR10DataModule(root=str(folder_root), download=False, batch_size=50, val_size=50,
                           num_workers=0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_checkpointing=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    steps = len(dm.train_dataloader())
    train_sizes = [size for training, size in net.seen if training]
    assert train_sizes == [16] * steps + [24] * steps * 2  # the last entry holds from epoch 1 on
    assert {size for training, size in net.seen if not training} == {32}


def test_train_resolution_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="train_resolution"):
        Classifier(Sizes(), optimizer=torch.optim.SGD, train_resolution=[4, 32])


def test_hparams_from_hydra_lists_load_weights_only(tmp_path):
    # Hydra hands list options over as ListConfig; saved as such, every checkpoint of the run
    # would hold a pickled object and be refused by the weights-only load of the test stage.
    module = Classifier(Sizes(), optimizer=torch.optim.SGD,
                        train_resolution=OmegaConf.create([24, 32]),
                        class_names=OmegaConf.create(list(DISPLAY_NAMES)))  # fmt: skip
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]
    assert loaded["train_resolution"] == [24, 32]
    assert loaded["class_names"] == list(DISPLAY_NAMES)
