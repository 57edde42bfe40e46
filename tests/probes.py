"""Callbacks that tests add to a run from the command line (`+callbacks.NAME._target_=...`):
they observe or slow a run without changing what it learns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L


class Pace(L.Callback):
    """Sleeps after every training batch, so that a test can act on a run while it trains
    (requeue it, cancel it, let it hit a time limit). until_restart: only until SLURM restarts
    the job (SLURM_RESTART_COUNT > 0), so that a requeued job finishes quickly."""

    def __init__(self, seconds: float, until_restart: bool = False) -> None:
        self.seconds, self.until_restart = seconds, until_restart

    def on_train_batch_end(self, *args: Any) -> None:
        if not (self.until_restart and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0):
            time.sleep(self.seconds)


class RecordOrder(L.Callback):
    """Writes the training-split positions this rank visits in each epoch to
    <run folder>/order/rank<R>_epoch<E>.json (from the loader's EpochOrder)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        order = getattr(loader, "order", None) or loader.sampler.order
        indices = order.indices(trainer.current_epoch).tolist()
        folder = Path(trainer.default_root_dir) / "order"
        folder.mkdir(exist_ok=True)
        name = f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        (folder / name).write_text(json.dumps(indices))
