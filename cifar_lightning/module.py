"""The LightningModule: network, loss, metrics, optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifar_lightning import DISPLAY_NAMES
from cifar_lightning.config_checks import check_module_options
from cifar_lightning.errors import UserError
from cifar_lightning.metrics import (
    ConfusionCounts,
    RunningMean,
    add_evaluated,
    batch_counts,
    interleave_ranks,
    upgrade_train_acc,
)
from cifar_lightning.models.network import Network, default_param_groups
from cifar_lightning.optim import EpochAware
from cifar_lightning.schedulers import GroupDecay
from cifar_lightning.tta import tta_logits, tta_views


class Classifier(L.LightningModule):
    """Trains `net` through its Network hooks (cifar_lightning/models/network.py); a plain
    nn.Module gets the hooks' defaults."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., dict] | None = None,
        num_classes: int = 10,
        class_names: Sequence[str] = DISPLAY_NAMES,
        label_smoothing: float = 0.0,
        tta_level: int = 0,
        channels_last: bool = False,
        compile: bool | str = False,
        train_resolution: Sequence[int] | None = None,
    ) -> None:
        """train_resolution: the side length of the training inputs in each epoch (progressive
        resizing; the last entry holds for the remaining epochs). Batches are resized on the
        device, after augmentation; validation and test always see the full images. None: the
        images' own size throughout. compile: torch.compile the network for training, in torch's
        default mode (true) or in the mode named (e.g. "max-autotune", the reference recipes'
        choice: longer compilation, autotuned kernels and CUDA graphs); false: eager.
        Evaluation (validation, test, predict) always runs eager (forward)."""
        super().__init__()
        # The network, optimizer and schedule live in the run config stored in each checkpoint;
        # hparams keep the plain values only, so checkpoints load with weights_only=True. Hydra
        # passes lists as ListConfig objects, which would be pickled: save them as plain lists
        # (save_hyperparameters reads these local variables).
        class_names = list(class_names)
        train_resolution = [int(s) for s in train_resolution] if train_resolution else None
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self.class_names = class_names
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # One metric object per stage: their states never mix. Sums on the device, read only
        # when Lightning logs the epoch's values (metrics.py says why not torchmetrics' own):
        # correct predictions / images, and the mean loss over the images (under DDP, the sums
        # of every rank's: what one process gets). Training's are persistent: a mid-epoch
        # resume keeps the epoch's running sums.
        self.train_acc = RunningMean()
        self.train_acc.persistent(True)
        self.train_loss = RunningMean()
        self.train_loss.persistent(True)
        self.val_acc, self.val_loss = RunningMean(), RunningMean()
        self.test_acc, self.test_loss = RunningMean(), RunningMean()
        self.test_confmat = ConfusionCounts(num_classes)  # and each class's accuracy
        self.tta_level = tta_level  # test-time augmentation in test_step (0: off; see tta.py)
        self.channels_last = channels_last
        self.train_resolution = train_resolution
        check_module_options(net, label_smoothing, tta_level, train_resolution)
        # torch.compile'd forward, set past nn.Module's registration so that it stays out of
        # the module tree: checkpoints hold `net.*` only, whether compiled or not. Static shapes:
        # a run sees a handful of batch shapes (train_resolution's sizes, a last partial eval
        # batch), each compiled once, where a dynamic-shape graph can be slower for all.
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if not isinstance(compile, bool) and compile not in modes:
            raise ValueError(
                f"module.compile: {compile!r} is not true, false or a torch.compile mode; "
                f"use one of {', '.join(modes)}"
            )
        mode = compile if isinstance(compile, str) else None  # None: torch's default mode
        compiled = torch.compile(net, dynamic=False, mode=mode) if compile else None
        object.__setattr__(self, "_compiled", compiled)
        self.lr: float | None = None  # the LR finder's suggestion, when tune_lr=true
        self.predict_tta_level = 0  # what predict_step evaluates with (see evaluation.score)
        self.predict_probabilities = False  # predict_step's output: counts, or probabilities
        self.run_config: dict | None = None  # set by the training script, saved in checkpoints
        self.test_report: dict[str, Any] = {}
        self._groups: list[dict[str, Any]] = []  # the network's parameter groups, as built
        self._register_train_metrics = True  # the next training step logs the epoch's metrics

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the hook it is in (_current_fx_name) before and after each hook call,
        # 46 times a training step; nn.Module.__setattr__ first checks the value against its
        # parameters, buffers and submodules (0.93 us a call on a 2-core EPYC, 0.15 us stored
        # directly). A hook's name is a string or None, never one of those.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: Tensor) -> Tensor:
        # module.compile speeds up training only. Evaluation runs the network eager, as eval.py
        # and predict.py do, so they repeat a test to the last digit without compiling (the
        # reference's max-autotune takes minutes), and a test compiles no graph of its own.
        # `is None`, not `or`: a compiled module has no truth value (bool() asks for its len()).
        eager = self._compiled is None or not self.training
        return (self.net if eager else self._compiled)(x)

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def on_fit_start(self) -> None:
        # A data-dependent init (fastnet's whitening layer, from the training images' patch
        # statistics), once: a network restored from a checkpoint asks for no images.
        n = self.net.data_init_size if isinstance(self.net, Network) else 0
        if n:
            self.net.init_from_data(self.trainer.datamodule.whitening_images(n, self.device))

    def on_train_epoch_start(self) -> None:
        self._register_train_metrics = True  # see training_step
        # A new epoch's sums start from zero. Lightning resets them after an epoch's end, but a
        # last.ckpt written at that end (callbacks.LastCheckpoint) holds them before the reset:
        # a run resumed from it would count the finished epoch's images again. (An epoch
        # resumed midway gets no on_train_epoch_start and keeps its checkpointed sums.)
        self.train_loss.reset()
        self.train_acc.reset()
        # Networks and optimizers that change with the epoch (fastnet's whitening bias,
        # adam_to_sgd) get told which one starts.
        if isinstance(self.net, Network):
            self.net.on_train_epoch_start(self.current_epoch)
        for opt in self._raw_optimizers():
            if isinstance(opt, EpochAware):
                opt.on_train_epoch_start(self.current_epoch)

    def _raw_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = self.optimizers(use_pl_optimizer=False)
        return opts if isinstance(opts, list) else [opts]

    def resize_for_training(self, x: Tensor, epoch: int) -> Tensor:
        """x at epoch's (0-based) training input size under train_resolution; x as it is without
        one or when it already has that size."""
        if not self.train_resolution:
            return x
        size = self.train_resolution[min(epoch, len(self.train_resolution) - 1)]
        if size == x.shape[-1]:
            return x
        # Smaller inputs early cost fewer FLOPs per image (fastnet ends in a global max-pool, so
        # any size works); antialiasing keeps the downscaled images free of aliasing.
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = self._inputs(batch)
        x = self.resize_for_training(x, self.current_epoch)
        logits = self(x)
        loss = self.criterion(logits, y)
        preds = logits.detach().argmax(1)
        correct = (preds == y).sum()
        # Epoch-level only: sums stay on the device, nothing is read back per step.
        self.train_acc.update(correct, len(y))
        self.train_loss.update(loss.detach() * len(y), len(y))
        if self._register_train_metrics:
            # Once per epoch is enough: Lightning computes a logged Metric at the epoch's end
            # from its own sums (then resets it), whichever steps updated them; and each
            # self.log of a Metric walks its whole state (about 0.5 ms of host time per call on
            # a 2-core EPYC), which every step would otherwise pay.
            self._register_train_metrics = False
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        # Predictions and their count of correct ones feed the health checks.
        return {"loss": loss, "preds": preds, "correct": correct}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = self._inputs(batch)
        logits = self(x)
        preds = logits.argmax(1)
        add_evaluated(self.val_acc, self.val_loss, self.criterion(logits, y), preds == y)
        if batch_idx == 0:  # once per pass, as in training_step
            self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        return {"preds": preds}

    def eval_logits(self, x: Tensor, tta_level: int) -> Tensor:
        """Logits for evaluation inputs, with test-time augmentation at `tta_level` (tta.py).
        Call in eval mode under no_grad, as Lightning's evaluation loops do."""
        return tta_logits(self.net, x, tta_level)  # level 0: the eager net(x), as forward's

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = self._inputs(batch)
        logits, plain = tta_views(self.net, x, self.tta_level)  # eager, as forward in eval
        preds = logits.argmax(1)
        hits = preds == y
        add_evaluated(self.test_acc, self.test_loss, self.criterion(logits, y), hits)
        self.test_confmat.update(preds, y)
        if batch_idx == 0:  # a new test pass: its metrics logged once, as in training_step
            self.log("test/loss", self.test_loss, on_epoch=True)
            self.log("test/acc", self.test_acc, on_epoch=True)
            self._test_correct: list[Tensor] = []
            self._plain_counts = torch.zeros(3, dtype=torch.float64, device=y.device)
        self._test_correct.append(hits)  # on the device until the epoch's end
        if self.tta_level:
            # The figures without TTA (results.json's test_acc_plain) from the plain view the
            # TTA has just computed: summed as evaluation.score sums a pass at level 0, whose
            # work (and its Lightning stage) they spare. Without TTA they are the test's own.
            self._plain_counts += batch_counts(plain, y, self.criterion)
        return {"preds": preds}

    def predict_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int
    ) -> dict[str, Tensor] | Tensor:
        """batch_counts for evaluation.score, at predict_tta_level; they stay on the device
        until the end. With predict_probabilities (predict.py): the images' class
        probabilities, in fp32."""
        x, y = self._inputs(batch)
        logits = self.eval_logits(x, self.predict_tta_level)
        if self.predict_probabilities:  # softmax in fp32, whatever the autocast dtype
            return logits.float().softmax(1)
        return batch_counts(logits, y, self.criterion)

    def on_test_epoch_end(self) -> None:
        accs = self.test_confmat.class_accuracy().tolist()
        confusion = self.test_confmat.compute().tolist()  # rows: the true class
        # A class none of whose images was tested (trainer.limit_test_batches) has no accuracy:
        # None. test_images: what test_acc counts.
        rows = zip(self.class_names, accs, confusion, strict=True)
        per_class = {name: acc if sum(row) else None for name, acc, row in rows}
        # Per-image correctness of the tested model (at its TTA: what test_acc counts), in the
        # test split's order, for the report's test-set error of a difference between runs.
        flags = getattr(self, "_test_correct", [])
        correct = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
        self._test_correct = []
        if self.trainer.world_size > 1:
            correct = interleave_ranks(self, correct)
        plain = {}
        if self.tta_level:  # the same level on every rank: all of them reduce, or none
            # Set at this pass's batch 0: a pass without batches never gets here (Lightning
            # skips its epoch end), so every rank that reaches this reduce has counted images.
            counts = self.trainer.strategy.reduce(self._plain_counts, reduce_op="sum")
            correct_plain, loss_plain, n = counts.tolist()
            plain = {"test_acc_plain": correct_plain / n, "test_loss_plain": loss_plain / n}
        self.test_report = {
            **plain,
            "per_class_acc": per_class,
            "test_images": sum(map(sum, confusion)),
            "confusion_matrix": confusion,
            "test_correct": None if correct is None else correct.cpu().numpy(),
        }
        self.test_confmat.reset()

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        schedulers = []
        total = self.trainer.estimated_stepping_batches  # sets up the training batches
        if self.make_scheduler is not None:
            if not math.isfinite(total):  # max_epochs=-1 without max_steps: no length to fit
                raise UserError(
                    "the learning-rate schedule needs the run's length: set "
                    "trainer.max_steps=N or trainer.max_epochs=N, or scheduler=none"
                )
            schedulers.append(self.make_scheduler(optimizer, int(total)))
        # Groups with a schedule of their own (Network.param_groups' decay_epochs), in steps.
        epochs = {i: g["decay_epochs"] for i, g in enumerate(self._groups) if g.get("decay_epochs")}
        if epochs:
            per_epoch = math.ceil(
                self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
            )
            steps = {i: max(1, e * per_epoch) for i, e in epochs.items()}
            schedulers.append({"scheduler": GroupDecay(optimizer, steps), "interval": "step"})
        return [optimizer], schedulers

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the network's parameter groups (Network.param_groups)."""
        net = self.net
        groups = net.param_groups() if isinstance(net, Network) else default_param_groups(net)
        self._groups = groups
        scales = [float(g.get("lr_scale", 1.0)) for g in groups]
        own = ("lr_scale", "decay_epochs")  # read here, not options of the optimizer
        optimizer = self.make_optimizer([{k: v for k, v in g.items() if k not in own}
                                         for g in groups])  # fmt: skip
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            if scale != 1.0:
                # The decay per step (lr * weight_decay) stays the optimizer's (airbench's
                # grouping: its BN biases learn 64x faster with 1/64 of the weight decay).
                group["lr"] *= scale
                if group.get("weight_decay"):
                    group["weight_decay"] /= scale
        if self.lr is not None:
            # The LR finder's suggestion (tune_lr=true) replaces every group's lr, the scaled
            # ones' too; their weight_decay stays scaled.
            for group in optimizer.param_groups:
                group["lr"] = self.lr
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.run_config
        # Random state too (dropout masks): a resumed run continues the same random stream.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_state = checkpoint.get("rng_state")
        state = checkpoint.get("state_dict", {})
        upgrade_train_acc(state)
        # The epoch's running train sums in a checkpoint are rank 0's (it alone writes). Under
        # DDP the other ranks start theirs from zero, or the images rank 0 saw before a
        # mid-epoch interruption would count once per rank in train/loss and train/acc; the
        # other ranks' images before it are lost, so that epoch's figures cover rank 0's
        # images before the interruption and every rank's after it.
        if self._trainer is not None and self.trainer.global_rank != 0:
            for name in ("train_loss", "train_acc"):
                for key in (f"{name}.mean_value", f"{name}.weight"):
                    if key in state:
                        state[key] = torch.zeros_like(state[key])

    def on_train_start(self) -> None:
        # An epoch resumed midway has no on_train_epoch_start: its metrics register here.
        self._register_train_metrics = True
        # Restored here, after the sanity check, right before the first resumed batch.
        state = getattr(self, "_rng_state", None)
        if state is not None:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
            self._rng_state = None
