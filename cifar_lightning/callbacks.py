"""Console summary: one line per epoch."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as L

log = logging.getLogger("cifar_lightning")


def _fmt(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "   -  " if value is None else f"{float(value):.4f}"


class EpochSummary(L.Callback):
    """`epoch 3/10 | train loss 1.2345 acc 0.5678 | val loss ... acc ... | 41.2 s`."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

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
