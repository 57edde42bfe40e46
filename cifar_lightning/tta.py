"""airbench94's test-time augmentation (github.com/KellerJordan/cifar10-airbench)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = (0, 1, 2)  # none; flips; flips and 1-pixel translations (tta_logits)


def tta_logits(net: nn.Module, x: Tensor, level: int = 2) -> Tensor:
    """Logits of `net` on `x` averaged over test-time augmentations, as airbench94 does.

    level 0: net(x).
    level 1: mean of x and its horizontal flip.
    level 2: half the weight on level 1, half on level 1 of x translated by one pixel in each
             diagonal direction (padding by reflection), averaged: 6 views, weights 1/4 for
             x and flip(x), 1/8 for each of the 4 translated views.
    Runs `net` as it is: put it in eval mode (and under no_grad) first.
    """
    return tta_views(net, x, level)[0]


def tta_views(net: nn.Module, x: Tensor, level: int = 2) -> tuple[Tensor, Tensor]:
    """(tta_logits(net, x, level), net(x)): the plain view's logits come free with every level,
    so a test with TTA also gives the figures without it, exactly as a pass of `net` at level 0
    would."""
    if level not in LEVELS:
        raise ValueError(f"tta level must be 0, 1 or 2, got {level}")
    plain = net(x)
    if level == 0:
        return plain, plain
    logits = 0.5 * (plain + net(x.flip(-1)))
    if level == 1:
        return logits, plain

    def mirror(v: Tensor) -> Tensor:
        return 0.5 * (net(v) + net(v.flip(-1)))

    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    # The window at the padded origin shows the image moved one pixel down-right; the one at
    # (2, 2) shows it moved up-left.
    down_right, up_left = padded[..., :h, :w], padded[..., 2:, 2:]
    return 0.5 * logits + 0.25 * (mirror(down_right) + mirror(up_left)), plain
