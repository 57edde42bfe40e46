"""airbench94's test-time augmentation (github.com/KellerJordan/cifar10-airbench)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def tta_logits(net: nn.Module, x: Tensor, level: int = 2) -> Tensor:
    """Logits of `net` on `x` averaged over test-time augmentations, as airbench94 does.

    level 0: net(x).
    level 1: mean of x and its horizontal flip.
    level 2: half the weight on level 1, half on level 1 of x translated by one pixel in each
             diagonal direction (padding by reflection), averaged: 6 views, weights 1/4 for
             x and flip(x), 1/8 for each of the 4 translated views.
    Runs `net` as it is: put it in eval mode (and under no_grad) first.
    """
    if level == 0:
        return net(x)

    def mirror(v: Tensor) -> Tensor:
        return 0.5 * (net(v) + net(v.flip(-1)))

    logits = mirror(x)
    if level == 1:
        return logits
    if level == 2:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        # The window at the padded origin shows the image moved one pixel down-right; the one at
        # (2, 2) shows it moved up-left.
        down_right, up_left = padded[..., :h, :w], padded[..., 2:, 2:]
        return 0.5 * logits + 0.25 * (mirror(down_right) + mirror(up_left))
    raise ValueError(f"tta level must be 0, 1 or 2, got {level}")
