"""Callbacks: a one-line summary per epoch, and the `last.ckpt` a killed run resumes from."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from cifar_lightning.fileio import atomic_write

log = logging.getLogger("cifar_lightning")


def _fmt(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "   -  " if value is None else f"{float(value):.4f}"


class EpochSummary(L.Callback):
    """`epoch 3/10 | train loss 1.2345 acc 0.5678 | val loss ... acc ... | 41.2 s`."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()  # not called for an epoch resumed midway

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        log.info(
            "epoch %d/%d | train loss %s acc %s | val loss %s acc %s | %.1f s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            _fmt(m, "train/loss"),
            _fmt(m, "train/acc"),
            _fmt(m, "val/loss"),
            _fmt(m, "val/acc"),
            time.perf_counter() - self._start,
        )


class LastCheckpoint(L.Callback):
    """Keeps `last.ckpt` current: every `every_n_train_steps` steps inside an epoch and at every
    epoch end (after validation). Lightning's ModelCheckpoint cannot do both at once, and two
    of them with save_last would write last.ckpt and last-v1.ckpt."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 500) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == self._saved_step:
            return
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best score survives a resume into a new run folder.

    Lightning restores the best score only when the checkpoint folder is unchanged; a resumed
    run writes into its own folder, so any next epoch would count as the best. This copies the
    best checkpoint along and keeps its score competing.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir, path = state_dict.get("dirpath"), state_dict.get("best_model_path")
        score = state_dict.get("best_model_score")
        if old_dir == self.dirpath or score is None or not path or not Path(path).is_file():
            super().load_state_dict(state_dict)
            return
        new = Path(self.dirpath) / Path(path).name
        data = Path(path).read_bytes()
        atomic_write(new, lambda f: f.write(data))
        score = torch.as_tensor(score)
        self.best_model_score = self.kth_value = score
        self.best_model_path = self.kth_best_model_path = str(new)
        self.best_k_models = {str(new): score}
