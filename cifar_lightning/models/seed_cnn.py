"""The seed experiment's CNN (docs/seed.md), with the padding its head needs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cifar_lightning.models.network import Network


def conv_block(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    # The seed's block 1: Conv -> BN -> ReLU -> Conv -> ReLU -> MaxPool. padding=1 keeps the size,
    # so only the pool halves it (32 -> 16 -> 8 -> 4 over three blocks).
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 3, padding=1),
        nn.BatchNorm2d(c_mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
    )


class SeedCNN(Network):
    """A plain Network: the default hooks."""

    any_input_size = False  # its head flattens a 32x32 input's features into a fixed size

    def __init__(
        self,
        widths: Sequence[Sequence[int]] = ((32, 64), (64, 96), (96, 120)),
        dropout: float = 0.1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        blocks, c_in = [], 3
        for c_mid, c_out in widths:
            blocks.append(conv_block(c_in, c_mid, c_out))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        side = 32 // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(c_in * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
