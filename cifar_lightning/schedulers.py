"""Learning-rate schedules.

Each factory takes the optimizer and the fit's total optimizer steps (the trainer's estimate) and
returns a Lightning scheduler config, so no config hard-codes a schedule length.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, OneCycleLR


def onecycle(
    optimizer: Optimizer, total_steps: int, max_lr: float, pct_start: float = 0.25
) -> dict:
    sched = OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)
    return {"scheduler": sched, "interval": "step"}


def cosine(
    optimizer: Optimizer, total_steps: int, eta_min: float = 0.0, warmup: float = 0.0
) -> dict:
    """Cosine decay from the optimizer's lr to eta_min over the fit. warmup: the fraction of the
    fit first spent rising linearly from 0 to the full lr (the cosine then spans the rest);
    with eta_min > 0 only without warm-up (torch's CosineAnnealingLR, as before)."""
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"scheduler.warmup is a fraction of the fit in [0, 1), got {warmup}")
    if warmup == 0.0:
        sched = CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)
    elif eta_min:
        raise ValueError("scheduler.eta_min must be 0 with scheduler.warmup > 0")
    else:
        sched = LambdaLR(optimizer, _WarmupCosine(total_steps, warmup))
    return {"scheduler": sched, "interval": "step"}


class _WarmupCosine:
    """lr factor: rising linearly over the first `warmup` of the steps (1/(w+1), ..., w/(w+1) for
    w warm-up steps), then a half cosine from 1 down to 0 at `total_steps`."""

    def __init__(self, total_steps: int, warmup: float) -> None:
        self.total = max(1, total_steps)
        self.warm = max(1, round(warmup * self.total))

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / (self.warm + 1)
        t = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))


class _LinearDecay:
    """lr factor: 1 at step 0, falling linearly to 0 at `total_steps`, then 0. A callable object,
    as _Triangle, so that LambdaLR keeps its state (the schedule's length) in checkpoints."""

    def __init__(self, total_steps: int) -> None:
        self.total = total_steps

    def __call__(self, step: int) -> float:
        # The float ops of _Triangle(start=1, peak=0, end=0), which computes
        # 1 + (0 - 1) * min(1, (t - 0) / (1 - 0)): the same values, bit for bit.
        return 1.0 - min(1.0, step / max(1, self.total))


def linear(optimizer: Optimizer, total_steps: int) -> dict:
    """Linear decay from the optimizer's lr to zero at the last step, no warm-up
    (airbench94_muon's schedule)."""
    sched = LambdaLR(optimizer, _LinearDecay(total_steps))
    return {"scheduler": sched, "interval": "step"}


class _Triangle:
    """lr factor: linear from `start` to 1 at `peak` (a fraction of the run), then to `end`."""

    def __init__(self, total_steps: int, start: float, peak: float, end: float) -> None:
        self.total, self.start, self.peak, self.end = total_steps, start, peak, end

    def __call__(self, step: int) -> float:
        t = step / max(1, self.total)
        if t < self.peak:
            return self.start + (1 - self.start) * t / self.peak
        return 1 + (self.end - 1) * min(1.0, (t - self.peak) / (1 - self.peak))


def triangle(
    optimizer: Optimizer, total_steps: int, start: float = 0.2, peak: float = 0.23,
    end: float = 0.07,
) -> dict:  # fmt: skip
    """airbench94's warm-up then linear decay."""
    sched = LambdaLR(optimizer, _Triangle(total_steps, start, peak, end))
    return {"scheduler": sched, "interval": "step"}


class GroupDecay(LRScheduler):
    """Linear decay to zero over its own number of steps for some parameter groups (a network's
    group with "decay_epochs", e.g. airbench94_muon's whitening bias), after which their lr
    stays 0. Runs after the run's schedule at every step, and leaves the other groups' lr as
    that schedule set it. decay_steps: {group index: steps}."""

    def __init__(self, optimizer: Optimizer, decay_steps: dict[int, int]) -> None:
        self.decay_steps = decay_steps
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        lrs = [group["lr"] for group in groups]
        for i, steps in self.decay_steps.items():
            lrs[i] = self.base_lrs[i] * max(0.0, 1 - self.last_epoch / steps)
        return lrs
