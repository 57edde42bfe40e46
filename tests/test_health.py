"""Each training-health check, triggered by the cause it is meant to catch."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
from torch import nn

from cifar_lightning.checkpoint import AtomicCheckpointIO
from cifar_lightning.data import CIFAR10DataModule, sources
from cifar_lightning.data.augment import AugmentPreset, train_transform
from cifar_lightning.health import HealthCheck, TrainingDiverged
from cifar_lightning.models.network import Network
from cifar_lightning.module import Classifier
from tests.synthetic import write_folder_layout

SEED_PRESET = AugmentPreset(
    crop_padding=4, flip=True, affine={"degrees": 40, "scale": (0.9, 1.1), "shear": 0},
    perspective={"distortion_scale": 0.2}, color_jitter={"brightness": 0.5, "contrast": 0.5,
    "saturation": 0.5}, rotation=30, mean=(0.5,) * 3, std=(0.5,) * 3,
)  # fmt: skip


def small_net() -> nn.Module:
    # Mean colour -> class: learns the synthetic data within a few dozen steps.
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 64), nn.ReLU(),
                         nn.Linear(64, 10))  # fmt: skip


def make(root: Path, tmp_path: Path, lr: float = 0.05, epochs: int = 3, **health_kw):
    torch.manual_seed(0)
    dm = CIFAR10DataModule(root=str(root), download=False, batch_size=20, val_size=50,
                           num_workers=0)  # fmt: skip
    module = Classifier(small_net(), optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    health = HealthCheck(**health_kw)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, callbacks=[health],
                        default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_checkpointing=False)  # fmt: skip
    return dm, module, health, trainer


def checks(health: HealthCheck, stage: str | None = None) -> set[str]:
    return {f["check"] for f in health.findings if stage is None or f["stage"] == stage}


def test_a_healthy_run_has_no_findings(folder_root, tmp_path):
    dm, module, health, trainer = make(folder_root, tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert health.findings == []


def test_the_seeds_augmented_test_set_is_found(folder_root, tmp_path):
    dm, module, health, trainer = make(folder_root, tmp_path)
    dm.setup()
    dm.test_set.transform = train_transform(SEED_PRESET)  # "the same method" for test data
    trainer.test(module, datamodule=dm, verbose=False)
    assert "random_eval_transform" in checks(health, "test")


def test_evaluating_an_untrained_copy_is_found(folder_root, tmp_path):
    dm, module, health, trainer = make(folder_root, tmp_path)
    untrained = copy.deepcopy(module)  # the copy made before training, then evaluated
    trainer.fit(module, datamodule=dm)
    assert health.reference_acc > 0.5
    # What the module logged (its own count, which the health checks add up) over the
    # training batches of the last validated epoch.
    assert health.reference_acc == pytest.approx(float(trainer.callback_metrics["train/acc"]))
    trainer.test(untrained, datamodule=dm, verbose=False)
    found = checks(health, "test")
    assert "chance_accuracy" in found and "prediction_collapse" in found
    message = next(f["message"] for f in health.findings if f["check"] == "chance_accuracy")
    assert "may not be the trained one" in message


class Constant(nn.Module):
    """A collapsed classifier: the same logits whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 0, 0, 5, 0, 0, 0, 0, 0, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1) + 0 * x.mean()


def test_a_collapsed_classifier_is_found(folder_root, tmp_path):
    dm, _, health, trainer = make(folder_root, tmp_path)
    module = Classifier(Constant(), optimizer=torch.optim.SGD)
    trainer.test(module, datamodule=dm, verbose=False)
    message = next(f["message"] for f in health.findings if f["check"] == "prediction_collapse")
    assert "only 1 of 10 classes" in message


class NaNAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(folder_root, tmp_path):
    dm, module, health, _ = make(folder_root, tmp_path)
    ckpts = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True,
                                        every_n_train_steps=2)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        callbacks=[NaNAt(5), health, ckpts], default_root_dir=tmp_path,
                        plugins=[AtomicCheckpointIO()])  # fmt: skip
    with pytest.raises(TrainingDiverged, match="not finite"):
        trainer.fit(module, datamodule=dm)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert "nonfinite_loss" in checks(health)


def test_a_loss_that_does_not_fall_is_found(folder_root, tmp_path):
    dm, module, health, trainer = make(folder_root, tmp_path, lr=0.0, epochs=1,
                                       loss_window_steps=5)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert "loss_not_falling" in checks(health, "train")


@pytest.mark.parametrize("accumulate", [1, 3])
def test_the_loss_windows_count_optimizer_steps_under_gradient_accumulation(accumulate):
    """With gradient accumulation several batches share a global_step: the windows still span
    optimizer steps, and the check reads the device only where Lightning logs."""
    from types import SimpleNamespace

    health = HealthCheck(loss_window_steps=4)
    health._track_loss = True
    reads = []
    health._raise_if_diverged = lambda trainer: reads.append(trainer.global_step)
    batches = 10 * accumulate  # one epoch of 10 optimizer steps
    for b in range(batches):
        steps = (b + 1) // accumulate  # global_step after this batch, as Lightning counts it
        trainer = SimpleNamespace(global_step=steps, num_training_batches=batches,
                                  accumulate_grad_batches=accumulate,
                                  log_every_n_steps=5)  # fmt: skip
        loss = torch.tensor(1.0 + 0.1 * steps)  # rising: the check must say so
        health.on_train_batch_end(trainer, None, {"loss": loss}, None, b)
    assert reads == [5, 10]  # steps 5 and 10: Lightning's logging points, once each
    [finding] = [f for f in health.findings if f["check"] == "loss_not_falling"]
    assert "over the first 8 steps" in finding["message"]


