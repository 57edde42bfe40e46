from cifar_lightning.data.datamodule import CIFAR10DataModule

__all__ = ["CIFAR10DataModule"]
