"""Learning-rate schedules.

Each factory takes the optimizer and the fit's total optimizer steps (the trainer's estimate) and
returns a Lightning scheduler config, so no config hard-codes a schedule length.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR


def onecycle(
    optimizer: Optimizer, total_steps: int, max_lr: float, pct_start: float = 0.25
) -> dict:
    sched = OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)
    return {"scheduler": sched, "interval": "step"}


def cosine(optimizer: Optimizer, total_steps: int, eta_min: float = 0.0) -> dict:
    sched = CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)
    return {"scheduler": sched, "interval": "step"}
