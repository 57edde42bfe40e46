"""A callback that stamps a train.py run's stages on a clock that stops for diagnostics.

time_to_accuracy.py hands it to pipeline.train (extra_callbacks), which builds it right after
the config's callbacks and runs it with them; the run's config (and so its checkpoints) does
not name it. Its stamps are on-clock times: time.perf_counter() less the seconds spent in its
own diagnostic test evaluations, which therefore stay off the clock.

Diagnostics: the test accuracy (with the run's TTA, as Classifier.test_step) of the model as
each epoch left it, evaluated at the start of the next epoch, before any of its steps (the
weights are those of the epoch's end: nothing steps in between), so the last epoch needs none:
the run's own test follows. They leave the training as it was: every module's train/eval flag
is restored, batch-norm statistics are not updated (eval mode), the metrics are not touched
(predict_step only counts) and no random number is drawn.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning as L
import torch

from benchmarks.common import now


class EpochClock(L.Callback):
    made: ClassVar[list[EpochClock]] = []  # the instances, for the benchmark that reads them

    def __init__(self, epoch_eval: bool = True) -> None:
        self.epoch_eval = epoch_eval
        self.paused = 0.0  # seconds of diagnostics so far, taken off every later stamp
        self.stamps = {"built": self.now()}
        self.rows: list[dict[str, Any]] = []
        self._loader: Any = None
        EpochClock.made.append(self)

    def now(self) -> float:
        return now() - self.paused

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # right after the datamodule's setup: the data are loaded
            self.stamps["data_loaded"] = self.now()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["train_start"] = self.now()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.rows and self.epoch_eval:
            self._diagnose(trainer, pl_module, self.rows[-1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "steps": trainer.global_step,
               "end": self.now(), "test_acc": None, "test_loss": None, "eval_s": 0.0}  # fmt: skip
        for key in ("train/loss", "train/acc"):
            row[key.replace("/", "_")] = float(metrics[key]) if key in metrics else None
        self.rows.append(row)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["train_end"] = self.now()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["test_start"] = self.now()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps["test_end"] = self.now()

    @torch.no_grad()
    def _diagnose(self, trainer: L.Trainer, module: Any, row: dict[str, Any]) -> None:
        if self._loader is None:
            # On the clock: with data.loader=device this copies the test split to the device,
            # and the run's own test reuses that copy.
            self._loader = trainer.datamodule.eval_loader("test")
        start = now()
        flags = {m: m.training for m in module.modules()}
        level, module.predict_tta_level = module.predict_tta_level, module.tta_level
        counts = torch.zeros(3, dtype=torch.float64, device=module.device)
        module.eval()
        try:
            with trainer.precision_plugin.predict_step_context():
                for i, (x, y) in enumerate(self._loader):
                    counts += module.predict_step((x.to(module.device), y.to(module.device)), i)
        finally:
            module.predict_tta_level = level
            for m, training in flags.items():
                m.train(training)
        correct, loss_sum, count = counts.tolist()
        row.update(test_acc=correct / count, test_loss=loss_sum / count)
        row["eval_s"] = now() - start
        self.paused += row["eval_s"]
