from cifar_lightning.data.augment import AugmentPreset
from cifar_lightning.data.batch_augment import BatchAugment
from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.data.device_loader import DeviceBatches
from cifar_lightning.data.order import EpochOrder
from cifar_lightning.data.photometric import normalize

__all__ = [
    "AugmentPreset",
    "BatchAugment",
    "CIFAR10DataModule",
    "DeviceBatches",
    "EpochOrder",
    "normalize",
]
