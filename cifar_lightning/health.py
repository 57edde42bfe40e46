"""Training-health checks: make a broken run loud within its first epoch.

The seed experiment reported 9.75 % test accuracy while its training loss fell: a random
transform on the test set and a model that was not the trained one, found by nobody. Each check
here turns one such cause into a console warning that names it and what to try, and into an
entry of results.json's `health` list. The checks cost a few tensor ops per batch and read their
values on the host only at Lightning's logging points (every `trainer.log_every_n_steps` steps
and at the epoch's end), so they never make a GPU training step wait.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as L
import torch
from torch import Tensor

from cifar_lightning.data import sources
from cifar_lightning.errors import UserError

log = logging.getLogger("cifar_lightning")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def _hashes(dm: Any, name: str, dataset: Any) -> set[bytes]:
    """The split's image digests as a set: those the data cache stored (the datamodule's
    image_digests), or hashed here for a datamodule without them."""
    get = getattr(dm, "image_digests", None)
    digests = get(name) if callable(get) else sources.image_digests(dataset.x.cpu())
    flat = digests.numpy().tobytes()
    return {flat[i : i + 16] for i in range(0, len(flat), 16)}


def _check_setting(key: str, value: object, share: bool) -> None:
    """A share is a number in [0, 1]; a count an integer >= 0 (bools are neither)."""
    kind = (int, float) if share else int
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or value < 0 or (share and value > 1):  # type: ignore[operator]
        what = "a number in [0, 1]" if share else "an integer >= 0"
        raise ValueError(f"health.{key} must be {what}, got {value!r}")


class HealthCheck(L.Callback):
    def __init__(
        self,
        collapse_max_share: float = 0.5,
        collapse_min_classes: int | None = None,
        chance_margin: float = 0.05,
        trained_margin: float = 0.2,
        loss_window_steps: int = 200,
        loss_min_drop: float = 0.01,
        overlap_tolerance: float = 0.001,
    ) -> None:
        # Checked here, not at the first validation a whole epoch later (ValueError: Hydra names
        # the component).
        for key, value in (("collapse_max_share", collapse_max_share),
                           ("chance_margin", chance_margin), ("trained_margin", trained_margin),
                           ("loss_min_drop", loss_min_drop),
                           ("overlap_tolerance", overlap_tolerance)):  # fmt: skip
            _check_setting(key, value, share=True)
        _check_setting("loss_window_steps", loss_window_steps, share=False)
        if collapse_min_classes is not None:
            _check_setting("collapse_min_classes", collapse_min_classes, share=False)
        self.collapse_max_share = collapse_max_share
        self.collapse_min_classes = collapse_min_classes
        self.chance_margin = chance_margin
        self.trained_margin = trained_margin
        self.loss_window_steps = loss_window_steps
        self.loss_min_drop = loss_min_drop
        self.overlap_tolerance = overlap_tolerance
        self.findings: list[dict[str, str]] = []
        # Accuracy a trained model showed: train accuracy during fit, or what eval.py reads
        # from the checkpoint (best val/acc). None until known.
        self.reference_acc: float | None = None
        self._reset_epoch()
        self._train_correct: Tensor | int = 0
        self._train_total = 0
        self._loss_sum: Tensor | None = None  # the training losses summed since the fit began
        self._losses = 0  # how many batch losses _loss_sum holds
        self._last_step = -1  # the optimizer step last acted on (see on_train_batch_end)
        self._window_ends: list[tuple[Tensor, int]] = []  # _loss_sum, _losses after each window
        self._track_loss = False
        self._pending_collapse: str | None = None  # the fit's latest validation found one

    # -- findings -------------------------------------------------------------------------------
    def report(self, check: str, stage: str, message: str) -> None:
        if any(f["check"] == check and f["stage"] == stage for f in self.findings):
            return  # one warning per cause and stage, not one per epoch
        self.findings.append({"check": check, "stage": stage, "message": message})
        log.warning("HEALTH [%s, %s]: %s", check, stage, message)

    # -- before fit / test: the data --------------------------------------------------------------
    def _check_data(self, trainer: L.Trainer, stages: tuple[str, ...]) -> None:
        dm = trainer.datamodule
        if dm is None or not trainer.is_global_zero:
            return
        num_classes = trainer.lightning_module.hparams.get("num_classes", 10)
        sets = {name: getattr(dm, f"{name}_set", None) for name in ("train", "val", "test")}
        sets = {k: v for k, v in sets.items() if v is not None and len(v) > 0}
        for name in stages:
            if name != "train" and name in sets and dm.eval_is_random(name):
                self.report("random_eval_transform", name,
                            f"the {name} transform is random: every evaluation differs and "
                            f"accuracy drops (the seed's test set got the training "
                            f"augmentation). Evaluate with normalisation only.")  # fmt: skip
        for name, ds in sets.items():
            y = ds.y
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                self.report(
                    "label_range",
                    name,
                    f"{name} labels span {int(y.min())}..{int(y.max())}, outside "
                    f"0..{num_classes - 1}: check the class folders/label mapping.",
                )
            elif name == "train":
                empty = (torch.bincount(y, minlength=num_classes) == 0).nonzero().flatten()
                if len(empty):
                    self.report(
                        "empty_class",
                        name,
                        f"classes {empty.tolist()} have no training samples: the model "
                        f"can never predict them. Check the data under data.root.",
                    )
        compared = [name for name in ("val", "test") if name in sets and name in stages]
        if "train" in sets and compared:  # no validation split at fit start: nothing to compare
            train = _hashes(dm, "train", sets["train"])
            for name in compared:
                shared = len(_hashes(dm, name, sets[name]) & train)
                if shared > self.overlap_tolerance * len(sets[name]):
                    self.report("overlap", name,
                                f"{shared} of {len(sets[name])} {name} images are also "
                                f"training images: {name} accuracy is inflated. Split "
                                f"the data so they are disjoint.")  # fmt: skip

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_data(trainer, ("train", "val"))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._track_loss = trainer.global_step == 0  # a resumed run has no first window

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_data(trainer, ("test",))

    # -- during training: the loss ----------------------------------------------------------------
    # Per step only in-place adds on the device; the values are read at Lightning's logging
    # points (every trainer.log_every_n_steps steps, the epoch's end, a checkpoint), where the
    # loop reads the logged metrics anyway, so a GPU step never waits for them.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with torch.no_grad():
            if self._loss_sum is None:
                self._loss_sum = torch.zeros((), device=loss.device)
            # One running sum finds a NaN/inf loss (it stays non-finite) and gives the windows.
            self._loss_sum.add_(loss)
            self._losses += 1
            self._count_train(outputs, batch)
        # The rest once per optimizer step: with gradient accumulation several batches share
        # one global_step, and only the batch that steps ends it.
        last = batch_idx + 1 >= trainer.num_training_batches
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or last
        step = trainer.global_step
        if not stepped or step == self._last_step:
            return
        self._last_step = step
        window = self.loss_window_steps
        if self._track_loss and window and step in (window, 2 * window):
            # The sum after steps 1..step, and how many batch losses it holds.
            self._window_ends.append((self._loss_sum.clone(), self._losses))
        if last or step % max(1, trainer.log_every_n_steps) == 0:
            self._raise_if_diverged(trainer)
            self._check_loss_windows()

    def _check_loss_windows(self) -> None:
        """Once the second window has ended: did the mean loss fall from the first to it?"""
        if len(self._window_ends) < 2:
            return
        window = self.loss_window_steps
        (first, n1), (both, n2) = ((float(s), n) for s, n in self._window_ends)
        self._window_ends = []
        self._track_loss = False
        first, second = first / n1, (both - first) / (n2 - n1)
        if math.isfinite(first) and second > first * (1 - self.loss_min_drop):
            self.report("loss_not_falling", "train",
                        f"the training loss did not fall over the first {2 * window} "
                        f"steps ({first:.3f} -> {second:.3f}): the learning rate is "
                        f"likely too high or too low. Try tune_lr=true, or debug=overfit "
                        f"to check the model can learn at all.")  # fmt: skip

    def _raise_if_diverged(self, trainer: L.Trainer) -> None:
        bad = self._loss_sum is not None and not bool(torch.isfinite(self._loss_sum))
        # Every rank reaches this at the same step (logging points, epoch ends, saves): decided
        # together, so that all ranks stop, not one while the others wait in a collective.
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self.report(
                "nonfinite_loss",
                "train",
                f"the training loss became NaN/inf by step {trainer.global_step}.",
            )
            raise TrainingDiverged(
                f"training loss is not finite (NaN/inf) by step {trainer.global_step}; the run "
                f"stopped and checkpoints/last.ckpt keeps the last good weights. Lower "
                f"optimizer.lr, add trainer.gradient_clip_val=1.0, or check the inputs."
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # noqa: ANN001
        # Never let a checkpoint save diverged weights over the last good ones.
        self._raise_if_diverged(trainer)

    # -- validation / test: the predictions ------------------------------------------------------
    def _reset_epoch(self) -> None:
        self._pred_counts: Tensor | None = None
        self._correct = self._total = None

    def _count(self, outputs: Any, batch: Any) -> tuple[Tensor, Tensor] | None:
        if not isinstance(outputs, dict) or "preds" not in outputs:
            return None
        return outputs["preds"], batch[1]

    def _count_train(self, outputs: Any, batch: Any) -> None:
        got = self._count(outputs, batch)
        if got is not None:
            preds, y = got
            # A module that counted its correct predictions already (the Classifier) saves two
            # ops a step.
            correct = outputs.get("correct")
            self._train_correct = self._train_correct + (
                (preds == y).sum() if correct is None else correct)  # fmt: skip
            self._train_total += len(y)

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._train_correct, self._train_total = 0, 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._raise_if_diverged(trainer)
        self._check_loss_windows()
        if self._train_total:
            self.reference_acc = float(self._train_correct) / self._train_total

    def _on_eval_batch_end(self, outputs: Any, batch: Any, num_classes: int) -> None:
        got = self._count(outputs, batch)
        if got is None:
            return
        preds, y = got
        counts = torch.bincount(preds, minlength=num_classes)
        self._pred_counts = counts if self._pred_counts is None else self._pred_counts + counts
        correct = (preds == y).sum()
        self._correct = correct if self._correct is None else self._correct + correct
        self._total = len(y) if self._total is None else self._total + len(y)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._reset_epoch()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:  # noqa: ANN001
        self._on_eval_batch_end(outputs, batch, pl_module.hparams.get("num_classes", 10))

    on_test_batch_end = on_validation_batch_end

    def _check_predictions(self, trainer: L.Trainer, stage: str) -> None:
        if self._pred_counts is None or trainer.sanity_checking:
            return
        strategy = trainer.strategy
        counts = strategy.reduce(self._pred_counts.float(), reduce_op="sum")
        correct = float(
            strategy.reduce(
                torch.as_tensor(self._correct, dtype=torch.float, device=counts.device),
                reduce_op="sum",
            )
        )
        total = float(strategy.reduce(torch.as_tensor(float(self._total), device=counts.device),
                                      reduce_op="sum"))  # fmt: skip
        if not trainer.is_global_zero or total == 0:
            return
        num_classes = len(counts)
        acc, chance, ref = correct / total, 1 / num_classes, self.reference_acc
        learned = ref is not None and ref > chance + self.trained_margin
        min_classes = self.collapse_min_classes or num_classes // 2
        predicted = int((counts > 0).sum())
        top_share = float(counts.max()) / total
        collapsed = predicted <= min_classes or top_share > self.collapse_max_share
        what = (f"the model predicts only {predicted} of {num_classes} classes"
                if predicted <= min_classes else
                f"one class takes {100 * top_share:.0f} % of the model's predictions")  # fmt: skip
        message = (f"{what}: the outputs barely depend on the input. Check that the inputs "
                   f"reach the model intact and that the evaluated weights are the trained "
                   f"ones.")  # fmt: skip
        if stage == "val" and trainer.state.fn == "fit":
            # Mid-fit predictions are often lopsided for an epoch (an untrained model's, or one
            # whose inputs just grew: progressive resolution) and then recover: only the fit's
            # last validation decides, at its end (on_fit_end), once training accuracy shows
            # that the model learned something.
            self._pending_collapse = message if collapsed and learned else None
        elif collapsed:
            self.report("prediction_collapse", stage, message)
        acc, chance = correct / total, 1 / num_classes
        ref = self.reference_acc
        if (
            acc < chance + self.chance_margin
            and ref is not None
            and ref > chance + self.trained_margin
        ):
            self.report("chance_accuracy", stage,
                        f"{stage} accuracy {100 * acc:.1f} % is at chance although the model "
                        f"reached {100 * ref:.1f} % in training: the evaluated model may not be "
                        f"the trained one (a fresh instance, weights never loaded, a copy made "
                        f"before training), or the {stage} inputs are transformed differently. "
                        f"This is the seed experiment's 9.75 % signature.")  # fmt: skip

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending_collapse is not None:
            self.report("prediction_collapse", "val",
                        f"at the fit's last validation, {self._pending_collapse}")  # fmt: skip
            self._pending_collapse = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self._train_total:  # during fit: the running training accuracy of this epoch
            self.reference_acc = float(self._train_correct) / self._train_total
        self._check_predictions(trainer, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._check_predictions(trainer, "test")

    def state_dict(self) -> dict[str, Any]:
        return {"findings": list(self.findings)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.findings = list(state_dict.get("findings", []))
