"""The run's float32 matmul precision (the config's top-level `matmul_precision`).

torch computes float32 matrix products in full fp32 by default ("highest"). On an Ampere or
later GPU, "high" lets them use the TF32 tensor cores (products with a 10-bit mantissa, fp32
sums), which Lightning advises on every such run ("You are using a CUDA device ... that has
Tensor Cores"). Convolutions are not concerned: cuDNN uses TF32 for them by default. Under
bf16-mixed or 16-mixed autocast the layers' matmuls run in half precision whatever this says.
On a CPU, "medium" lets oneDNN compute float32 products in bf16 (they differ), so `auto` leaves
CPU runs as they were.
"""

from __future__ import annotations

import pytorch_lightning as L
import torch

from cifar_lightning.errors import UserError

CHOICES = ("highest", "high", "medium")


def apply(choice: str | None, trainer: L.Trainer) -> str | None:
    """Set torch's float32 matmul precision for a run of `trainer`: `auto` is "high" when the
    trainer runs on a CUDA device and leaves torch's setting elsewhere; "highest", "high" and
    "medium" are set as they are; None (a checkpoint's run config from before this option)
    leaves torch's setting. Returns what was set, or None."""
    if choice is None:
        return None
    if choice != "auto" and choice not in CHOICES:
        raise UserError(
            f"matmul_precision={choice!r} is not an option: use auto (high on a CUDA GPU, "
            f"torch's default elsewhere), highest (full fp32), high (TF32 on a GPU) or medium "
            f"(bf16 products)."
        )
    if choice == "auto":
        if trainer.strategy.root_device.type != "cuda":
            return None
        choice = "high"
    torch.set_float32_matmul_precision(choice)
    return choice
