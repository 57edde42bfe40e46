"""Callbacks: a one-line summary per epoch, the progress bar, and the `last.ckpt` a killed run
resumes from."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint, RichProgressBar

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
        if trainer.sanity_checking:
            return
        # Read on every rank: the first read computes the epoch's metrics, which under DDP is a
        # collective (torchmetrics syncs them); on rank 0 alone it would wait for ranks that
        # have gone on to the next collective (the health checks').
        m = trainer.callback_metrics
        if not trainer.is_global_zero:
            return
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


class ProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, counting epochs as the epoch lines do: "Epoch 9/9" in the
    ninth of nine epochs (Lightning's own reads "Epoch 8/8" there: it counts from 0), and
    redrawn after a training batch only when `interval_s` seconds have passed since it last was.

    Lightning's redraws the bar and gathers the logged metrics after every training batch: host
    time taken from a loop of ~1,000 steps a second (fast94 on a GPU) for a display no one reads
    at that speed (benchmarks/loop_overhead.py, +ProgressBar). Its display thread keeps
    Lightning's rate (refresh_rate, per second): the end of a fit waits for its next wake-up."""

    def __init__(self, interval_s: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval_s = interval_s
        self._drawn_at = -math.inf  # time.monotonic() of the last redraw after a batch
        self._undrawn = 0  # batches done in this epoch beyond what the bar shows

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.monotonic()
        if batch_idx + 1 < self.total_train_batches and now - self._drawn_at < self.interval_s:
            self._undrawn = batch_idx + 1
            return
        self._drawn_at, self._undrawn = now, 0
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._undrawn:  # an epoch cut short (trainer.max_steps): show where it stopped
            self._update(self.train_progress_bar_id, self._undrawn)
            self._undrawn = 0
        super().on_train_epoch_end(trainer, pl_module)

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's method, one-based (pytorch-lightning 2.6, which pyproject pins below 3).
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        width = len(self.validation_description)
        return f"{description:{width}}" if width > len(description) else description


class LastCheckpoint(Checkpoint):
    """Keeps `last.ckpt` current: every `every_n_train_steps` steps inside an epoch (one due at
    an epoch's last batch is written at the epoch's end) and at every `every_n_epochs`-th epoch
    end (after validation). Lightning's ModelCheckpoint cannot do both at once, and two of them
    with save_last would write last.ckpt and last-v1.ckpt.

    A Checkpoint (not a plain Callback): Lightning runs checkpoint callbacks last at an epoch
    end, in their configured order, so the epoch-end last.ckpt holds the best score
    model_checkpoint (listed before it) has just updated. As a plain callback it ran first, and
    a resume from an epoch end lost the best epoch just finished. Being a Checkpoint also stops
    Lightning adding its default ModelCheckpoint (epoch=N-step=M.ckpt) to runs without
    model_checkpoint."""

    def __init__(
        self, dirpath: str, every_n_train_steps: int = 500, every_n_epochs: int = 1
    ) -> None:
        """every_n_epochs=0: none at epoch ends either (a recipe of seconds, whose timed epochs
        should not wait for the disk); with any every_n_epochs but 1, one save at the fit's
        end (on_train_end)."""
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs
        self._saved_step = -1
        self.saved_at_end = False  # whether on_train_end wrote last.ckpt

    def _save(self, trainer: L.Trainer, again: bool = False) -> bool:
        """Write last.ckpt, unless this step's is written already (again: even then, for weights
        changed since at the same step). Whether it wrote."""
        if (
            trainer.sanity_checking
            or trainer.fast_dev_run
            or (trainer.global_step == self._saved_step and not again)
        ):
            return False
        trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls; rank 0 writes
        self._saved_step = trainer.global_step
        return True

    def _step_due(self, trainer: L.Trainer) -> bool:
        n = self.every_n_train_steps
        return bool(n) and trainer.global_step % n == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        # Due at the epoch's last batch: written at its end instead (on_train_epoch_end sees the
        # same global step). Lightning resumes a checkpoint of the last batch, taken before the
        # epoch's end, in the next epoch without ending this one or starting that one: no
        # validation or epoch-end hooks for this epoch, and the next one's train sums start
        # from this one's.
        if self._step_due(trainer) and batch_idx + 1 != trainer.num_training_batches:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = self.every_n_epochs
        if self._step_due(trainer) or (n and (trainer.current_epoch + 1) % n == 0):
            self._save(trainer)  # not again if a step save (max_steps mid-epoch) wrote this step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Without a save at every epoch end, the last one may be missing or older than the
        # fit's end: one save now, after the other callbacks' on_train_end (Lightning runs
        # checkpoint callbacks last), so the file holds the final weights (Lookahead's last
        # average included) and train.py need not write it again.
        self.saved_at_end = self.every_n_epochs != 1 and self._save(trainer, again=True)


def _file_in(folder: Path, name: str) -> Path | None:
    """folder/name when that is a real .ckpt file inside folder: no other folder, no symlink
    leading out of it."""
    candidate = folder / Path(name).name
    if candidate.suffix != ".ckpt" or candidate.is_symlink() or not candidate.is_file():
        return None
    return candidate if candidate.resolve().parent == folder.resolve() else None


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best score survives a resume into a new run folder.

    Lightning restores the best score only when the checkpoint folder is unchanged; a resumed
    run writes into its own folder, so any next epoch would count as the best. This copies the
    best checkpoint along and keeps its score competing.

    A checkpoint's callback state is data from wherever the file came from: the best checkpoint
    it names is only looked up by file name in the folder of the checkpoint being resumed
    (`resumed_from`, set from trainer.ckpt_path). Anything else is neither copied nor kept: the
    old score is dropped too, since a score without its file would leave this run's best pointing
    at no checkpoint of its own (and the test would read the file the state names).
    """

    resumed_from: Path | None = None  # the checkpoint being resumed; set in on_load_checkpoint

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls this before load_state_dict, with trainer.ckpt_path already set.
        if trainer.ckpt_path is not None:
            self.resumed_from = Path(trainer.ckpt_path)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        path, score = state_dict.get("best_model_path"), state_dict.get("best_model_score")
        if score is None or not path:
            return  # nothing worth carrying over: this run starts its own best
        folder = self.resumed_from.parent if self.resumed_from is not None else None
        source = _file_in(folder, str(path)) if folder is not None else None
        if source is None:
            log.warning(
                "the resumed checkpoint names %s as its best checkpoint, but %s (the folder "
                "resumed from) holds no such .ckpt file: nothing copied, and this run's best "
                "checkpoint is chosen from its own epochs",
                path, folder,
            )  # fmt: skip
            return
        new = Path(self.dirpath) / source.name
        if new.resolve() != source.resolve():  # resumed into another folder: copy it along
            data = source.read_bytes()
            atomic_write(new, lambda f: f.write(data))
        score = torch.as_tensor(score)
        self.best_model_score = self.kth_value = score
        self.best_model_path = self.kth_best_model_path = str(new)
        self.best_k_models = {str(new): score}
