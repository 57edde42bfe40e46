"""Pixel-value transforms of a whole batch (device_loader and BatchAugment): normalisation and
ColorJitter's blends, in place where they can be (a fresh multi-MB output per step costs page
faults on a CPU)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cifar_lightning.data.warp import SIZE, constant

GRAY = (0.2989, 0.587, 0.114)  # torchvision's grayscale weights (kornia uses 0.299)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32: v2.ToDtype(scale=True) + v2.Normalize up to float rounding."""
    return normalize_float(x.float(), mean, std, scale=1.0 / 255)


def normalize_float(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], scale: float = 1.0
) -> torch.Tensor:
    """(x * scale - mean) / std in place, with x * scale in [0, 1]: two passes, not three."""
    k = constant(tuple(scale / s for s in std), x.device).view(1, -1, 1, 1)
    b = constant(tuple(m / s for m, s in zip(mean, std, strict=True)), x.device).view(1, -1, 1, 1)
    return x.mul_(k).sub_(b)


def color_jitter(x: torch.Tensor, params: dict, weight: torch.Tensor | None) -> torch.Tensor:
    """ColorJitter's brightness/contrast/saturation in a per-image random order, vectorised.

    All three are blends clamp(f * x + (1 - f) * target) with target 0 (brightness), the
    grey mean (contrast) or the grey image (saturation), so each of the three steps is one
    blend whose factor and target are picked per image by that image's order. `weight`
    (N, 1, 32, 32) restricts contrast's mean to some pixels. x is in 0..255 units (float):
    the blends are scale-free, only the clamp needs the top of the range."""
    n = len(x)
    to_gray = constant(GRAY, x.device)
    for step in range(3):
        op = params["order"][:, step]
        f = params["jitter"].gather(1, op.view(n, 1)).view(n, 1, 1, 1)
        gray = (to_gray @ x.view(n, 3, -1)).view(n, 1, SIZE, SIZE)
        if weight is None:
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        else:
            total = weight.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
            mean = (gray * weight).sum(dim=(1, 2, 3), keepdim=True) / total
        is_c, is_s = (op == 1).view(n, 1, 1, 1), (op == 2).view(n, 1, 1, 1)
        target = torch.where(is_s, gray, mean * is_c)
        # f * x + (1 - f) * target, in place (a fresh 6 MB output per step cost page faults)
        # and broadcast (lerp with expand_as'd, stride-0 operands ran 8x slower).
        x = x.lerp_(target, 1 - f).clamp_(0, 255)
    return x
