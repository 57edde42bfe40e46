"""ResNet-18 for 32x32 inputs."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from cifar_lightning.models.network import Network


class ResNet18(ResNet, Network):
    """torchvision's ResNet-18 (its modules, state-dict keys and initialisation) with the CIFAR
    stem. A plain Network: the default hooks."""

    def __init__(self, num_classes: int = 10) -> None:
        # What torchvision.models.resnet18(num_classes=...) builds, in the same order (so a seeded
        # build draws the same initial weights).
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        # ImageNet's 7x7 stride-2 stem and max-pool would shrink 32x32 to 8x8 before the first
        # block; the usual CIFAR variant keeps full resolution with a 3x3 stride-1 stem, no pool.
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()
