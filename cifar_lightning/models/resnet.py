"""ResNet-18 for 32x32 inputs."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18 as tv_resnet18


def resnet18(num_classes: int = 10) -> nn.Module:
    # ImageNet's 7x7 stride-2 stem and max-pool would shrink 32x32 to 8x8 before the first block;
    # the usual CIFAR variant keeps full resolution with a 3x3 stride-1 stem and no pool.
    net = tv_resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
