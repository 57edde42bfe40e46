"""airbench94's weight averaging ("Lookahead") as a Lightning callback
(github.com/KellerJordan/cifar10-airbench).

Lookahead, as airbench's LookaheadState and its training loop use it:
  * from epoch `start_epoch` on, every `every_n_steps` optimizer steps: the first time, the
    average starts as a copy of the weights; after that
        ema <- lerp(ema, weights, 1 - rho);  weights <- ema
    i.e. the network is pulled back onto the average (the Lookahead optimizer's "slow weights"),
    not only averaged beside it;
  * rho grows over training: rho = decay ** every_n_steps * (step / total_steps) ** decay_pow,
    so the average barely holds the weights back early on (fast progress) and averages strongly
    at the end. decay is per optimizer step (airbench's decay_base, 0.95); decay_pow=0 gives a
    constant rho = decay ** every_n_steps;
  * at the end of every epoch (its last batch, so that validation and the epoch's checkpoint
    see it) and at the end of training: weights <- ema, dropping the steps since the last update.
What is averaged: every parameter and every floating-point buffer (batch-norm running
statistics included, as airbench averages the whole state dict); integer buffers
(num_batches_tracked, the whitened flag) are left alone.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


class Lookahead(pl.Callback):
    def __init__(
        self,
        decay: float = 0.95,
        every_n_steps: int = 5,
        start_epoch: int = 3,
        decay_pow: float = 3.0,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.start_epoch = start_epoch
        self.decay_pow = decay_pow
        self.ema: dict[str, Tensor] | None = None  # None until the first update step
        self.last_step = -1  # the global step of the last update, so no step counts twice

    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, every_n_steps=self.every_n_steps)

    def rho(self, step: int, total_steps: float) -> float:
        """The weight the average keeps at an update on optimizer step `step`."""
        # An unbounded run (max_epochs=-1) has no progress to measure: average at full strength.
        progress = min(step / total_steps, 1.0) if math.isfinite(total_steps) else 1.0
        return self.decay**self.every_n_steps * progress**self.decay_pow

    @staticmethod
    def _tensors(module: nn.Module) -> dict[str, Tensor]:
        tensors = dict(module.named_parameters())
        tensors.update((n, b) for n, b in module.named_buffers() if b.is_floating_point())
        return tensors

    @torch.no_grad()
    def update(self, module: nn.Module, rho: float) -> None:
        """ema <- lerp(ema, weights, 1 - rho); weights <- ema. rho=1 only copies the average
        back. The first call (no average yet) starts the average from the weights."""
        tensors = self._tensors(module)
        if self.ema is None:
            self.ema = {n: t.detach().clone() for n, t in tensors.items()}
            return
        for name, t in tensors.items():
            ema = self.ema[name]
            if ema.device != t.device or ema.dtype != t.dtype:  # e.g. loaded from a checkpoint
                self.ema[name] = ema.to(device=t.device, dtype=t.dtype)
        # Two multi-tensor ops for the whole network (CUDA: a few kernels, not two per tensor).
        # The same arithmetic as a lerp_ and a copy_ per tensor; rho=1 leaves the average as is.
        ema, weights = [self.ema[n] for n in tensors], list(tensors.values())
        if rho != 1.0:
            torch._foreach_lerp_(ema, weights, 1.0 - rho)
        torch._foreach_copy_(weights, ema)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # global_step counts optimizer steps and has already counted this batch's step; with
        # gradient accumulation several batches share one, hence last_step.
        step = trainer.global_step
        due = step > 0 and step % self.every_n_steps == 0 and step != self.last_step
        if due and trainer.current_epoch >= self.start_epoch:
            self.last_step = step
            self.update(pl_module, self.rho(step, trainer.estimated_stepping_batches))
        if self.ema is not None and batch_idx + 1 >= trainer.num_training_batches:
            self.update(pl_module, 1.0)  # end of the epoch: weights <- average

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Covers a run stopped mid-epoch (max_steps); after a full epoch it changes nothing.
        if self.ema is not None:
            self.update(pl_module, 1.0)

    def state_dict(self) -> dict[str, Any]:
        # Tensors, ints and dicts only: the checkpoint still loads with weights_only=True.
        return {"ema": dict(self.ema or {}), "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Tensors stay where the checkpoint put them; update() moves them to the weights' device.
        self.ema = dict(state_dict["ema"]) or None
        self.last_step = int(state_dict["last_step"])