def test_train_accuracy_uses_the_modules_own_count_when_it_gives_one():
    """The Classifier returns its count of correct predictions (health adds it rather than
    counting again); any other module's predictions are counted from the batch's labels."""
    from types import SimpleNamespace

    health = HealthCheck()
    one_process = SimpleNamespace(reduce_boolean_decision=lambda bad, all: bad)
    trainer = SimpleNamespace(global_step=0, num_training_batches=9, accumulate_grad_batches=1,
                              log_every_n_steps=50, strategy=one_process)  # fmt: skip
    health.on_train_epoch_start(trainer, None)
    y, preds = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])
    health.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0), "preds": preds},
                              (None, y), 0)  # fmt: skip
    # A given count wins over the predictions (3 here, where the predictions have 2 right).
    out = {"loss": torch.tensor(1.0), "preds": preds, "correct": torch.tensor(3)}
    health.on_train_batch_end(trainer, None, out, (None, y), 1)
    health.on_train_epoch_end(trainer, None)
    assert health.reference_acc == (2 + 3) / 8


def test_overlap_labels_and_empty_classes_are_found(folder_root, tmp_path):
    dm, module, health, trainer = make(folder_root, tmp_path, epochs=1)
    dm.setup()
    dm.val_set.x = dm.train_set.x[: len(dm.val_set)].clone()  # validation on training images
    keep = dm.train_set.y != 7  # no training sample of class 7
    dm.train_set.x, dm.train_set.y = dm.train_set.x[keep], dm.train_set.y[keep]
    trainer.fit(module, datamodule=dm)
    assert {"overlap", "empty_class"} <= checks(health)
    dm.test_set.y = dm.test_set.y.clone()
    dm.test_set.y[0] = 12
    with pytest.raises(Exception):  # noqa: B017 - the metric rejects it too, after the check
        trainer.test(module, datamodule=dm, verbose=False)
    assert "label_range" in checks(health, "test")


def test_overlap_comes_from_the_digests_stored_in_the_data_cache(tmp_path, monkeypatch):
    # Duplicates in the data itself: 30 training images copied within train/ (some copies land
    # in the validation split) and 5 into test/. The check finds both without hashing an image:
    # the digests were stored when the cache was built.
    root = write_folder_layout(tmp_path / "dup", n_train=10, n_test=2)
    train_images = sorted((root / "train").glob("*/*.png"))
    for i, path in enumerate(train_images[:30]):
        shutil.copy(path, path.with_name(f"copy{i}.png"))
    for i, path in enumerate(train_images[30:35]):
        shutil.copy(path, root / "test" / path.parent.name / f"from-train{i}.png")
    dm, module, health, trainer = make(root, tmp_path, epochs=1)
    dm.prepare_data()
    dm.setup()
    calls = []
    hash_images = sources.image_digests
    monkeypatch.setattr(sources, "image_digests", lambda x: calls.append(len(x)) or hash_images(x))
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert calls == []
    assert {"val", "test"} <= {f["stage"] for f in health.findings if f["check"] == "overlap"}

    # The count the stored digests gave is the count the images give.
    def digest_set(x: torch.Tensor) -> set[bytes]:
        return {bytes(row) for row in hash_images(x).numpy()}

    shared = len(digest_set(dm.test_set.x) & digest_set(dm.train_set.x))
    message = next(f["message"] for f in health.findings if f["stage"] == "test")
    assert shared > 0 and message.startswith(f"{shared} of 25 test images are also training")


def test_no_overlap_work_at_fit_start_without_a_validation_split(folder_root, monkeypatch):
    dm = CIFAR10DataModule(root=str(folder_root), download=False, val_size=0, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, callbacks=[HealthCheck()],
                        enable_progress_bar=False, enable_checkpointing=False,
                        limit_val_batches=0)  # fmt: skip
    asked = []
    monkeypatch.setattr(CIFAR10DataModule, "image_digests", lambda self, split: asked.append(split))
    trainer.fit(Classifier(small_net(), optimizer=torch.optim.SGD), datamodule=dm)
    assert asked == []


class CollapsesInEval(Network):
    """small_net in training; evaluated during the epochs in `collapsed` (0-based), it puts
    every image in class 3, the signature of a collapse."""

    def __init__(self, collapsed: set[int]) -> None:
        super().__init__()
        self.net, self.collapsed, self.epoch = small_net(), collapsed, 0

    def on_train_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training or self.epoch not in self.collapsed:
            return out
        return torch.zeros_like(out).index_fill_(1, torch.tensor([3]), 5.0)


@pytest.mark.parametrize(("collapsed", "found"), [({0}, False), ({2}, True)])
def test_only_the_fits_last_validation_decides_a_collapse(folder_root, tmp_path, collapsed, found):
    # Progressive resolution can leave one mid-fit validation lopsided, and the model recovers:
    # no finding then. A collapse at the last validation of the fit is one.
    dm, _, health, trainer = make(folder_root, tmp_path)  # 3 epochs, validated after each
    module = Classifier(
        CollapsesInEval(collapsed), optimizer=lambda p: torch.optim.Adam(p, lr=0.05)
    )
    trainer.fit(module, datamodule=dm)
    assert health.reference_acc > 0.5
    messages = [f["message"] for f in health.findings if f["check"] == "prediction_collapse"]
    assert len(messages) == found
    if found:
        assert messages[0].startswith("at the fit's last validation, the model predicts only 1")
