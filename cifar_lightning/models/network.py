"""The contract between a network and the LightningModule (cifar_lightning/module.py)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def default_param_groups(net: nn.Module) -> list[dict[str, Any]]:
    """One group of every trainable parameter, at the optimizer's own learning rate."""
    return [{"params": [p for p in net.parameters() if p.requires_grad], "lr_scale": 1.0}]


class Network(nn.Module):
    """A network the Classifier trains. Subclasses override only the hooks they need; the
    defaults here make a plain network (a plain nn.Module is treated the same way).

    param_groups() -> list[dict]
        The parameter groups the optimizer is built from, in this order: each a dict
        {"params": [...], "lr_scale": float}. The Classifier builds the optimizer from the
        groups (without lr_scale), then, for each group with lr_scale != 1, multiplies the
        group's lr by lr_scale and divides its weight_decay by it, so that the decay per step
        (lr * weight_decay) is unchanged. Default: one group of all trainable parameters.

    data_init_size: int
        How many training images init_from_data wants; 0 (the default): none, it is not called.
        Read once, when fitting starts: a network restored from a checkpoint that already holds
        its data-dependent weights says 0.

    init_from_data(images)
        A data-dependent initialisation, called once before the first training step with
        `data_init_size` normalised, un-augmented training images (on the network's device;
        the datamodule's `whitening_images(n)`). Default: nothing.

    on_train_epoch_start(epoch)
        Called at the start of every training epoch (0-based), before any of its steps, for
        networks that change with the epoch. Default: nothing.
    """

    data_init_size: int = 0
    any_input_size: bool = True  # takes inputs of any side (module.train_resolution); False: 32

    def param_groups(self) -> list[dict[str, Any]]:
        return default_param_groups(self)

    def init_from_data(self, images: Tensor) -> None:
        """See the class docstring: a data-dependent initialisation (default: none)."""

    def on_train_epoch_start(self, epoch: int) -> None:
        """See the class docstring: the epoch that starts (default: nothing changes)."""
